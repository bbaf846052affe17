"""Limits and sizes of the web editor, in one place."""

from __future__ import annotations

from dataclasses import dataclass

from stylemapgan.editing.record import MAX_REFERENCES, MAX_STEPS
from stylemapgan.errors import ConfigError

MiB = 1 << 20


@dataclass(frozen=True)
class WebSettings:
    """Everything the server bounds.

    max_upload_bytes: largest accepted image file.
    max_pixels: largest accepted image (width x height), checked before decoding.
    max_references: references one edit may use.
    max_steps: interpolation steps one edit may ask for (each costs a generator pass).
    image_store_bytes / projection_cache_bytes / result_store_bytes: memory budgets of the three
        in-memory stores (least recently used entries go first).
    max_body_bytes: largest request body other than an upload (edit requests carry masks).
    max_sessions: clients remembered for the newest-edit-wins rule.
    edit_timeout_s: how long an edit request waits for its turn and its result.
    max_gallery_items: gallery files listed at most.
    photo_side: a full photo (``/api/photos``) is kept with at least this longer side (and
        at least the model's size as its shorter side); larger photos are reduced while they
        are decoded. Enough to find and align faces; edits are pasted back at that size.
    """

    max_upload_bytes: int = 20 * MiB
    max_pixels: int = 40_000_000
    max_references: int = MAX_REFERENCES  # the limits a replayed record is held to, too
    max_steps: int = MAX_STEPS
    image_store_bytes: int = 256 * MiB
    projection_cache_bytes: int = 512 * MiB
    result_store_bytes: int = 128 * MiB
    max_body_bytes: int = 16 * MiB
    max_sessions: int = 1024
    edit_timeout_s: float = 300.0
    max_gallery_items: int = 2000
    photo_side: int = 2048

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not value > 0:
                raise ConfigError(f"web setting {name} must be positive, got {value!r}")

    @property
    def upload_body_bytes(self) -> int:
        """Body limit of an upload request: the file plus room for the multipart framing."""
        return self.max_upload_bytes + 64 * 1024
