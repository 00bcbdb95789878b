"""Sharded extraction with torch.distributed: under ``torchrun`` every rank extracts its own
share of each dataset (whole batches, round robin), writes it to the cache as a shard, and
rank 0 assembles one cache entry in the original order; fitting and scoring then run once,
on rank 0. Without ``torchrun`` everything here is a no-op (rank 0 of 1)."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["init_from_env", "rank_and_world", "local_rank", "barrier", "all_gather", "shutdown"]


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def init_from_env() -> bool:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE``
    > 1). The ranks exchange only barriers and short lists (the tensors travel through the
    cache), so the backend is gloo whatever the device. Returns whether the run is distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    dist = _dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    return True


def local_rank() -> int | None:
    """This process's rank on its machine (``LOCAL_RANK``, set by ``torchrun``); ``None``
    outside torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    return int(os.environ.get("LOCAL_RANK", "0"))


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` outside a process group."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    dist = _dist()
    if not dist.is_initialized():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def barrier() -> None:
    """Wait for every rank (no-op outside a process group)."""
    if rank_and_world()[1] > 1:
        _dist().barrier()


def all_gather(value: Any) -> list[Any]:
    """Every rank's ``value`` (a picklable object), in rank order; ``[value]`` alone."""
    world = rank_and_world()[1]
    if world == 1:
        return [value]
    out: list[Any] = [None] * world
    _dist().all_gather_object(out, value)
    return out


def shutdown() -> None:
    """Leave the process group, if any."""
    if rank_and_world()[1] > 1:
        _dist().destroy_process_group()
