"""Distributed training under ``torchrun``: which process this is and the process group.

* :class:`DistInfo` — rank, world size, local rank and device of this process.
* :func:`init_distributed` / :func:`shutdown_distributed` — set up and tear down the process
  group (NCCL on GPUs, gloo on CPU) when WORLD_SIZE > 1; single-process runs need nothing.
* :func:`broadcast_object` — rank 0's value of a picklable object on every rank.
* :func:`average_gradients` — the mean over the processes of the gradients of parameters
  (the hand-written all-reduce that replaces DistributedDataParallel, as StyleGAN3 does).
* :func:`all_reduce` — a tensor summed (or its minimum, maximum) over the processes.
* :class:`LossMeter` — the loss terms of a log interval, reduced over the processes once.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from stylemapgan.errors import ConfigError
from stylemapgan.training.config import LOSS_NAMES

__all__ = ["DistInfo", "LossMeter", "all_reduce", "average_gradients", "broadcast_object",
           "init_distributed", "shutdown_distributed"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run; the default is one process on the CPU."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Set up the process group when launched by torchrun (WORLD_SIZE > 1), else nothing.

    NCCL on CUDA devices (one per process, cuda:LOCAL_RANK), gloo on the CPU. The rendezvous
    address and port come from torchrun's environment; nothing is hard-coded.
    """
    from stylemapgan.utils import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=resolve_device(device))
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA "
                              "device(s) on this node; lower --nproc_per_node")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=_dt.timedelta(minutes=30))
    log.info("rank %d/%d on %s (%s)", rank, world, dev, backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def shutdown_distributed(wait: bool = True) -> None:
    """Destroy the process group if one was initialized (a no-op otherwise).

    With ``wait`` (a normal end) the processes first meet at a barrier, so that none tears its
    gloo connections down while another still exchanges data on them: a process whose peer
    closed first can abort in gloo's C++ ("terminate called without an active exception").
    Pass ``wait=False`` on the way out of an error, where a peer may never reach the barrier.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def broadcast_object(obj: Any, dist_info: DistInfo) -> Any:
    """``obj`` as rank 0 has it, on every rank (unchanged in a single-process run)."""
    if not dist_info.distributed:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce(values: torch.Tensor, dist_info: DistInfo, op: str = "sum") -> torch.Tensor:
    """``values`` reduced over the processes (``op``: "sum", "min" or "max") as a new tensor;
    ``values`` itself in a single-process run."""
    if not dist_info.distributed:
        return values
    import torch.distributed as dist

    out = values.clone()
    dist.all_reduce(out, op={"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN,
                             "max": dist.ReduceOp.MAX}[op])
    return out


def average_gradients(params: Iterable[torch.nn.Parameter], dist_info: DistInfo) -> None:
    """Replace each gradient of ``params`` by its mean over the processes (in place; one
    all-reduce of all of them flattened). Parameters without a gradient are skipped: every
    process runs the same graph, so they are the same on each. A no-op in a single process.

    Each process's loss is a mean over its equal share of the batch, so the mean of the
    processes' gradients is the gradient of the loss over the global batch."""
    if not dist_info.distributed:
        return
    import torch.distributed as dist

    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist_info.world_size
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view(g.shape))
        offset += n


@dataclass
class LossMeter:
    """The loss terms of a log interval, summed on the device (no host sync per step) and
    reduced over the processes and read by the host once, by :meth:`reduce`. ``first_bad``:
    per term, the first iteration it was NaN/Inf in (inf: none)."""

    sums: torch.Tensor
    counts: torch.Tensor
    first_bad: torch.Tensor
    names: list[str] = dataclasses.field(default_factory=lambda: list(LOSS_NAMES))

    @classmethod
    def on(cls, device: torch.device) -> LossMeter:
        n = len(LOSS_NAMES)
        return cls(torch.zeros(n, device=device), torch.zeros(n, device=device),
                   torch.full((n,), float("inf"), device=device))

    def add(self, values: dict[str, torch.Tensor], iteration: int) -> None:
        zero = torch.zeros((), device=self.sums.device)
        vec = torch.stack([values.get(k, zero).float() for k in self.names])
        done = torch.tensor([k in values for k in self.names], dtype=self.counts.dtype,
                            device=self.sums.device)
        self.sums += vec * done
        self.counts += done
        bad = ~torch.isfinite(vec) & torch.isinf(self.first_bad)
        self.first_bad = torch.where(bad, float(iteration), self.first_bad)

    def reduce(self, dist_info: DistInfo, *, end_interval: bool = True,
               ) -> tuple[dict[str, float], int | None, list[str]]:
        """(the mean of each term seen this interval over all processes, the first iteration a
        term became NaN/Inf or None, those terms). ``end_interval`` False only checks for
        NaN/Inf (the means are then empty and the interval goes on)."""
        n = len(self.names)
        first = all_reduce(self.first_bad, dist_info, op="min")
        if end_interval:
            totals = all_reduce(torch.cat([self.sums, self.counts]), dist_info)
            means, counts, first = torch.stack(
                [totals[:n] / totals[n:].clamp(min=1), totals[n:], first]).tolist()
            self.sums.zero_()
            self.counts.zero_()
            seen = {k: m for k, m, c in zip(self.names, means, counts, strict=True) if c > 0}
        else:
            first, seen = first.tolist(), {}
        worst = min(first)
        if worst == float("inf"):
            return seen, None, []
        return seen, int(worst), [k for k, f in zip(self.names, first, strict=True) if f == worst]
