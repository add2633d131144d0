"""Group-relative advantage normalization for GRPO.

``adv = (r - mean_g) / (std_g + eps)`` with the unbiased std of each group of ``group_size``
consecutive rewards (TRL semantics). NaN rewards are ignored in the statistics and get advantage 0.
A group whose valid rewards are all exactly equal (``max == min``, decided exactly rather than by
``std < eps`` so fp32 residue can never inflate advantages) or that has fewer than 2 valid rewards
carries no signal: its advantages are exactly 0 and its std is reported as exactly 0.
"""

from __future__ import annotations

import torch

from semgrpo.config.choices import SCALE_REWARDS as SCALES

from ._dispatch import check_float_tensor, use_triton

try:  # Triton is optional: CPU installs use the torch reference.
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the install
    triton = None

_SCALE_CODE = {"group": 0, "batch": 1, "none": 2}


if triton is not None:

    @triton.jit
    def _group_advantages_fwd_kernel(
        r_ptr, adv_ptr, std_ptr, bstd_ptr, n_groups, G, eps,
        SCALE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_G: tl.constexpr,
    ):
        # One program normalizes BLOCK_R groups; a group is one row of a [BLOCK_R, BLOCK_G] tile.
        pid = tl.program_id(0)
        rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
        cols = tl.arange(0, BLOCK_G)
        inb = (rows[:, None] < n_groups) & (cols[None, :] < G)
        offs = rows[:, None] * G + cols[None, :]
        r = tl.load(r_ptr + offs, mask=inb, other=float("nan")).to(tl.float32)
        valid = r == r  # NaN != NaN; padding lanes were loaded as NaN
        n = tl.sum(valid.to(tl.float32), axis=1)
        r0 = tl.where(valid, r, 0.0)
        mean = tl.sum(r0, axis=1) / tl.maximum(n, 1.0)
        dev = tl.where(valid, r - mean[:, None], 0.0)
        # unbiased variance: sum (r - mean)^2 / (n - 1)
        var = tl.sum(dev * dev, axis=1) / tl.maximum(n - 1.0, 1.0)
        std = tl.sqrt(var)
        rmax = tl.max(tl.where(valid, r, float("-inf")), axis=1)
        rmin = tl.min(tl.where(valid, r, float("inf")), axis=1)
        flat = (n < 2.0) | (rmax == rmin)  # exact test: no std-residue blow-up
        std = tl.where(flat, 0.0, std)
        if SCALE == 0:
            adv = dev / (std[:, None] + eps)
        elif SCALE == 1:
            bstd = tl.load(bstd_ptr).to(tl.float32)
            adv = dev / (bstd + eps)
        else:
            adv = dev
        adv = tl.where(valid & (~flat)[:, None], adv, 0.0)
        tl.store(adv_ptr + offs, adv, mask=inb)
        tl.store(std_ptr + rows, std, mask=rows < n_groups)


def _check(rewards: torch.Tensor, group_size: int, scale: str, eps: float) -> None:
    check_float_tensor("rewards", rewards, ndim=1)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be an int >= 1, got {group_size!r}")
    if rewards.numel() == 0 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"rewards length {rewards.numel()} must be a positive multiple of group_size={group_size}"
        )
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"eps must be a number >= 0, got {eps!r}")


def _batch_std(r: torch.Tensor) -> torch.Tensor:
    """Unbiased std of the non-NaN entries of ``r`` (0 when fewer than 2), as a 1-element fp32 tensor."""
    r = r.float().reshape(-1)
    valid = ~torch.isnan(r)
    n = valid.sum().float()
    mean = torch.where(valid, r, 0.0).sum() / n.clamp_min(1.0)
    dev = torch.where(valid, r - mean, 0.0)
    var = (dev * dev).sum() / (n - 1.0).clamp_min(1.0)
    return torch.where(n >= 2, var.sqrt(), 0.0).reshape(1)


def group_advantages_torch(
    rewards: torch.Tensor,
    group_size: int,
    *,
    scale: str = "group",
    eps: float = 1e-4,
    return_group_std: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Torch reference of :func:`group_advantages` (same arguments, same results)."""
    _check(rewards, group_size, scale, eps)
    r = rewards.float().reshape(-1, group_size)
    valid = ~torch.isnan(r)
    n = valid.sum(dim=1).float()
    mean = torch.where(valid, r, 0.0).sum(dim=1) / n.clamp_min(1.0)
    dev = torch.where(valid, r - mean[:, None], 0.0)
    std = ((dev * dev).sum(dim=1) / (n - 1.0).clamp_min(1.0)).sqrt()
    rmax = torch.where(valid, r, float("-inf")).amax(dim=1)
    rmin = torch.where(valid, r, float("inf")).amin(dim=1)
    flat = (n < 2) | (rmax == rmin)
    std = torch.where(flat, 0.0, std)
    if scale == "group":
        adv = dev / (std[:, None] + eps)
    elif scale == "batch":
        adv = dev / (_batch_std(rewards) + eps)
    else:
        adv = dev
    adv = torch.where(valid & ~flat[:, None], adv, 0.0).reshape(-1)
    return (adv, std) if return_group_std else adv


def zero_std_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Groups that carry no signal: all valid rewards exactly equal, or fewer than 2 valid.

    Args:
        rewards: Rewards, NaN for missing.
        group_size: G, consecutive rewards per group.

    Returns:
        Bool mask, True for groups whose advantages are all 0.

    Shape:
        rewards: [B*G] -> [B]
    """
    _check(rewards, group_size, "group", 0.0)
    r = rewards.float().reshape(-1, group_size)
    valid = ~torch.isnan(r)
    rmax = torch.where(valid, r, float("-inf")).amax(dim=1)
    rmin = torch.where(valid, r, float("inf")).amin(dim=1)
    return (valid.sum(dim=1) < 2) | (rmax == rmin)


def _group_advantages_triton(rewards, group_size, scale, eps):
    r = rewards.contiguous()
    n_groups = r.numel() // group_size
    adv = torch.empty(r.numel(), dtype=torch.float32, device=r.device)
    std = torch.empty(n_groups, dtype=torch.float32, device=r.device)
    bstd = _batch_std(r) if scale == "batch" else std  # pointer unused unless SCALE == 1
    block_g = triton.next_power_of_2(group_size)
    block_r = max(1, min(triton.next_power_of_2(n_groups), max(1, 2048 // block_g)))
    grid = (triton.cdiv(n_groups, block_r),)
    _group_advantages_fwd_kernel[grid](
        r, adv, std, bstd, n_groups, group_size, float(eps),
        SCALE=_SCALE_CODE[scale], BLOCK_R=block_r, BLOCK_G=block_g,
    )
    return adv, std


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    *,
    scale: str = "group",
    eps: float = 1e-4,
    return_group_std: bool = False,
    backend: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Group-relative advantages ``(r - mean_g) / (std_g + eps)``, NaN-aware.

    Args:
        rewards: Rewards of B groups of G consecutive completions; NaN marks a missing reward.
        group_size: G (any int >= 1 dividing the length).
        scale: ``"group"`` divides by each group's unbiased std, ``"batch"`` by the unbiased std of
            all valid rewards of the batch (mean still per group), ``"none"`` does not divide.
        eps: Added to the std in the denominator.
        return_group_std: Also return the per-group std (exactly 0 for zero-signal groups).
        backend: ``"auto"``/``"triton"``/``"torch"``; default from ``SEMGRPO_OPS``.

    Returns:
        Advantages in fp32, or ``(advantages, group_std)`` when ``return_group_std``. NaN rewards,
        groups with fewer than 2 valid rewards and groups whose valid rewards are all equal get 0.

    Shape:
        rewards: [B*G] -> advantages: [B*G], group_std: [B]
    """
    _check(rewards, group_size, scale, eps)
    if triton is None or not use_triton(rewards, backend=backend):
        return group_advantages_torch(
            rewards, group_size, scale=scale, eps=eps, return_group_std=return_group_std
        )
    adv, std = _group_advantages_triton(rewards, group_size, scale, eps)
    return (adv, std) if return_group_std else adv
