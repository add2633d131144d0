"""Rank helpers and the training step's collectives, with and without a torch.distributed process group.

The step's counts and metrics are small CPU tensors. `session.init_distributed` therefore asks for a
group with a CPU backend beside NCCL (`cpu:gloo,cuda:nccl`): NCCL alone has no CPU backend and fails
such a call with "No backend type associated with device type cpu". With one process the collectives
return their input unchanged; `SEMGRPO_FORCE_COLLECTIVES=1` runs them anyway, so a one-GPU machine can
exercise every collective path the multi-GPU run takes.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as torch_dist

T = TypeVar("T")


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


def _skip() -> bool:
    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        return True
    return world_size() == 1 and os.environ.get("SEMGRPO_FORCE_COLLECTIVES", "0") in ("", "0")


def gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's equally shaped tensor along dim 0 (same order on every rank)."""
    if _skip():
        return t
    parts = [torch.empty_like(t) for _ in range(world_size())]
    torch_dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def sum_across(t: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks (one all-reduce for a whole vector of statistics)."""
    if _skip():
        return t
    t = t.clone()
    torch_dist.all_reduce(t)
    return t


def raise_on_any_rank(error: BaseException | None) -> None:
    """Collective: raise on every rank when any rank has an `error` (a UserError subclass).

    A rank with its own error raises it; the others raise the same type with the lowest failing rank's message,
    prefixed by that rank. Nothing happens when no rank has one.
    """
    if _skip():
        if error is not None:
            raise error
        return
    if sum_across(torch.tensor([float(error is not None)])).item() == 0:  # the usual case: one small all-reduce
        return
    messages = [None] * world_size()
    torch_dist.all_gather_object(messages, None if error is None else (type(error), str(error)))
    failed = [(r, m) for r, m in enumerate(messages) if m is not None]
    if error is not None:
        raise error
    if failed:
        r, (kind, message) = failed[0]
        raise kind(f"rank {r}: {message}")


def rank_share(items: Sequence[T]) -> tuple[list[T], int]:
    """This rank's contiguous share of `items`, padded so that every rank gets the same number.

    Collective work (ZeRO-3 forward passes gather parameters) needs every rank to run the same number of
    rows: each rank takes ceil(len / world) items and a short one repeats its last item (the first of
    `items` when it has none). Returns `(share, n_real)`: only `share[:n_real]` are its own items.
    """
    per_rank = -(-len(items) // world_size())
    share = list(items[rank() * per_rank:(rank() + 1) * per_rank])
    n_real = len(share)
    fill = share[-1:] or list(items[:1])
    return share + fill * (per_rank - n_real), n_real
