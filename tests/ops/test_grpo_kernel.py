"""Triton-path specifics of grpo_loss: fp16 gradients under loss scaling, and a backward that neither
syncs the host nor allocates a second [B, T, V] buffer (issue #11, items 1 and 2), for both the fully fused
kernel and the (logp, entropy) Function behind every other configuration."""

import os

import pytest
import torch
from _ops_ref import naive_grpo_loss, trl_grpo_loss_ref
from _tolerance import loss_rtol, stored_rtol
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from semgrpo.ops import _grpo_kernel, grpo_loss

DEVICES = (["cpu"] if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") else []) + (
    ["cuda"] if torch.cuda.is_available() else []
)
pytestmark = pytest.mark.skipif(not DEVICES, reason="needs CUDA or the Triton interpreter")

SCALE = 2.0**15  # a typical DeepSpeed fp16 loss scale
FP16_TINY = 2.0**-24  # smallest fp16 subnormal
# options taking the fully fused kernel, and ones taking _LogpEntropyFunction + torch loss math (with an
# entropy bonus of 0.01 * the masked mean entropy, so the backward's entropy term runs too)
PATHS = {"fused": {}, "logp": dict(importance_sampling_level="sequence", use_bias_correction_kl=True,
                                   return_entropy=True)}


def _total(loss, stats, mask):
    """The loss, minus the entropy bonus when the stats carry per-token entropies."""
    if "per_token_entropy" not in stats:
        return loss
    ent = stats["per_token_entropy"]
    return loss - 0.01 * (ent * mask).sum() / mask.sum()


def _reference(xr, ids, mask, adv, old, ref, **kw):
    """float64 loss (with the bonus of `_total`) on materialized logits."""
    if not kw.get("return_entropy"):
        return naive_grpo_loss(xr, ids, mask, adv, old, ref, **kw)[0]
    kw = {k: v for k, v in kw.items() if k != "return_entropy"}
    loss, _ = trl_grpo_loss_ref(xr, ids, mask, adv, old, ref, **kw)
    lsm = torch.log_softmax(xr / kw.get("temperature", 1.0), -1)
    ent = -(lsm.exp() * lsm).sum(-1)
    m = mask.double()
    return loss - 0.01 * (ent * m).sum() / m.sum()


def _inputs(B, T, V, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g) * 2
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T)
    mask[0, -1] = 0
    adv = torch.randn(B, generator=g)
    exact = torch.log_softmax(logits.double(), -1).gather(-1, ids[..., None])[..., 0].float()
    old = exact + 0.3 * torch.randn(B, T, generator=g)
    ref = exact + 0.3 * torch.randn(B, T, generator=g)
    return logits, ids, mask, adv, old, ref


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("inplace", [False, True])
def test_fp16_grad_survives_loss_scale(monkeypatch, device, path, inplace):
    # w = 1/1200 per token (dapo over 1200 global tokens) and V spanning 5 blocks: most d loss / d logits
    # entries are below fp16's smallest subnormal before the loss scale multiplies them.
    monkeypatch.setattr(_grpo_kernel, "LAUNCH_OVERRIDE", (1024, 4, 0))
    B, T, V = 2, 3, 5000
    logits, ids, mask, adv, old, ref = _inputs(B, T, V, seed=11)
    kw = dict(loss_type="dapo", num_items_in_batch=1200, beta=0.04, temperature=0.9, **PATHS[path])
    x = logits.half().to(device).requires_grad_(True)
    loss, stats = grpo_loss(x, ids.to(device), mask.to(device), adv.to(device), old.to(device), ref.to(device),
                            inplace_grad=inplace, backend="triton", **kw)
    (_total(loss, stats, mask.to(device)) * SCALE).backward()
    got = x.grad.cpu().double() / SCALE
    xr = logits.half().double().requires_grad_(True)  # the same fp16-rounded logits
    _reference(xr, ids, mask, adv, old, ref, **kw).backward()
    want = xr.grad
    representable = (want.abs() * SCALE >= FP16_TINY).sum().item()
    nz_got, nz_want = (got != 0).sum().item(), (want != 0).sum().item()
    err = (got - want).abs().max().item()
    # fp16 after scaling: 2^-11 relative, plus one subnormal step (in unscaled units) of absolute error
    bound = (want.abs() * 2.0**-10 + FP16_TINY / SCALE)
    bad = ((got - want).abs() > bound).sum().item()
    assert nz_got >= representable and bad == 0, (
        f"nonzero entries {nz_got} vs {nz_want} (fp16-representable after scaling: {representable}); "
        f"max abs err {err:.3g} (max |ref| {want.abs().max().item():.3g}); {bad} entries out of tolerance"
    )


class _Recorder(TorchDispatchMode):
    """Records host syncs, and every op that returns a tensor of at least ``big`` elements in storage
    none of its inputs holds (new memory, not a view or an in-place result), while ``active``."""

    def __init__(self, big):
        super().__init__()
        self.big, self.active, self.syncs, self.allocs = big, True, [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not self.active:
            return out
        if func is torch.ops.aten._local_scalar_dense.default:
            self.syncs.append(func.name())
        if isinstance(out, torch.Tensor) and out.numel() >= self.big:
            held = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs))
                    if isinstance(t, torch.Tensor)}
            if out.untyped_storage().data_ptr() not in held:
                self.allocs.append(func.name())
        return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("inplace", [False, True])
def test_backward_scales_without_sync_or_second_buffer(device, path, dtype, inplace):
    B, T, V = 2, 3, 300
    logits, ids, mask, adv, old, ref = _inputs(B, T, V, seed=12)
    full = torch.randn(B, T + 2, V).to(dtype)  # strided [:, 1:-1] view, as the trainer passes it
    full[:, 1:-1] = logits.to(dtype)
    full = full.to(device).requires_grad_(True)
    # inplace_grad: a leaf of its own, whose buffer becomes the gradient
    x = full.detach()[:, 1:-1].clone().requires_grad_(True) if inplace else full[:, 1:-1]
    seen = []
    rec = _Recorder(B * T * V)

    def hook(grad):  # the gradient exactly as the Function's backward returns it; stop recording there
        seen.append(grad)
        rec.active = False

    x.register_hook(hook)
    args = (ids.to(device), mask.to(device), adv.to(device), old.to(device), ref.to(device))
    with rec:
        loss, stats = grpo_loss(x, *args, beta=0.1, inplace_grad=inplace, backend="triton", **PATHS[path])
        n_fwd = len(rec.allocs)
        rec.syncs.clear()
        (_total(loss, stats, args[1]) * 3.0).backward()  # grad_output != 1, as under gradient accumulation
    xr = logits.to(dtype).double().requires_grad_(True)
    (3.0 * _reference(xr, ids, mask, adv, old, ref, beta=0.1, **PATHS[path])).backward()
    got = seen[0].cpu().double()
    # fp32 math (relative to the largest entry), then stored in the logits' dtype (relative to each entry)
    bound = xr.grad.abs() * stored_rtol(dtype) + loss_rtol(V, B * T) * xr.grad.abs().max().item()
    bad = ((got - xr.grad).abs() > bound).sum().item()
    problems = []
    if bad:
        problems.append(f"{bad} gradient entries out of tolerance, max abs err "
                        f"{(got - xr.grad).abs().max().item():.3g} (max |ref| {xr.grad.abs().max().item():.3g})")
    if rec.syncs:
        problems.append(f"backward synced the host: {rec.syncs}")
    # one [B, T, V] gradient in all (none with inplace_grad), whatever grad_output is
    if len(rec.allocs) > (0 if inplace else 1):
        problems.append(f"[B,T,V] allocations: {rec.allocs} ({n_fwd} in forward)")
    if inplace and seen[0].data_ptr() != x.data_ptr():
        problems.append("inplace_grad: the gradient is not the logits buffer")
    assert not problems, "; ".join(problems)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", PATHS)
def test_retain_graph_and_zero_grad_output(device, path):
    logits, ids, mask, adv, old, ref = _inputs(2, 3, 300, seed=13)
    args = (ids.to(device), mask.to(device), adv.to(device), old.to(device), ref.to(device))
    kw = dict(beta=0.1, backend="triton", **PATHS[path])
    x = logits.clone().to(device).requires_grad_(True)
    loss, stats = grpo_loss(x, *args, **kw)
    loss = _total(loss, stats, args[1])
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    assert first.abs().sum() > 0
    loss.backward(retain_graph=True)  # the logits are intact: the same gradient again
    torch.testing.assert_close(x.grad, 2 * first, rtol=0, atol=0)  # the same kernel twice; doubling is exact
    x.grad = None
    (loss * 0.0).backward()  # an empty micro-batch's dummy loss in the trainer
    assert x.grad.abs().sum() == 0
    # inplace_grad: the first backward overwrites the logits, a second one must refuse to run
    y = logits.clone().to(device).requires_grad_(True)
    loss, stats = grpo_loss(y, *args, inplace_grad=True, **kw)
    loss = _total(loss, stats, args[1])
    loss.backward(retain_graph=True)
    torch.testing.assert_close(y.grad, first, rtol=0, atol=0)  # the same kernel, written in place
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
