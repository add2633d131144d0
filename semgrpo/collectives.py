"""Collectives used by the training step, on the default process group.

The step's counts and metrics are small CPU tensors. `session.init_distributed` therefore asks for a
group with a CPU backend beside NCCL (`cpu:gloo,cuda:nccl`): NCCL alone has no CPU backend and fails
such a call with "No backend type associated with device type cpu".

With one process the collectives return their input unchanged. `SEMGRPO_FORCE_COLLECTIVES=1` runs them
anyway, so a one-GPU machine can exercise every collective path the multi-GPU run takes.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as torch_dist

from semgrpo.dist import world_size


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
