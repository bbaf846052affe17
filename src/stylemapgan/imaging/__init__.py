"""Pixels in and out, below editing: reading and writing image files (:mod:`.images`), turning
a user's photo into the model's square and back (:mod:`.placement`) and masks
(:mod:`.masks`). Nothing here imports the networks.
"""
