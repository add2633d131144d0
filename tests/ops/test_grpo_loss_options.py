"""grpo_loss with every option of linear_grpo_loss (issue "The same options on the logits-level grpo_loss"):
all TRL 1.16 loss types, sequence-level importance sampling, delta, bias-corrected KL, vLLM IS ratios and the
entropy, on the torch path and the Triton path (interpreted on CPU). Primary references: the float64
re-derivation of TRL 1.16's formulas on materialised logits (_ops_ref.trl_grpo_loss_ref) and, when trl is
installed, TRL's own ``GRPOTrainer._compute_loss`` on a stub; ``linear_grpo_loss`` only as a secondary check."""

import importlib
import os

import pytest
import torch
from _ops_ref import trl_grpo_loss_ref
from _tolerance import assert_close_scaled, grad_rtol, loss_rtol, sum_rtol, unit_roundoff

from semgrpo.ops import LOSS_TYPES, TRL_LOSS_TYPES, _grpo_kernel, grpo_loss, grpo_loss_torch, linear_grpo_loss

gl = importlib.import_module("semgrpo.ops.grpo_loss")  # the module (the package attribute is the function)

LEVELS = ("token", "sequence")
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else (
    "cpu" if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") else None)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def blocks(monkeypatch):
    """BLOCK_V 128: V=300 spans 3 vocabulary blocks (the last one partial) in every Triton kernel."""
    monkeypatch.setattr(_grpo_kernel, "LAUNCH_OVERRIDE", (128, 4, 0))


def _case(B=3, T=7, V=300, dtype=torch.float32, seed=0, temperature=1.0, adv_2d=False, seq_is=False):
    """Logits in `dtype`, ids, a mask with a fully masked last row, advantages of both signs, and old/ref/vLLM
    IS ratios spread enough that both clip sides (token and sequence level) are hit."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, T, V, generator=g) * 2).to(dtype)
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = (torch.rand(B, T, generator=g) > 0.2).float()
    mask[-1] = 0
    adv = torch.randn(B, T, generator=g) if adv_2d else torch.randn(B, generator=g)
    adv[0] = adv[0].abs() + 0.1
    adv[1] = -adv[1].abs() - 0.1
    exact = torch.log_softmax(logits.double() / temperature, -1).gather(-1, ids[..., None])[..., 0].float()
    shift = torch.tensor([-1.0, 1.0, 0.5][:B] + [0.0] * (B - 3))[:, None]
    old = exact + 0.4 * torch.randn(B, T, generator=g) + 0.5 * shift
    ref = exact + 0.3 * torch.randn(B, T, generator=g)
    if seq_is:
        isr = torch.exp(0.3 * torch.randn(B, 1, generator=g)).clamp(max=2.0)
    else:
        isr = torch.exp(0.3 * torch.randn(B, T, generator=g)).clamp(max=2.0)
        isr = torch.where(mask != 0, isr, 1.0)  # what TRL produces at padding (ratio of equal log-probs)
    return dict(logits=logits, ids=ids, mask=mask, adv=adv, old=old, ref=ref, isr=isr)


def _kwargs_for(loss_type, **kw):
    kw["loss_type"] = loss_type
    kw.setdefault("max_completion_length", 50)
    kw.setdefault("num_items_in_batch", 71)
    if loss_type == "cispo":
        kw["eps_high"] = 1.2  # TRL's epsilon_high is cispo's absolute cap on the ratio
    return kw


def _masked_mean(x, m):
    return (x * m).sum() / m.sum().clamp(min=1.0)


def _check(c, backend, device, *, use_old=True, use_ref=True, use_isr=False, bonus=0.0, logits=None, **kw):
    """grpo_loss on `device` against trl_grpo_loss_ref in float64 on the same (rounded) logits: loss, stats,
    the entropy and d(loss - bonus * mean entropy)/d logits. Returns (loss, stats, grad, float64 logits)."""
    dtype = c["logits"].dtype
    dev = lambda t: None if t is None else t.to(device)
    old, ref = (c["old"] if use_old else None), (c["ref"] if use_ref else None)
    isr = c["isr"] if use_isr else None
    x = c["logits"].detach().clone().to(device).requires_grad_(True) if logits is None else logits
    loss, stats = grpo_loss(x, dev(c["ids"]), dev(c["mask"]), dev(c["adv"]), dev(old), dev(ref),
                            vllm_is_ratio=dev(isr), backend=backend, **kw)
    total = loss
    if bonus:
        total = loss - bonus * _masked_mean(stats["per_token_entropy"], dev(c["mask"]))
    total.backward()

    xr = c["logits"].detach().double().requires_grad_(True)
    isr_ref = None if isr is None else (isr[:, None] if isr.dim() == 1 else isr)
    ref_kw = {k: v for k, v in kw.items() if k != "return_entropy"}
    want, want_stats = trl_grpo_loss_ref(xr, c["ids"], c["mask"], c["adv"], old, ref, vllm_is_ratio=isr_ref,
                                         **ref_kw)
    lsm = torch.log_softmax(xr / kw.get("temperature", 1.0), -1)
    ent = -(lsm.exp() * lsm).sum(-1) * c["mask"]
    (want - bonus * _masked_mean(ent, c["mask"])).backward()

    # fp32 math on the same (rounded) logits as the reference; the gradient is then stored in the logits' dtype
    V, N = c["logits"].shape[-1], c["ids"].numel()
    lrt, grt = loss_rtol(V, N), grad_rtol(dtype, V, N)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert loss.item() == pytest.approx(want.item(), rel=lrt, abs=lrt)
    grad = (x.grad if logits is None else None)
    if grad is not None:
        assert grad.dtype == dtype and torch.isfinite(grad).all()
        assert_close_scaled(grad.cpu().double(), xr.grad, grt)
    with_entropy = kw.get("return_entropy", False)
    expected = {"kl", "clip_ratio_low", "clip_ratio_high", "clip_ratio_region"}
    expected |= {"vespo_phi_seq_mean"} if kw["loss_type"] == "vespo" else set()
    expected |= {"entropy", "per_token_entropy"} if with_entropy else set()
    assert set(stats) == expected
    for key, val in want_stats.items():
        if key in stats:
            assert stats[key].dim() == 0 and not stats[key].requires_grad
            assert stats[key].item() == pytest.approx(val, rel=lrt, abs=lrt), key
    if with_entropy:
        pte = stats["per_token_entropy"]
        assert pte.shape == c["ids"].shape and pte.dtype == torch.float32 and pte.requires_grad
        assert_close_scaled(pte.detach().cpu().double(), ent.detach(), lrt)
    return loss, stats, grad, xr


def _trl_reference(c, logits64, kw, isr):
    """TRL 1.16's own GRPOTrainer._compute_loss on log-probs of the float64 logits (None without trl)."""
    try:
        trainer_mod = importlib.import_module("trl.trainer.grpo_trainer")
    except Exception:
        return None
    from test_linear_grpo_loss import _trl_compute_loss  # the stub trainer, shared with the fused-linear tests

    lsm = torch.log_softmax(logits64 / kw["temperature"], -1)
    logp = lsm.gather(-1, c["ids"][..., None])[..., 0]
    entropy = -(lsm.exp() * lsm).sum(-1).detach()
    return _trl_compute_loss(
        trainer_mod.GRPOTrainer, logp, entropy, c, loss_type=kw["loss_type"], level=kw["importance_sampling_level"],
        beta=kw["beta"], eps_low=kw["eps_low"], eps_high=kw["eps_high"], delta=kw["delta"],
        bias_kl=kw["use_bias_correction_kl"], isr=isr, max_len=kw["max_completion_length"],
        num_items=kw["num_items_in_batch"])


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("loss_type", TRL_LOSS_TYPES)
def test_every_loss_type_all_options(backend_device, loss_type, level):
    # beta > 0 with bias-corrected KL, delta, vLLM IS ratio, temperature != 1, eps_high != eps_low; the entropy
    # at sequence level. Against the float64 formulas, then against TRL's own _compute_loss on the same logits.
    backend, device = backend_device
    kw = _kwargs_for(loss_type, beta=0.04, eps_low=0.2, eps_high=0.28, temperature=0.8,
                     importance_sampling_level=level, delta=1.5, use_bias_correction_kl=True,
                     return_entropy=level == "sequence")
    c = _case(T=5, seed=1, temperature=0.8)
    loss, stats, grad, _ = _check(c, backend, device, use_isr=True, **kw)
    if loss_type in ("grpo", "dapo") and level == "token":
        assert stats["clip_ratio_low"].item() > 0 and stats["clip_ratio_high"].item() > 0
    if loss_type == "grpo" and level == "sequence":
        assert stats["clip_ratio_region"].item() > 0
    assert grad.cpu()[-1].abs().sum() == 0 and (grad.cpu()[c["mask"] == 0] == 0).all()  # masked rows

    x64 = c["logits"].double().requires_grad_(True)
    trl = _trl_reference(c, x64, kw, c["isr"])
    if trl is None:
        return
    want, logged = trl
    want.backward()
    V, N = c["logits"].shape[-1], c["ids"].numel()
    assert loss.item() == pytest.approx(want.item(), rel=loss_rtol(V, N))
    assert_close_scaled(grad.cpu().double(), x64.grad, grad_rtol(torch.float32, V, N))
    names = {"kl": "kl", "entropy": "entropy", "clip_ratio_low": "clip_ratio/low_mean",
             "clip_ratio_high": "clip_ratio/high_mean", "clip_ratio_region": "clip_ratio/region_mean",
             "vespo_phi_seq_mean": "vespo/phi_seq_mean"}
    if loss_type == "cispo":
        names["clip_ratio_high"] = "cispo_clip_ratio"
    for ours, theirs in names.items():
        if theirs in logged and ours in stats:
            assert stats[ours].item() == pytest.approx(logged[theirs][0], rel=loss_rtol(V, N), abs=loss_rtol(V, N)), ours


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("loss_type", TRL_LOSS_TYPES)
def test_every_loss_type_plain(backend_device, loss_type, level):
    # beta 0 without ref, no old (ratio 1), symmetric eps, temperature 1, per-token advantages: the fused kernel
    # for LOSS_TYPES at token level, the logp path otherwise
    backend, device = backend_device
    _check(_case(T=3, seed=2, adv_2d=True), backend, device, use_old=False, use_ref=False,
           **_kwargs_for(loss_type, importance_sampling_level=level))


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "luspo", "vespo", "cispo", "sapo"])
def test_kl_without_bias_correction_and_sequence_is_ratio(backend_device, blocks, loss_type):
    backend, device = backend_device
    c = _case(T=4, seed=3, seq_is=True, temperature=1.3)
    if loss_type in ("grpo", "cispo"):
        c["isr"] = c["isr"][:, 0]  # [B] is accepted as [B, 1]
    _, stats, _, _ = _check(c, backend, device, use_isr=True,
                            **_kwargs_for(loss_type, beta=0.1, eps_low=0.1, eps_high=0.3, temperature=1.3))
    assert stats["kl"].item() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=lambda d: str(d)[6:])
def test_dtypes_entropy_bonus_odd_shape_many_blocks(backend_device, monkeypatch, dtype):
    # V=1000 over 4 blocks of 256 (the last partial), T=37 (13 for the half types: the interpreter's time goes
    # with the rows); an entropy bonus differentiated through the kernel
    backend, device = backend_device
    monkeypatch.setattr(_grpo_kernel, "LAUNCH_OVERRIDE", (256, 4, 0))
    c = _case(B=2, T=37 if dtype == torch.float32 else 13, V=1000, dtype=dtype, seed=5, temperature=0.7)
    c["mask"][0, 1::3] = 0  # fewer live rows: the interpreter's time goes with them
    c["ids"][0, 0], c["ids"][0, 1], c["ids"][0, 2] = 0, 999, 511  # first, last (partial) and a middle block
    kw = _kwargs_for("dapo", beta=0.04, eps_high=0.28, temperature=0.7, use_bias_correction_kl=True,
                     return_entropy=True)
    _, stats, _, _ = _check(c, backend, device, use_isr=True, bonus=0.05, **kw)
    assert (stats["per_token_entropy"].cpu()[c["mask"] == 0] == 0).all()


def test_peaked_rows_entropy_precision(backend_device):
    # near one-hot rows of large logits: H ~ 1e-6 must not come out of a difference of two numbers ~50
    backend, device = backend_device
    V = 300
    logits = torch.randn(2, 3, V) * 0.5
    logits[..., 7] += 50.0
    logits[1, 2, 8] += 49.0  # two competing logits: H ~ 0.58
    ids = torch.full((2, 3), 7)
    x = logits.to(device).requires_grad_(True)
    _, stats = grpo_loss(x, ids.to(device), torch.ones(2, 3, device=device), torch.ones(2, device=device),
                         return_entropy=True, backend=backend)
    lsm = torch.log_softmax(logits.double(), -1)
    want = -(lsm.exp() * lsm).sum(-1)
    got = stats["per_token_entropy"].detach().cpu().double()
    # each log-prob (z - lse, both ~50) is off by ~50 u absolute, which every small term p (lse - z) carries
    # relatively (through p = exp(z - lse)); the sum of V terms adds its own rounding
    torch.testing.assert_close(got, want, rtol=loss_rtol(V, 1) + 2 * 50 * unit_roundoff(torch.float32), atol=0)


def test_strided_logits_masked_row_and_garbage(backend_device):
    backend, device = backend_device
    c = _case(B=2, T=11, V=300, seed=4)
    P = 5
    full = torch.randn(2, P + 11, 300)
    full[:, P - 1 : -1] = c["logits"]
    full = full.to(device).requires_grad_(True)
    view = full[:, P - 1 : -1]
    assert not view.is_contiguous()
    kw = _kwargs_for("cispo", beta=0.1, importance_sampling_level="sequence", use_bias_correction_kl=True,
                     temperature=1.1, return_entropy=True)
    loss, _, _, xr = _check(c, backend, device, use_isr=True, bonus=0.1, logits=view, **kw)
    g = full.grad.cpu().double()
    grt = grad_rtol(torch.float32, 300, 22)
    assert_close_scaled(g[:, P - 1 : -1], xr.grad, grt)
    assert g[:, : P - 1].abs().sum() == 0 and g[:, -1].abs().sum() == 0  # outside the view
    assert g[-1, P - 1 : -1].abs().sum() == 0  # the fully masked row
    # garbage at masked positions (ids -100, inf/NaN old/ref/IS ratio) changes nothing
    off = c["mask"] == 0
    ids, old, ref, isr = c["ids"].clone(), c["old"].clone(), c["ref"].clone(), c["isr"].clone()
    ids[off], old[off], ref[off], isr[off] = -100, float("-inf"), float("nan"), float("nan")
    x2 = c["logits"].clone().to(device).requires_grad_(True)
    dev = lambda t: t.to(device)
    loss2, st2 = grpo_loss(x2, dev(ids), dev(c["mask"]), dev(c["adv"]), dev(old), dev(ref), vllm_is_ratio=dev(isr),
                           backend=backend, **kw)
    (loss2 - 0.1 * _masked_mean(st2["per_token_entropy"], dev(c["mask"]))).backward()
    torch.testing.assert_close(loss2, loss.detach(), rtol=0, atol=0)  # masked values never enter the sums
    assert_close_scaled(x2.grad.cpu().double(), xr.grad, grt)
    assert all(torch.isfinite(v).all() for v in st2.values())


def test_all_masked_batch_no_grad_forward_and_grpo_loss_torch(backend_device):
    backend, device = backend_device
    c = _case(B=2, T=3, V=50, seed=6)
    args = [c[k].to(device) for k in ("ids", "mask", "adv", "old", "ref")]
    zeros = torch.zeros_like(args[1])
    for i, lt in enumerate(TRL_LOSS_TYPES):
        level = LEVELS[i % 2]
        x = c["logits"].clone().to(device).requires_grad_(True)
        loss, stats = grpo_loss(x, args[0], zeros, *args[2:], beta=0.1, loss_type=lt, return_entropy=True,
                                importance_sampling_level=level, backend=backend)
        loss.backward()
        assert loss.item() == 0.0, (lt, level)
        assert all(torch.isfinite(v).all() for v in stats.values())
        assert x.grad.abs().sum().item() == 0.0
    kw = dict(beta=0.1, loss_type="sapo", importance_sampling_level="sequence", use_bias_correction_kl=True,
              return_entropy=True, sapo_temperature_neg=2.0)
    with torch.no_grad():
        got, st = grpo_loss(c["logits"].to(device), *args, backend=backend, **kw)
    want, wst = grpo_loss_torch(c["logits"], *[a.cpu() for a in args], **kw)
    rtol = 2 * loss_rtol(50, 6)  # two fp32 computations, each within loss_rtol of exact
    assert got.item() == pytest.approx(want.item(), rel=rtol, abs=rtol)
    for k in wst:
        assert_close_scaled(st[k].cpu(), wst[k].detach(), rtol, msg=k)


def test_fused_kernel_only_where_it_is_exact(monkeypatch):
    # which configurations take the fully fused kernel; none silently drops to torch on the Triton path
    if TRITON_DEVICE is None:
        pytest.skip("needs CUDA or the Triton interpreter")
    device = TRITON_DEVICE
    calls = []
    for name in ("grpo_loss_triton", "logp_entropy_triton"):
        real = getattr(gl, name)
        monkeypatch.setattr(gl, name, lambda *a, _n=name, _f=real, **k: calls.append(_n) or _f(*a, **k))

    def no_torch(*a, **k):
        raise AssertionError("the Triton path fell back to torch")

    monkeypatch.setattr(gl, "_grpo_loss_torch", no_torch)
    c = {k: v.to(device) for k, v in _case(B=2, T=3, V=16, seed=7).items()}
    base = (c["logits"], c["ids"], c["mask"], c["adv"], c["old"])
    fused = [dict(loss_type=lt) for lt in LOSS_TYPES] + [dict(use_bias_correction_kl=True)]  # no ref: no KL
    other = [dict(loss_type=lt) for lt in TRL_LOSS_TYPES if lt not in LOSS_TYPES] + [
        dict(importance_sampling_level="sequence"), dict(delta=2.0), dict(vllm_is_ratio=c["isr"]),
        dict(return_entropy=True), dict(ref_logps=c["ref"], use_bias_correction_kl=True)]
    for kw, want in [(k, "grpo_loss_triton") for k in fused] + [(k, "logp_entropy_triton") for k in other]:
        calls.clear()
        grpo_loss(*base, backend="triton", **kw)
        assert calls == [want], kw


def test_secondary_agrees_with_linear_grpo_loss(backend_device):
    # logits = hidden @ weight.T: grpo_loss on them and linear_grpo_loss must agree on the loss types beyond
    # LOSS_TYPES (those four: test_linear_grpo_loss.py::test_agrees_with_logits_level_grpo_loss)
    backend, device = backend_device
    g = torch.Generator().manual_seed(8)
    B, T, H, V = 2, 4, 16, 64
    h, w = torch.randn(B, T, H, generator=g), torch.randn(V, H, generator=g) / 2
    c = _case(B=B, T=T, V=V, seed=8)
    c["mask"][-1, :2] = 1
    for i, lt in enumerate(t for t in TRL_LOSS_TYPES if t not in LOSS_TYPES):
        kw = _kwargs_for(lt, beta=0.05, temperature=0.9, importance_sampling_level=LEVELS[i % 2],
                         use_bias_correction_kl=True, delta=1.4, return_entropy=True)
        args = (c["ids"], c["mask"], c["adv"], c["old"], c["ref"])
        x = (h @ w.T).to(device).requires_grad_(True)
        a, sa = grpo_loss(x, *[t.to(device) for t in args], vllm_is_ratio=c["isr"].to(device), backend=backend, **kw)
        hl = h.clone().requires_grad_(True)
        b, sb = linear_grpo_loss(hl, w, *args, vllm_is_ratio=c["isr"], **kw)
        # two fp32 computations (logits materialised or streamed from hidden @ W^T, H terms each)
        rtol = 2 * (loss_rtol(V, B * T) + sum_rtol(torch.float32, H))
        assert a.item() == pytest.approx(b.item(), rel=rtol, abs=rtol)
        for k in sb:
            assert_close_scaled(sa[k].detach().cpu(), sb[k].detach(), rtol, msg=k)
        (a + sa["per_token_entropy"].sum()).backward()
        (b + sb["per_token_entropy"].sum()).backward()
        assert_close_scaled(x.grad.cpu() @ w, hl.grad, rtol + sum_rtol(torch.float32, V))  # and back through W
