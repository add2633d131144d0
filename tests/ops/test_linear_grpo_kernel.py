"""The Triton path of linear_grpo_loss / linear_logprobs_and_entropy (``backend="triton"``): fused tile kernels
between torch matmuls, run under the interpreter on CPU (or compiled on CUDA when present). Values and gradients
(hidden, weight, bias) against float64 references on materialised logits (_ops_ref.py), over every loss type and
option, the input dtypes, odd shapes, several vocabulary chunks and several kernel blocks per chunk."""

import importlib

import pytest
import torch
from _ops_ref import trl_grpo_loss_ref
from _tolerance import assert_close_scaled, linear_grad_rtol, linear_loss_rtol
from test_linear_grpo_loss import _case as _cpu_case
from test_linear_grpo_loss import _kwargs_for
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from semgrpo.ops import TRL_LOSS_TYPES, linear_grpo_loss, linear_logprobs_and_entropy, linear_token_logprobs
from semgrpo.ops._dispatch import interpreter_enabled

lin = importlib.import_module("semgrpo.ops.linear_grpo_loss")
kern = importlib.import_module("semgrpo.ops._linear_kernel")

if kern.triton is None or not (interpreter_enabled() or torch.cuda.is_available()):
    pytest.skip("needs triton with CUDA or TRITON_INTERPRET=1", allow_module_level=True)

DEV = "cuda" if torch.cuda.is_available() and not interpreter_enabled() else "cpu"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _small_tiles(monkeypatch):
    """V=1000 in 4 vocabulary chunks (one partial) of 4 kernel column blocks each; the ~60 live rows in one
    token chunk (test_tile_and_block_shapes_match_the_torch_path splits rows too)."""
    monkeypatch.setattr(lin, "CHUNK_OVERRIDE", (64, 256))
    monkeypatch.setattr(kern, "LAUNCH_OVERRIDE", (64, 64, 4))


def _case(**kw):
    """test_linear_grpo_loss's inputs (fully masked last row, both clip sides hit), on the kernel's device."""
    return {k: (None if v is None else v.to(DEV)) for k, v in _cpu_case(**kw).items()}

def _check(c, *, use_old=True, use_ref=True, use_isr=False, frozen=(), **kw):
    """Triton-path linear_grpo_loss against the float64 TRL reference on the materialised logits."""
    dtype = c["hidden"].dtype
    leaves = {k: c[k].detach().clone().requires_grad_(k not in frozen) for k in ("hidden", "weight", "bias")
              if c[k] is not None}
    old, ref = (c["old"] if use_old else None), (c["ref"] if use_ref else None)
    isr = c["isr"] if use_isr else None
    loss, stats = linear_grpo_loss(leaves["hidden"], leaves["weight"], c["ids"], c["mask"], c["adv"], old, ref,
                                   bias=leaves.get("bias"), vllm_is_ratio=isr, backend="triton",
                                   return_entropy=True, **kw)
    loss.backward()

    ref_leaves = {k: v.detach().cpu().double().requires_grad_(True) for k, v in leaves.items()}
    logits = ref_leaves["hidden"] @ ref_leaves["weight"].T
    if "bias" in ref_leaves:
        logits = logits + ref_leaves["bias"]
    cpu = {k: (None if v is None else v.cpu()) for k, v in dict(old=old, ref=ref, isr=isr).items()}
    want, want_stats = trl_grpo_loss_ref(logits, c["ids"].cpu(), c["mask"].cpu(), c["adv"].cpu(), cpu["old"],
                                         cpu["ref"], vllm_is_ratio=cpu["isr"], **kw)
    want.backward()

    (N, H), V = c["hidden"].reshape(-1, c["hidden"].shape[-1]).shape, c["weight"].shape[0]
    lrt, grt = linear_loss_rtol(H, V, N), linear_grad_rtol(dtype, H, V, N)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert loss.item() == pytest.approx(want.item(), rel=lrt, abs=lrt)
    for k, v in leaves.items():
        if k in frozen:
            assert v.grad is None, k
            continue
        assert v.grad.dtype == v.dtype and torch.isfinite(v.grad).all(), k
        assert_close_scaled(v.grad.cpu().double(), ref_leaves[k].grad, grt, msg=k)
    for key, val in want_stats.items():
        assert stats[key].dim() == 0 and not stats[key].requires_grad
        assert stats[key].item() == pytest.approx(val, rel=lrt, abs=lrt), key
    ent = stats["per_token_entropy"]
    lsm = torch.log_softmax(logits.detach() / kw.get("temperature", 1.0), -1)
    want_ent = -(lsm.exp() * lsm).sum(-1) * c["mask"].cpu()
    assert_close_scaled(ent.detach().cpu().double(), want_ent, lrt)
    return loss, stats, leaves


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", TRL_LOSS_TYPES)
def test_loss_types_all_options(loss_type, level):
    # beta > 0, bias-corrected KL, vLLM IS ratio, delta, temperature != 1, eps_high != eps_low, bias
    kw = _kwargs_for(loss_type, beta=0.04, eps_low=0.2, eps_high=0.28, temperature=0.8,
                     importance_sampling_level=level, delta=1.5, use_bias_correction_kl=True)
    _, stats, leaves = _check(_case(seed=1), use_isr=True, **kw)
    assert leaves["hidden"].grad[-1].abs().sum() == 0  # the fully masked row
    if loss_type in ("grpo", "dapo") and level == "token":
        assert stats["clip_ratio_low"].item() > 0 and stats["clip_ratio_high"].item() > 0


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", TRL_LOSS_TYPES)
def test_loss_types_plain(loss_type, level):
    # beta 0 without ref, ratio 1 (no old), symmetric eps, temperature 1, per-token advantages, no bias
    kw = _kwargs_for(loss_type, importance_sampling_level=level)
    _check(_case(seed=2, adv_2d=True, with_bias=False), use_old=False, use_ref=False, **kw)


@pytest.mark.parametrize("loss_type", ["grpo", "cispo", "vespo"])
def test_kl_without_bias_correction_and_sequence_is_ratio(loss_type):
    kw = _kwargs_for(loss_type, beta=0.1, eps_low=0.1, eps_high=0.3, temperature=1.3)
    _, stats, _ = _check(_case(seed=3, seq_is=True), use_isr=True, **kw)
    assert stats["kl"].item() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtypes(dtype):
    # bf16/fp16 products are exact in fp32 tiles: the loss matches float64 on the rounded inputs
    kw = dict(beta=0.04, eps_high=0.28, temperature=0.7, loss_type="dapo", use_bias_correction_kl=True)
    _check(_case(seed=5, dtype=dtype), use_isr=True, **kw)


def test_bf16_dlogits_path(monkeypatch):
    # the CUDA bf16 backward (dlogits rounded to bf16 for the backward matmuls), forced on here: grads stay
    # within bf16 tolerance, and agree with the fp32-dlogits path to about bf16's rounding
    c = _case(seed=6, dtype=torch.bfloat16)
    kw = dict(beta=0.04, eps_high=0.28, temperature=0.9, use_bias_correction_kl=True)
    monkeypatch.setattr(lin, "HALF_DLOGITS", False)
    _, _, exact = _check(c, **kw)
    monkeypatch.setattr(lin, "HALF_DLOGITS", True)
    assert not lin._half_dlogits(c["hidden"].half(), c["weight"].half())  # fp16 never: its range flushes d
    out_dtypes = set()
    real = kern.bwd_tile
    monkeypatch.setattr(kern, "bwd_tile", lambda z, out, *a: (out_dtypes.add(out.dtype), real(z, out, *a))[1])
    _, _, half = _check(c, **kw)
    assert out_dtypes == {torch.bfloat16}
    N, H, V = c["ids"].numel(), c["hidden"].shape[-1], c["weight"].shape[0]
    for k in exact:  # two bf16 results, each within its bound of exact
        assert_close_scaled(half[k].grad.float(), exact[k].grad.float(), 2 * linear_grad_rtol(torch.bfloat16, H, V, N),
                            msg=k)


@pytest.mark.parametrize("frozen", [("weight",), ("bias",), ("hidden",)])
def test_frozen_parameters(frozen, monkeypatch):
    accs = []  # row counts of the fp32 accumulators: the token chunk (< 64) for grad_hidden, 256/232 for grad_W
    real = lin._addmm_f32
    monkeypatch.setattr(lin, "_addmm_f32", lambda acc, a, b: (accs.append(acc.shape[0]), real(acc, a, b)))
    _check(_case(seed=12), frozen=frozen, beta=0.04, temperature=0.9)
    weight_mms = [n for n in accs if n in (256, 1000 - 768)]
    assert bool(weight_mms) == ("weight" not in frozen)
    assert (len(weight_mms) == len(accs)) == ("hidden" in frozen)


def test_entropy_bonus_gradient():
    c = _case(seed=7)
    leaves = {k: c[k].clone().requires_grad_(True) for k in ("hidden", "weight", "bias")}
    loss, stats = linear_grpo_loss(leaves["hidden"], leaves["weight"], c["ids"], c["mask"], c["adv"], c["old"],
                                   bias=leaves["bias"], temperature=0.6, return_entropy=True, backend="triton")
    ent = stats["per_token_entropy"]
    assert ent.requires_grad and (ent[c["mask"] == 0] == 0).all()
    m = c["mask"]
    (loss - 0.01 * (ent * m).sum() / m.sum()).backward()
    r = {k: v.detach().cpu().double().requires_grad_(True) for k, v in leaves.items()}
    logits = r["hidden"] @ r["weight"].T + r["bias"]
    want, _ = trl_grpo_loss_ref(logits, c["ids"].cpu(), m.cpu(), c["adv"].cpu(), c["old"].cpu(), temperature=0.6)
    lsm = torch.log_softmax(logits / 0.6, -1)
    ent64 = -(lsm.exp() * lsm).sum(-1)
    (want - 0.01 * (ent64 * m.cpu()).sum() / m.sum().item()).backward()
    N, H, V = m.numel(), c["hidden"].shape[-1], c["weight"].shape[0]
    assert_close_scaled(ent.detach().cpu().double(), ent64.detach() * m.cpu(), linear_loss_rtol(H, V, N))
    for k, v in leaves.items():
        assert_close_scaled(v.grad.cpu().double(), r[k].grad, linear_grad_rtol(torch.float32, H, V, N), msg=k)


def test_logprobs_and_entropy_strided_inputs_and_grads():
    # strided hidden (a [:, P-1:-1] slice), transposed weight storage, strided ids, bias a strided view;
    # gradients of an arbitrary combination of logp and entropy, including an expanded (stride 0) one
    g = torch.Generator().manual_seed(10)
    B, T, H, V, P = 2, 23, 40, 1000, 5
    full = torch.randn(B, P + T, H, generator=g).to(DEV).requires_grad_(True)
    w_store = (torch.randn(H, V, generator=g) * 0.3).to(DEV).requires_grad_(True)
    b_store = torch.randn(V, 2, generator=g).to(DEV).requires_grad_(True)
    ids_store = torch.randint(0, V, (B, 2 * T), generator=g).to(DEV)
    hidden, weight, bias, ids = full[:, P - 1 : -1], w_store.t(), b_store[:, 1], ids_store[:, ::2]
    assert not any(x.is_contiguous() for x in (hidden, weight, bias, ids))
    wl = torch.randn(B, T, generator=g).to(DEV)
    lp, ent = linear_logprobs_and_entropy(hidden, weight, ids, bias=bias, temperature=1.1, backend="triton")
    ((lp * wl).sum() + 0.5 * ent.sum()).backward()

    h64 = hidden.detach().cpu().double().requires_grad_(True)
    w64 = weight.detach().cpu().double().requires_grad_(True)
    b64 = bias.detach().cpu().double().requires_grad_(True)
    lsm = torch.log_softmax((h64 @ w64.T + b64) / 1.1, -1)
    lp64 = lsm.gather(-1, ids.cpu()[..., None])[..., 0]
    ent64 = -(lsm.exp() * lsm).sum(-1)
    ((lp64 * wl.cpu()).sum() + 0.5 * ent64.sum()).backward()
    lrt, grt = linear_loss_rtol(H, V, 1), linear_grad_rtol(torch.float32, H, V, B * T)  # per token; grads sum tokens
    assert_close_scaled(lp.detach().cpu().double(), lp64.detach(), lrt)
    assert_close_scaled(ent.detach().cpu().double(), ent64.detach(), lrt)
    gf = full.grad.cpu().double()
    assert_close_scaled(gf[:, P - 1 : -1], h64.grad, grt)
    assert gf[:, : P - 1].abs().sum() == 0 and gf[:, -1].abs().sum() == 0
    assert_close_scaled(w_store.grad.t().cpu().double(), w64.grad, grt)
    assert_close_scaled(b_store.grad[:, 1].cpu().double(), b64.grad, grt)
    assert b_store.grad[:, 0].abs().sum() == 0


def test_loss_with_strided_inputs():
    c = _case(B=3, T=37, seed=11)
    P = 4
    full = torch.randn(3, P + 37, 96, device=DEV)
    full[:, P - 1 : -1] = c["hidden"]
    full.requires_grad_(True)
    ids = torch.zeros(3, 74, dtype=torch.long, device=DEV)
    ids[:, ::2] = c["ids"]
    mask_t = c["mask"].t().contiguous()
    loss, _ = linear_grpo_loss(full[:, P - 1 : -1], c["weight"], ids[:, ::2], mask_t.t(), c["adv"], c["old"], c["ref"],
                               bias=c["bias"], beta=0.1, temperature=1.1, backend="triton")
    loss.backward()
    h = c["hidden"].clone().requires_grad_(True)
    want, _ = linear_grpo_loss(h, c["weight"], c["ids"], c["mask"], c["adv"], c["old"], c["ref"], bias=c["bias"],
                               beta=0.1, temperature=1.1, backend="torch")
    want.backward()
    # the Triton and torch paths, each within its bound of exact
    assert loss.item() == pytest.approx(want.item(), rel=2 * linear_loss_rtol(96, 1000, 111))
    assert_close_scaled(full.grad[:, P - 1 : -1], h.grad, 2 * linear_grad_rtol(torch.float32, 96, 1000, 111))


@pytest.mark.parametrize(
    "N, V, chunks, launch",
    [(29, 1000, (16, 256), (8, 128, 2)),  # 2 token chunks, 2 row programs per tile (bias sums combine them)
     (13, 1000, (7, 333), (4, 128, 1)),  # ragged: partial row blocks, column blocks and chunks
     (3, 1000, (1, 1000), (1, 128, 1)),  # one row per tile, one vocabulary chunk
     (29, 12, (64, 1), (64, 16, 1)),  # one vocabulary entry per chunk (C < BLOCK_V)
     (29, 1000, None, None)],  # defaults: one tile, default launch
)
def test_tile_and_block_shapes_match_the_torch_path(monkeypatch, N, V, chunks, launch):
    g = torch.Generator().manual_seed(4)
    h = torch.randn(N, 24, generator=g).to(DEV)
    w = (torch.randn(V, 24, generator=g) * 0.4).to(DEV)
    b = torch.randn(V, generator=g).to(DEV)
    ids = torch.randint(0, V, (N,), generator=g).to(DEV)
    gl, ge = torch.randn(N, generator=g).to(DEV), torch.randn(N, generator=g).to(DEV)
    monkeypatch.setattr(lin, "CHUNK_OVERRIDE", chunks)
    monkeypatch.setattr(kern, "LAUNCH_OVERRIDE", launch)
    out = {}
    for be in ("torch", "triton"):
        leaves = [x.clone().requires_grad_(True) for x in (h, w, b)]
        lp, ent = linear_logprobs_and_entropy(leaves[0], leaves[1], ids, bias=leaves[2], temperature=0.7, backend=be)
        ((lp * gl).sum() + (ent * ge).sum()).backward()
        out[be] = [lp, ent] + [x.grad for x in leaves]
    rtol = 2 * linear_grad_rtol(torch.float32, 24, V, N)  # the Triton and torch paths, each within it of exact
    for name, a, r in zip(("logp", "entropy", "hidden", "weight", "bias"), out["triton"], out["torch"]):
        assert_close_scaled(a, r, rtol, msg=name)


def test_linear_token_logprobs():
    c = _case(B=2, T=37, seed=13)
    for temp, bias, ids in ((1.0, None, c["ids"]), (0.7, c["bias"], c["ids"].int())):
        got = linear_token_logprobs(c["hidden"], c["weight"], ids, bias=bias, temperature=temp, backend="triton")
        logits = c["hidden"].cpu().double() @ c["weight"].cpu().double().T + (0 if bias is None else bias.cpu().double())
        want = torch.log_softmax(logits / temp, -1).gather(-1, c["ids"].cpu()[..., None])[..., 0]
        assert got.dtype == torch.float32 and got.shape == (2, 37) and not got.requires_grad
        assert_close_scaled(got.cpu().double(), want, linear_loss_rtol(96, 1000, 1))


class _Largest(TorchDispatchMode):
    """Records the largest tensor (in bytes) any torch op returns; the interpreter's byte copies of kernel
    arguments' storages count too."""

    largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


@pytest.mark.parametrize("half", [False, True])
def test_no_logits_sized_allocation(monkeypatch, half):
    # with the bf16-dlogits backward too (its dlogits buffer is one tile)
    B, T, H, V = 2, 32, 16, 1000
    c = _case(B=B, T=T, H=H, V=V, seed=14, dtype=torch.bfloat16 if half else torch.float32)
    c["mask"][:] = 1
    monkeypatch.setattr(lin, "HALF_DLOGITS", half)
    leaves = [c[k].clone().requires_grad_(True) for k in ("hidden", "weight", "bias")]
    with _Largest() as rec:
        loss, _ = linear_grpo_loss(*leaves[:2], c["ids"], c["mask"], c["adv"], c["old"], c["ref"], bias=leaves[2],
                                   beta=0.1, return_entropy=True, backend="triton")
        loss.backward()
    # fp32 [V, H] weight gradient accumulators and [N, H] hidden ones, fp32 tiles; the logits would be 4 N V
    assert rec.largest <= 4 * max(V * H, B * T * H, 64 * 256) < 4 * B * T * V / 3, rec.largest
    assert all(torch.isfinite(x.grad).all() for x in leaves)


def test_all_masked_batch_launches_nothing(monkeypatch):
    c = _case(seed=8)
    monkeypatch.setattr(kern, "_launch", lambda *a: pytest.fail("kernel launched for zero rows"))
    h = c["hidden"].clone().requires_grad_(True)
    loss, stats = linear_grpo_loss(h, c["weight"], c["ids"], torch.zeros_like(c["mask"]), c["adv"], c["old"],
                                   c["ref"], beta=0.1, backend="triton")
    loss.backward()
    assert loss.item() == 0.0 and h.grad.abs().sum() == 0
    assert all(torch.isfinite(v) for v in stats.values())


def test_backend_selection(monkeypatch):
    c = _case(B=3, T=5, seed=9)
    args = (c["hidden"], c["weight"], c["ids"], c["mask"], c["adv"])
    with pytest.raises(ValueError, match="backend"):
        linear_grpo_loss(*args, backend="cuda")
    with pytest.raises(ValueError, match="backend"):
        linear_token_logprobs(c["hidden"], c["weight"], c["ids"], backend="fast")
    monkeypatch.setenv("SEMGRPO_OPS", "bogus")
    with pytest.raises(ValueError, match="bogus"):
        linear_logprobs_and_entropy(c["hidden"], c["weight"], c["ids"])
    monkeypatch.delenv("SEMGRPO_OPS")
    if DEV == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "0")  # forced Triton on CPU tensors without the interpreter
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            linear_grpo_loss(*args, backend="triton")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        # auto on CPU runs the torch path: the kernels are never called
        monkeypatch.setattr(kern, "fwd_tile", lambda *a: pytest.fail("Triton on CPU under auto"))
        linear_grpo_loss(*args)
        monkeypatch.setenv("SEMGRPO_OPS", "triton")
        with pytest.raises(pytest.fail.Exception, match="Triton on CPU"):
            linear_grpo_loss(*args)
