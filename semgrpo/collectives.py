"""Collectives used by the training step (no-ops in a single process)."""
from __future__ import annotations

import torch
import torch.distributed as torch_dist

from semgrpo.dist import world_size


def gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's equally shaped tensor along dim 0 (same order on every rank)."""
    if world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world_size())]
    torch_dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def sum_across(t: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks (one all-reduce for a whole vector of statistics)."""
    if world_size() == 1:
        return t
    t = t.clone()
    torch_dist.all_reduce(t)
    return t
