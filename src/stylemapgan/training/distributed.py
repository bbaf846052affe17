"""Distributed training under ``torchrun``: which process this is and the process group.

* :class:`DistInfo` — rank, world size, local rank and device of this process.
* :func:`init_distributed` / :func:`shutdown_distributed` — set up and tear down the process
  group (NCCL on GPUs, gloo on CPU) when WORLD_SIZE > 1; single-process runs need nothing.
* :func:`broadcast_object` — rank 0's value of a picklable object on every rank.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch

from stylemapgan.errors import ConfigError

__all__ = ["DistInfo", "broadcast_object", "init_distributed", "shutdown_distributed"]

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


def shutdown_distributed() -> None:
    """Destroy the process group if one was initialized (a no-op otherwise)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(obj: Any, dist_info: DistInfo) -> Any:
    """``obj`` as rank 0 has it, on every rank (unchanged in a single-process run)."""
    if not dist_info.distributed:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
