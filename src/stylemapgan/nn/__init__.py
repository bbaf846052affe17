"""The networks and their operations: generator, encoder and discriminator (:mod:`.networks`),
their layers (:mod:`.layers`) and low-level ops (:mod:`.ops`), the perceptual and FID feature
networks (:mod:`.perceptual`), numeric precision (:mod:`.precision`: the one bfloat16 probe
and the mixed-precision policy, for training and inference), the fast inference paths
(:mod:`.runtime`) and ONNX export (:mod:`.onnx_export`).

Layer: above :mod:`stylemapgan.config`, :mod:`stylemapgan.errors` and
:mod:`stylemapgan.files`; nothing here reads model files or knows about editing or training.
"""

from stylemapgan.nn.networks import Discriminator, Encoder, Generator, StyleMapGAN

__all__ = ["Discriminator", "Encoder", "Generator", "StyleMapGAN"]
