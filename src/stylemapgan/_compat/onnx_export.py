"""``stylemapgan.onnx_export`` moved to :mod:`stylemapgan.nn.onnx_export`; this name keeps working."""

from stylemapgan.nn.onnx_export import *  # noqa: F403
