"""Rank helpers that work with and without an initialised torch.distributed process group."""
from __future__ import annotations

from typing import Any

import torch.distributed as torch_dist


def _initialized() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


def rank() -> int:
    """This process's global rank; 0 when torch.distributed is not initialised."""
    return torch_dist.get_rank() if _initialized() else 0


def world_size() -> int:
    """Number of processes in the default group; 1 when torch.distributed is not initialised."""
    return torch_dist.get_world_size() if _initialized() else 1


def is_main() -> bool:
    """True on global rank 0 (and in a single, non-distributed process)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank; a no-op without a process group."""
    if _initialized() and world_size() > 1:
        torch_dist.barrier()


def broadcast_object(obj: Any, *, src: int = 0) -> Any:
    """Return rank `src`'s `obj` on every rank (picklable objects only).

    Without a process group (or with one process) `obj` is returned unchanged.
    """
    if not _initialized() or world_size() == 1:
        return obj
    if not 0 <= src < world_size():
        raise ValueError(f"src={src!r} is not a rank; expected 0 <= src < {world_size()}")
    box = [obj if rank() == src else None]
    torch_dist.broadcast_object_list(box, src=src)
    return box[0]
