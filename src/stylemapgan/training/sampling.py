"""Seeded randomness of training: noise streams, the validation split and the data order.

Everything random in a training step is drawn for the whole global batch from a generator
seeded by a fixed function of (seed, step, stream), and each process takes its samples' rows
(:func:`local_rows`); the data order is a fixed function of (seed, epoch). So a sample's noise,
flip and image depend on (seed, step, global sample index) and never on the number of
processes, and a run resumed from a checkpoint sees exactly the same data and noise as an
uninterrupted one.

* :func:`seed_for`, :func:`seeded_generator` — a seed / CPU generator from integer parts.
* ``STREAM_*`` — the stream numbers that keep the draws of one step independent: the latents
  of the G phase (:data:`STREAM_Z`) and of the D phase (:data:`STREAM_Z2`), the flips, the epoch
  permutations, the validation split and the latents of the image grids.
* :func:`step_generator` — the generator of one stream of one step.
* :func:`local_rows` — which samples of a step's global batch this process trains on.
* :func:`split_indices` — the seeded held-out validation images.
* :class:`StepBatchSampler` — this rank's indices of each step's batch, from any step on.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from stylemapgan.errors import ConfigError

__all__ = [
    "STREAM_EPOCH",
    "STREAM_FLIP",
    "STREAM_GRID",
    "STREAM_SPLIT",
    "STREAM_Z",
    "STREAM_Z2",
    "StepBatchSampler",
    "local_rows",
    "seed_for",
    "seeded_generator",
    "split_indices",
    "step_generator",
]


def seed_for(*parts: int) -> int:
    """A 63-bit seed that depends on all ``parts`` (seed, rank, step, stream...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0]
               & ((1 << 63) - 1))


def seeded_generator(*parts: int) -> torch.Generator:
    """A CPU generator seeded with :func:`seed_for` of ``parts``."""
    return torch.Generator().manual_seed(seed_for(*parts))


STREAM_Z, STREAM_Z2, STREAM_FLIP, STREAM_EPOCH, STREAM_SPLIT, STREAM_GRID = range(6)


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """The generator of ``stream`` in training step ``step``; draw the whole global batch from
    it and keep this process's :func:`local_rows`. (The 0 between seed and step is where the
    rank once was: single-process runs keep drawing exactly what they always drew.)"""
    return seeded_generator(seed, 0, step, stream)


def local_rows(rank: int, world_size: int) -> slice:
    """This process's samples of a step's global batch: ``rank, rank + W, rank + 2W, ...``.

    Interleaved rather than contiguous because the discriminator's minibatch standard deviation
    groups samples with a stride (sample i with i + N/g, i + 2N/g, ...): when the group size g
    divides the per-process batch, every process then holds whole groups of the one-process
    batch, so W processes compute what one process computes on the global batch."""
    return slice(rank, None, world_size)


def split_indices(n: int, val_images: int, seed: int) -> tuple[list[int], list[int]]:
    """Hold out ``val_images`` images (a seeded random choice) for validation.

    A dataset of fewer than ``2 * val_images`` images gives up a tenth of itself instead, and
    at least one image (none only when it has fewer than two)."""
    if val_images <= 0 or n < 2:
        return list(range(n)), []
    val_count = val_images if n >= 2 * val_images else max(1, min(val_images, n // 10))
    perm = torch.randperm(n, generator=seeded_generator(seed, STREAM_SPLIT)).tolist()
    val = sorted(perm[:val_count])
    held = set(val)
    return [i for i in range(n) if i not in held], val


class StepBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Indices of this rank's share of each step's batch, from ``start_step`` on, forever.

    The data is an endless stream of epochs, each a permutation of ``indices`` seeded by
    (seed, epoch); step k takes global positions [k*B, (k+1)*B) of the stream and rank r the
    r-th of the world_size equal parts, or with ``interleaved`` the positions
    :func:`local_rows` names (as training does). The order depends only on the seed and the
    global batch size, not on the number of processes, and resuming at step k is exact.
    """

    def __init__(self, indices: Sequence[int], global_batch: int, rank: int, world_size: int,
                 seed: int, start_step: int = 0, *, interleaved: bool = False) -> None:
        if global_batch % world_size:
            raise ConfigError(f"batch_size {global_batch} is not divisible by the number of "
                              f"processes ({world_size})")
        self.indices = list(indices)
        self.global_batch, self.local_batch = global_batch, global_batch // world_size
        self.rank, self.seed, self.start_step = rank, seed, start_step
        self.world_size, self.interleaved = world_size, interleaved
        self._epoch, self._perm = -1, None

    def _at(self, pos: int) -> int:
        n = len(self.indices)
        epoch, offset = divmod(pos, n)
        if epoch != self._epoch:
            self._perm = torch.randperm(n, generator=seeded_generator(self.seed, STREAM_EPOCH, epoch)).tolist()
            self._epoch = epoch
        return self.indices[self._perm[offset]]

    def batch(self, step: int) -> list[int]:
        start = step * self.global_batch
        if self.interleaved:
            positions = range(start, start + self.global_batch)[
                local_rows(self.rank, self.world_size)]
        else:
            start += self.rank * self.local_batch
            positions = range(start, start + self.local_batch)
        return [self._at(p) for p in positions]

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while True:
            yield self.batch(step)
            step += 1

    def __len__(self) -> int:  # effectively infinite; DataLoader asks only for its repr
        return 2**62
