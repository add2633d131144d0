"""Kernels with a vocabulary spanning several BLOCK_V blocks (issue #11, item 3).

V = 5000 runs the online logsumexp over 3 blocks at grpo_loss's default BLOCK_V (2048), 2 at
token_logprobs' (4096), and 10 with the block forced to 512 through each module's LAUNCH_OVERRIDE; the
last block is partial. References: float64 log_softmax on the materialized logits (tests/ops/_ops_ref.py).
"""

import os

import pytest
import torch
from _ops_ref import naive_grpo_loss, naive_logps
from _tolerance import loss_rtol, stored_rtol

from semgrpo.ops import LOSS_TYPES, _grpo_kernel, grpo_loss, token_logprobs
from semgrpo.ops import logprobs as logprobs_mod

DEVICES = (["cpu"] if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") else []) + (
    ["cuda"] if torch.cuda.is_available() else []
)
pytestmark = pytest.mark.skipif(not DEVICES, reason="needs CUDA or the Triton interpreter")

V = 5000
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# gradient tolerance: relative (one ulp of the stored dtype: the interpreter truncates fp32 -> bf16 where a
# GPU rounds to nearest) and absolute (the fp16 subnormal step)


def _force_block(monkeypatch, module, block):
    if block is not None:
        monkeypatch.setattr(module, "LAUNCH_OVERRIDE", (block, 4, 0) if module is _grpo_kernel else (block, 4))


def _strided(B, T, dtype, device, seed):
    """A [:, 1:-1] view of a [B, T + 2, V] tensor (as the trainer slices completion logits)."""
    g = torch.Generator().manual_seed(seed)
    full = (torch.randn(B, T + 2, V, generator=g) * 3).to(dtype).to(device)
    ids = torch.randint(0, V, (B, T), generator=g)
    ids[0, 0], ids[0, 1], ids[1, 0] = 0, V - 1, 2100  # first, last (partial) and a middle block
    return full, ids, g


def test_override_reaches_the_launch():
    assert _grpo_kernel._launch_config(6, V, torch.device("cpu"))[0] == 2048
    assert logprobs_mod._launch_config(V)[0] == 4096
    mp = pytest.MonkeyPatch()
    try:
        _force_block(mp, _grpo_kernel, 512)
        _force_block(mp, logprobs_mod, 512)
        assert _grpo_kernel._launch_config(6, V, torch.device("cpu"))[0] == 512
        assert logprobs_mod._launch_config(V)[0] == 512
    finally:
        mp.undo()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("block", [None, 512], ids=["block_default", "block512"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_grpo_loss_multiblock(monkeypatch, device, block, dtype, loss_type):
    _force_block(monkeypatch, _grpo_kernel, block)
    B, T = 2, 3
    full, ids, g = _strided(B, T, dtype, device, seed=21)
    full.requires_grad_(True)
    view = full[:, 1:-1]
    mask = torch.ones(B, T)
    mask[1, 2] = 0  # a masked-out token
    adv = torch.tensor([0.8, -1.1])
    exact = naive_logps(full.detach()[:, 1:-1].cpu(), ids, 0.7).float()
    old = exact + 0.3 * torch.randn(B, T, generator=g)  # some ratios leave the clip range
    ref = exact + 0.2 * torch.randn(B, T, generator=g)
    kw = dict(temperature=0.7, beta=0.04, eps_low=0.2, eps_high=0.28, loss_type=loss_type)
    if loss_type == "dr_grpo":
        kw["max_completion_length"] = 8
    if loss_type == "dapo":
        kw["num_items_in_batch"] = 11
    loss, stats = grpo_loss(view, ids.to(device), mask.to(device), adv.to(device), old.to(device),
                            ref.to(device), backend="triton", **kw)
    loss.backward()

    xr = full.detach()[:, 1:-1].cpu().double().requires_grad_(True)
    want, klm, low, high, region = naive_grpo_loss(xr, ids, mask, adv, old, ref, **kw)
    want.backward()
    rtol = loss_rtol(V, B * T)  # fp32 math on the same rounded logits as the reference
    assert loss.item() == pytest.approx(want.item(), rel=rtol, abs=rtol)
    for k, v in zip(("kl", "clip_ratio_low", "clip_ratio_high", "clip_ratio_region"), (klm, low, high, region)):
        assert stats[k].item() == pytest.approx(v, rel=rtol, abs=rtol), k
    gfull = full.grad.cpu().double()
    got, ref_g = gfull[:, 1:-1], xr.grad
    # fp32 math (relative to the largest entry), then stored in the logits' dtype (relative to each entry; fp16
    # flushes what falls below its smallest subnormal, 2^-24)
    bound = ref_g.abs() * stored_rtol(dtype) + rtol * ref_g.abs().max() + (2.0**-24 if dtype == torch.float16 else 0)
    err = (got - ref_g).abs()
    assert (err <= bound).all(), f"{int((err > bound).sum())} entries off, max abs err {err.max().item():.3g}"
    assert gfull[:, 0].abs().sum() == 0 and gfull[:, -1].abs().sum() == 0  # outside the view
    assert got[1, 2].abs().sum() == 0  # masked token


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("block", [None, 512], ids=["block_default", "block512"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_token_logprobs_multiblock(monkeypatch, device, block, dtype):
    _force_block(monkeypatch, logprobs_mod, block)
    full, ids, _ = _strided(2, 4, dtype, device, seed=22)
    view = full[:, 1:-1]
    got = token_logprobs(view, ids.to(device), temperature=0.7, backend="triton")
    # token_logprobs has no gradient (old/ref log-probs); values against float64 on the same rounded logits
    tol = loss_rtol(V, 1) * 3 * 4 / 0.7  # per token, relative to |logits| / temperature (randn x 3: up to ~12)
    torch.testing.assert_close(got.cpu().double(), naive_logps(view.cpu(), ids, 0.7), rtol=tol, atol=tol)
