"""linear_grpo_loss / linear_token_logprobs: the GRPO loss from hidden states and the LM head, streamed over
vocabulary chunks, against float64 references on materialised logits (TRL 1.16's formulas, _ops_ref.py),
against TRL's and Liger's own code when installed, and a check that no [N, V] tensor is ever allocated."""

import importlib
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from _ops_ref import trl_grpo_loss_ref
from _tolerance import assert_close_scaled, linear_grad_rtol, linear_loss_rtol
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from semgrpo.ops import (
    TRL_LOSS_TYPES,
    grpo_loss_torch,
    linear_grpo_loss,
    linear_logprobs_and_entropy,
    linear_token_logprobs,
)

lin = importlib.import_module("semgrpo.ops.linear_grpo_loss")  # the module (the package attribute is the function)

STAT_KEYS = ("kl", "clip_ratio_low", "clip_ratio_high", "clip_ratio_region", "entropy")
LEVELS = ("token", "sequence")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def small_chunks(monkeypatch):
    """Several token and vocabulary chunks (V=1000 -> 4 vocab chunks, one of them partial)."""
    monkeypatch.setattr(lin, "CHUNK_OVERRIDE", (16, 256))


def _case(B=3, T=37, H=96, V=1000, dtype=torch.float32, seed=0, adv_2d=False, with_bias=True, seq_is=False):
    """Hidden/weight/bias in `dtype`, ids, a mask with a fully masked last row, advantages of both signs, and
    old/ref/vLLM-IS ratios spread enough that both clip sides (token and sequence level) are hit."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g).to(dtype)
    weight = (torch.randn(V, H, generator=g) * (2 / math.sqrt(H))).to(dtype)
    bias = (0.5 * torch.randn(V, generator=g)).to(dtype) if with_bias else None
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = (torch.rand(B, T, generator=g) > 0.2).float()
    mask[-1] = 0
    adv = torch.randn(B, T, generator=g) if adv_2d else torch.randn(B, generator=g)
    adv[0] = adv[0].abs() + 0.1
    adv[1] = -adv[1].abs() - 0.1
    logits = hidden.double() @ weight.double().T + (0 if bias is None else bias.double())
    exact = torch.log_softmax(logits, -1).gather(-1, ids[..., None])[..., 0].float()
    old = exact + 0.4 * torch.randn(B, T, generator=g) + 0.3 * torch.tensor([-1.0, 1.0, 0.5][:B] + [0.0] * (B - 3))[:, None]
    ref = exact + 0.3 * torch.randn(B, T, generator=g)
    if seq_is:
        isr = torch.exp(0.3 * torch.randn(B, 1, generator=g)).clamp(max=2.0)
    else:
        isr = torch.exp(0.3 * torch.randn(B, T, generator=g)).clamp(max=2.0)
        isr = torch.where(mask != 0, isr, 1.0)  # what TRL produces at padding (ratio of equal log-probs)
    return dict(hidden=hidden, weight=weight, bias=bias, ids=ids, mask=mask, adv=adv, old=old, ref=ref, isr=isr)


def _kwargs_for(loss_type, **kw):
    kw["loss_type"] = loss_type
    if loss_type == "dr_grpo":
        kw.setdefault("max_completion_length", 50)
    if loss_type in ("dapo", "cispo", "vespo"):
        kw.setdefault("num_items_in_batch", 71)
    if loss_type == "cispo":
        kw["eps_high"] = 1.2  # TRL's epsilon_high is cispo's absolute cap on the ratio
    return kw


def _check(c, *, use_old=True, use_ref=True, use_isr=False, frozen=(), **kw):
    """Run linear_grpo_loss and the float64 TRL reference on the materialised logits; compare everything."""
    dtype = c["hidden"].dtype
    leaves = {k: c[k].detach().clone().requires_grad_(k not in frozen) for k in ("hidden", "weight", "bias")
              if c[k] is not None}
    old, ref = (c["old"] if use_old else None), (c["ref"] if use_ref else None)
    isr = c["isr"] if use_isr else None
    loss, stats = linear_grpo_loss(leaves["hidden"], leaves["weight"], c["ids"], c["mask"], c["adv"], old, ref,
                                   bias=leaves.get("bias"), vllm_is_ratio=isr, **kw)
    loss.backward()

    ref_leaves = {k: v.detach().double().requires_grad_(True) for k, v in leaves.items()}
    logits = ref_leaves["hidden"] @ ref_leaves["weight"].T
    if "bias" in ref_leaves:
        logits = logits + ref_leaves["bias"]
    want, want_stats = trl_grpo_loss_ref(logits, c["ids"], c["mask"], c["adv"], old, ref, vllm_is_ratio=isr, **kw)
    want.backward()

    (N, H), V = c["hidden"].reshape(-1, c["hidden"].shape[-1]).shape, c["weight"].shape[0]
    lrt, grt = linear_loss_rtol(H, V, N), linear_grad_rtol(dtype, H, V, N)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert loss.item() == pytest.approx(want.item(), rel=lrt, abs=lrt)
    for k, v in leaves.items():
        if k in frozen:
            assert v.grad is None
            continue
        assert v.grad.dtype == v.dtype and torch.isfinite(v.grad).all()
        assert_close_scaled(v.grad.double(), ref_leaves[k].grad, grt, msg=k)
    for key, val in want_stats.items():
        assert stats[key].dim() == 0 and not stats[key].requires_grad
        assert stats[key].item() == pytest.approx(val, rel=lrt, abs=lrt), key
    return loss, stats, leaves


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("loss_type", TRL_LOSS_TYPES)
def test_loss_types_all_options(small_chunks, loss_type, level):
    kw = _kwargs_for(loss_type, beta=0.04, eps_low=0.2, eps_high=0.28, temperature=0.8,
                     importance_sampling_level=level, delta=1.5, use_bias_correction_kl=True)
    _, stats, _ = _check(_case(seed=1), use_isr=True, **kw)
    if loss_type in ("grpo", "dapo") and level == "token":
        assert stats["clip_ratio_low"].item() > 0 and stats["clip_ratio_high"].item() > 0
    if loss_type == "grpo" and level == "sequence":
        assert stats["clip_ratio_region"].item() > 0


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("loss_type", TRL_LOSS_TYPES)
def test_loss_types_plain_per_token_advantages(small_chunks, loss_type, level):
    # beta 0 without ref, no old (ratio 1), symmetric eps, temperature 1, per-token advantages, no bias
    kw = _kwargs_for(loss_type, importance_sampling_level=level)
    _check(_case(seed=2, adv_2d=True, with_bias=False), use_old=False, use_ref=False, **kw)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "luspo", "vespo", "cispo", "sapo"])
def test_kl_without_bias_correction_and_sequence_is_ratio(small_chunks, loss_type):
    kw = _kwargs_for(loss_type, beta=0.1, eps_low=0.1, eps_high=0.3, temperature=1.3)
    _, stats, _ = _check(_case(seed=3, seq_is=True), use_isr=True, **kw)
    assert stats["kl"].item() > 0


def test_kl_reported_with_ref_even_when_beta_is_zero(small_chunks):
    _, stats, _ = _check(_case(seed=4), beta=0.0, use_bias_correction_kl=True)
    assert stats["kl"].item() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtypes_accumulate_in_fp32(small_chunks, dtype):
    # Products of bf16/fp16 inputs are exact in fp32: the loss must match the float64 reference on the same
    # (rounded) inputs to fp32 precision, which rounding each chunk's logits to bf16 would miss by ~1e-2.
    kw = dict(beta=0.04, eps_high=0.28, temperature=0.7, loss_type="dapo", use_bias_correction_kl=True)
    _check(_case(seed=5, dtype=dtype), use_isr=True, **kw)


def test_autocast_does_not_round_the_chunk_matmul(small_chunks):
    c = _case(seed=17)
    args = (c["hidden"], c["weight"], c["ids"], c["mask"], c["adv"], c["old"], c["ref"])
    plain, _ = linear_grpo_loss(*args, bias=c["bias"], beta=0.04)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto, _ = linear_grpo_loss(*args, bias=c["bias"], beta=0.04)
        lp = linear_token_logprobs(c["hidden"], c["weight"], c["ids"], bias=c["bias"])
    # autocast must change nothing: the same fp32 computation, bitwise
    torch.testing.assert_close(auto, plain, rtol=0, atol=0)
    torch.testing.assert_close(lp, linear_token_logprobs(c["hidden"], c["weight"], c["ids"], bias=c["bias"]), rtol=0,
                               atol=0)


@pytest.mark.parametrize("chunks", [None, (1, 7), (5, 333), (37, 999), (4096, 1)])
def test_chunk_sizes_do_not_change_results(monkeypatch, chunks):
    c = _case(B=2, T=9, H=24, V=300, seed=6)
    monkeypatch.setattr(lin, "CHUNK_OVERRIDE", chunks)
    loss, stats, leaves = _check(c, beta=0.05, temperature=0.9)
    monkeypatch.setattr(lin, "CHUNK_OVERRIDE", None)
    base = {k: v.detach().clone().requires_grad_(True) for k, v in (("h", c["hidden"]), ("w", c["weight"]))}
    l2, _ = linear_grpo_loss(base["h"], base["w"], c["ids"], c["mask"], c["adv"], c["old"], c["ref"],
                             bias=c["bias"], beta=0.05, temperature=0.9)
    l2.backward()
    # two fp32 computations that only chunk the sums differently, each within the bounds of exact
    rtol = 2 * linear_grad_rtol(torch.float32, 24, 300, 18)
    assert loss.item() == pytest.approx(l2.item(), rel=rtol)
    assert_close_scaled(leaves["hidden"].grad, base["h"].grad, rtol)
    assert_close_scaled(leaves["weight"].grad, base["w"].grad, rtol)


def test_default_chunk_sizes_respect_the_budget(monkeypatch):
    # the fp32 weight chunk [voc, 4096] is the binding limit here: TILE_ELEMS elements (2048 rows at 32 MiB)
    assert lin._chunk_sizes(100, 151936, 4096) == (100, lin.TILE_ELEMS // 4096)
    tok, voc = lin._chunk_sizes(16384, 151936, 896)
    assert tok == lin.TOKEN_CHUNK and tok * voc <= lin.TILE_ELEMS and voc % 128 == 0
    assert lin._chunk_sizes(7, 1000, 96) == (7, 1000)  # small problems: one tile
    monkeypatch.setattr(lin, "TILE_ELEMS", 1000)
    assert lin._chunk_sizes(50, 1000, 8) == (50, 20)


def test_entropy_values_and_gradient(small_chunks):
    c = _case(seed=7, dtype=torch.float32)
    h = c["hidden"].clone().requires_grad_(True)
    w = c["weight"].clone().requires_grad_(True)
    loss, stats = linear_grpo_loss(h, w, c["ids"], c["mask"], c["adv"], c["old"], bias=c["bias"], temperature=0.6,
                                   return_entropy=True)
    ent = stats["per_token_entropy"]
    assert ent.shape == c["ids"].shape and ent.dtype == torch.float32 and ent.requires_grad
    assert (ent[c["mask"] == 0] == 0).all()
    # TRL's entropy bonus: loss - coef * masked mean entropy, differentiated through the streamed entropy
    m = c["mask"]
    total = loss - 0.01 * (ent * m).sum() / m.sum()
    total.backward()
    h64 = c["hidden"].double().requires_grad_(True)
    w64 = c["weight"].double().requires_grad_(True)
    logits = h64 @ w64.T + c["bias"].double()
    want, want_stats = trl_grpo_loss_ref(logits, c["ids"], m, c["adv"], c["old"], temperature=0.6)
    lsm = torch.log_softmax(logits / 0.6, -1)
    ent64 = -(lsm.exp() * lsm).sum(-1)
    (want - 0.01 * (ent64 * m).sum() / m.sum()).backward()
    N, H, V = m.numel(), c["hidden"].shape[-1], c["weight"].shape[0]
    assert_close_scaled(ent.detach().double(), ent64.detach() * m, linear_loss_rtol(H, V, N))
    assert stats["entropy"].item() == pytest.approx(want_stats["entropy"], rel=linear_loss_rtol(H, V, N))
    for got, ref in ((h, h64), (w, w64)):
        assert_close_scaled(got.grad.double(), ref.grad, linear_grad_rtol(torch.float32, H, V, N))


def test_fully_masked_row_and_all_masked_batch(small_chunks):
    c = _case(seed=8)
    _, _, leaves = _check(c, beta=0.1)
    assert leaves["hidden"].grad[-1].abs().sum() == 0  # the fully masked row
    assert (leaves["hidden"].grad[c["mask"] == 0] == 0).all()
    for lt in TRL_LOSS_TYPES:
        for level in LEVELS:
            h = c["hidden"].clone().requires_grad_(True)
            w = c["weight"].clone().requires_grad_(True)
            loss, stats = linear_grpo_loss(h, w, c["ids"], torch.zeros_like(c["mask"]), c["adv"], c["old"],
                                           c["ref"], beta=0.1, loss_type=lt, importance_sampling_level=level)
            loss.backward()
            assert loss.item() == 0.0, (lt, level)
            assert all(torch.isfinite(v) for v in stats.values())
            assert h.grad.abs().sum() == 0 and w.grad.abs().sum() == 0


def test_garbage_in_masked_positions_never_leaks(small_chunks):
    c = _case(seed=9)
    off = c["mask"] == 0
    kw = dict(beta=0.1, importance_sampling_level="sequence", use_bias_correction_kl=True)
    base, _ = linear_grpo_loss(c["hidden"], c["weight"], c["ids"], c["mask"], c["adv"], c["old"], c["ref"],
                               vllm_is_ratio=c["isr"], bias=c["bias"], **kw)
    for lt in ("grpo", "vespo"):
        ids, old, ref, isr = c["ids"].clone(), c["old"].clone(), c["ref"].clone(), c["isr"].clone()
        ids[off] = -100
        old[off] = float("-inf")
        ref[off] = float("nan")
        isr[off] = float("nan")
        h = c["hidden"].clone().requires_grad_(True)
        loss, stats = linear_grpo_loss(h, c["weight"], ids, c["mask"], c["adv"], old, ref, vllm_is_ratio=isr,
                                       bias=c["bias"], loss_type=lt, **kw)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(h.grad).all()
        assert all(torch.isfinite(v) for v in stats.values())
        if lt == "grpo":
            torch.testing.assert_close(loss, base, rtol=0, atol=0)  # masked values never enter the sums


def test_strided_inputs(small_chunks):
    c = _case(B=2, T=11, H=40, V=300, seed=10)
    P = 5
    full = torch.randn(2, P + 11, 40)
    full[:, P - 1 : -1] = c["hidden"]
    full.requires_grad_(True)
    hidden = full[:, P - 1 : -1]
    w_store = c["weight"].t().contiguous().requires_grad_(True)  # [H, V] storage: weight is a transposed view
    weight = w_store.t()
    ids = torch.zeros(2, 22, dtype=torch.long)
    ids[:, ::2] = c["ids"]
    mask = torch.zeros(11, 2)
    mask[:] = c["mask"].t()
    adv = torch.stack([c["adv"], c["adv"]], 1)[:, 0]
    old = torch.stack([c["old"], c["old"]], -1)[..., 1]
    views = (hidden, weight, ids[:, ::2], mask.t(), adv, old)
    assert not any(v.is_contiguous() for v in views)
    loss, _ = linear_grpo_loss(*views, c["ref"], beta=0.1, bias=c["bias"], temperature=1.1)
    loss.backward()
    h64 = c["hidden"].double().requires_grad_(True)
    w64 = c["weight"].double().requires_grad_(True)
    want, _ = trl_grpo_loss_ref(h64 @ w64.T + c["bias"].double(), c["ids"], c["mask"], c["adv"], c["old"], c["ref"],
                                beta=0.1, temperature=1.1)
    want.backward()
    assert loss.item() == pytest.approx(want.item(), rel=linear_loss_rtol(40, 300, 22))
    grt = linear_grad_rtol(torch.float32, 40, 300, 22)
    g = full.grad.double()
    assert_close_scaled(g[:, P - 1 : -1], h64.grad, grt)
    assert g[:, : P - 1].abs().sum() == 0 and g[:, -1].abs().sum() == 0
    assert_close_scaled(w_store.grad.t().double(), w64.grad, grt)


class _Record(TorchDispatchMode):
    """Records the largest tensor any op returns, and the shapes returned by matmuls."""

    def __init__(self):
        super().__init__()
        self.largest = 0
        self.mm_shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
                if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.addmm_):
                    self.mm_shapes.append(tuple(t.shape))
        return out


def test_peak_allocation_is_one_tile_not_the_logits(monkeypatch):
    B, T, H, V = 4, 64, 16, 2000
    N = B * T
    c = _case(B=B, T=T, H=H, V=V, seed=11)
    c["mask"][-1] = 1  # every row live: N rows projected
    monkeypatch.setattr(lin, "TOKEN_CHUNK", 64)
    monkeypatch.setattr(lin, "TILE_ELEMS", 64 * 128)
    assert lin._chunk_sizes(N, V, H) == (64, 128)
    h = c["hidden"].clone().requires_grad_(True)
    w = c["weight"].clone().requires_grad_(True)
    b = c["bias"].clone().requires_grad_(True)
    with _Record() as rec:
        loss, _ = linear_grpo_loss(h, w, c["ids"], c["mask"], c["adv"], c["old"], c["ref"], bias=b, beta=0.1,
                                   return_entropy=True)
        loss.backward()
    # the largest tensors are the weight-sized gradient (V*H = 32000) and the hidden-sized ones; tiles are 8192
    assert rec.largest <= max(V * H, N * H, 64 * 128), rec.largest
    assert rec.largest * 10 < N * V
    # the probe does see logits-sized allocations when they happen
    with _Record() as rec2:
        logits = h @ w.T + b
        grpo_loss_torch(logits, c["ids"], c["mask"], c["adv"], c["old"], c["ref"], beta=0.1)[0].backward()
    assert rec2.largest >= N * V

    # frozen LM head (LoRA): no weight-gradient matmul at all, no weight gradient
    w.requires_grad_(False)
    w.grad = None
    with _Record() as rec3:
        linear_grpo_loss(h, w, c["ids"], c["mask"], c["adv"], c["old"], bias=b)[0].backward()
    assert w.grad is None
    assert not any(s == (128, H) for s in rec3.mm_shapes), "a weight-gradient matmul ran for a frozen weight"
    assert any(s == (64, H) for s in rec3.mm_shapes)  # the hidden-gradient matmuls did run


@pytest.mark.parametrize("frozen", [("weight",), ("weight", "bias"), ("bias",), ("hidden",)])
def test_frozen_parameters(small_chunks, frozen):
    _check(_case(seed=12), frozen=frozen, beta=0.04, temperature=0.9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_token_logprobs_is_log_softmax_gather(small_chunks, dtype):
    c = _case(B=2, T=37, H=96, V=1000, seed=13, dtype=dtype)
    h = c["hidden"].requires_grad_(True)
    for temp, bias in ((1.0, None), (0.7, c["bias"])):
        got = linear_token_logprobs(h, c["weight"], c["ids"], bias=bias, temperature=temp)
        logits = c["hidden"].double() @ c["weight"].double().T + (0 if bias is None else bias.double())
        want = torch.log_softmax(logits / temp, -1).gather(-1, c["ids"][..., None])[..., 0]
        assert got.dtype == torch.float32 and got.shape == (2, 37) and not got.requires_grad
        assert_close_scaled(got.double(), want, linear_loss_rtol(96, 1000, 1))  # per token: no mean over tokens
    # any leading shape; int32 ids
    flat = linear_token_logprobs(c["hidden"][0], c["weight"], c["ids"][0].int(), bias=c["bias"])
    lp, ent = linear_logprobs_and_entropy(c["hidden"][0], c["weight"], c["ids"][0], bias=c["bias"])
    torch.testing.assert_close(flat, lp.detach(), rtol=0, atol=0)  # one streamed pass computes both
    assert ent.shape == (37,) and (ent > 0).all()


def _good():
    g = torch.Generator().manual_seed(0)
    return dict(hidden=torch.randn(2, 3, 8, generator=g), weight=torch.randn(10, 8, generator=g),
                completion_ids=torch.zeros(2, 3, dtype=torch.long), completion_mask=torch.ones(2, 3),
                advantages=torch.ones(2))


@pytest.mark.parametrize(
    "change, err, match",
    [
        (lambda a: a.update(hidden=torch.randn(6, 8)), ValueError, "hidden"),
        (lambda a: a.update(hidden=torch.ones(2, 3, 8, dtype=torch.long)), TypeError, "hidden"),
        (lambda a: a.update(weight=torch.randn(10, 7)), ValueError, "weight"),
        (lambda a: a.update(weight=torch.randn(10, 8, 1)), ValueError, "weight"),
        (lambda a: a.update(bias=torch.randn(9)), ValueError, "bias"),
        (lambda a: a.update(completion_ids=torch.zeros(2, 4, dtype=torch.long)), ValueError, "completion_ids"),
        (lambda a: a.update(completion_ids=torch.zeros(2, 3)), TypeError, "completion_ids"),
        (lambda a: a.update(completion_ids=torch.full((2, 3), 10)), ValueError, "completion_ids"),
        (lambda a: a.update(completion_ids=torch.full((2, 3), -1)), ValueError, "completion_ids"),
        (lambda a: a.update(completion_mask=torch.ones(3, 2)), ValueError, "completion_mask"),
        (lambda a: a.update(advantages=torch.ones(3)), ValueError, "advantages"),
        (lambda a: a.update(old_logps=torch.zeros(2, 2)), ValueError, "old_logps"),
        (lambda a: a.update(vllm_is_ratio=torch.ones(2, 2)), ValueError, "vllm_is_ratio"),
        (lambda a: a.update(loss_type="ppo"), ValueError, "loss_type"),
        (lambda a: a.update(importance_sampling_level="batch"), ValueError, "importance_sampling_level"),
        (lambda a: a.update(delta=0.0), ValueError, "delta"),
        (lambda a: a.update(sapo_temperature_neg=0.0), ValueError, "sapo_temperature_neg"),
        (lambda a: a.update(vespo_k_pos=float("nan")), ValueError, "vespo_k_pos"),
        (lambda a: a.update(beta=0.1), ValueError, "ref_logps"),
        (lambda a: a.update(temperature=0.0), ValueError, "temperature"),
        (lambda a: a.update(eps_low=1.0), ValueError, "eps_low"),
        (lambda a: a.update(max_completion_length=0), ValueError, "max_completion_length"),
        (lambda a: a.update(num_items_in_batch=0), ValueError, "num_items_in_batch"),
    ],
)
def test_bad_inputs(change, err, match):
    args = _good()
    change(args)
    with pytest.raises(err, match=match):
        linear_grpo_loss(**args)


def test_bad_inputs_token_logprobs_and_masked_out_of_range_ids_are_fine():
    a = _good()
    with pytest.raises(ValueError, match="ids"):
        linear_token_logprobs(a["hidden"], a["weight"], torch.full((2, 3), 10))
    with pytest.raises(ValueError, match="ids"):
        linear_token_logprobs(a["hidden"], a["weight"], torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="weight"):
        linear_token_logprobs(a["hidden"], torch.randn(10, 9), torch.zeros(2, 3, dtype=torch.long))
    ids = torch.tensor([[1, 2, -100], [3, -100, -100]])
    mask = (ids >= 0).float()
    loss, _ = linear_grpo_loss(a["hidden"], a["weight"], ids, mask, a["advantages"])
    assert torch.isfinite(loss)


def test_agrees_with_logits_level_grpo_loss(small_chunks):
    c = _case(seed=14)
    logits = c["hidden"] @ c["weight"].T + c["bias"]
    for lt in ("grpo", "bnpo", "dr_grpo", "dapo"):
        a, sa = linear_grpo_loss(c["hidden"], c["weight"], c["ids"], c["mask"], c["adv"], c["old"], c["ref"],
                                 bias=c["bias"], beta=0.04, eps_high=0.28, loss_type=lt, temperature=0.9)
        b, sb = grpo_loss_torch(logits, c["ids"], c["mask"], c["adv"], c["old"], c["ref"], beta=0.04, eps_high=0.28,
                                loss_type=lt, temperature=0.9)
        rtol = 2 * linear_loss_rtol(96, 1000, 111)  # both fp32, each within its bound of exact
        assert a.item() == pytest.approx(b.item(), rel=rtol, abs=rtol)
        for k in sb:
            assert sa[k].item() == pytest.approx(sb[k].item(), rel=rtol, abs=rtol), k


# --- TRL's and Liger's own code (skipped when not installed) ------------------------------------------------


def _trl_compute_loss(GRPOTrainer, logp, entropy, c, *, loss_type, level, beta, eps_low, eps_high, delta,
                      bias_kl, isr, max_len, num_items):
    """Run TRL 1.16's GRPOTrainer._compute_loss on given log-probs through a minimal stand-in trainer
    (one process, eval mode, no entropy bonus/masks)."""
    metrics = defaultdict(lambda: defaultdict(list))
    B = logp.shape[0]
    ident = lambda x, **_: x
    stub = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, entropy, None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level=level, beta=beta,
        loss_type=loss_type, epsilon_low=eps_low, epsilon_high=eps_high, use_vllm=isr is not None,
        vllm_importance_sampling_correction=isr is not None, model=SimpleNamespace(training=False),
        accelerator=SimpleNamespace(num_processes=1, reduce=ident, gather=ident, gather_for_metrics=ident),
        _entropy_bonus_enabled=False, aux_loss_enabled=False, _metrics=metrics, max_completion_length=max_len,
        get_gamma_weights=GRPOTrainer.get_gamma_weights, current_gradient_accumulation_steps=1,
        args=SimpleNamespace(use_bias_correction_kl=bias_kl, delta=delta, sapo_temperature_pos=1.0,
                             sapo_temperature_neg=1.05, vespo_k_pos=2.0, vespo_lambda_pos=3.0, vespo_k_neg=3.0,
                             vespo_lambda_neg=2.0, steps_per_generation=1),
    )
    inputs = {"prompt_ids": torch.zeros(B, 0, dtype=torch.long), "prompt_mask": torch.zeros(B, 0),
              "completion_ids": c["ids"], "completion_mask": c["mask"], "advantages": c["adv"],
              "old_per_token_logps": c["old"].double(), "ref_per_token_logps": c["ref"].double(),
              "num_items_in_batch": torch.tensor(float(num_items))}
    if isr is not None:
        inputs["importance_sampling_ratio"] = isr.double()
    loss = GRPOTrainer._compute_loss(stub, None, inputs)
    return loss, metrics["eval"]


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("loss_type", TRL_LOSS_TYPES)
def test_matches_trl_compute_loss(small_chunks, loss_type, level):
    trainer_mod = pytest.importorskip("trl.trainer.grpo_trainer")
    c = _case(B=3, T=13, H=32, V=300, seed=15)
    eps_high = 1.2 if loss_type == "cispo" else 0.28
    opts = dict(loss_type=loss_type, level=level, beta=0.04, eps_low=0.2, eps_high=eps_high, delta=1.5,
                bias_kl=True, isr=c["isr"], max_len=20, num_items=17)
    h64 = c["hidden"].double().requires_grad_(True)
    w64 = c["weight"].double().requires_grad_(True)
    lsm = torch.log_softmax((h64 @ w64.T + c["bias"].double()) / 0.8, -1)
    logp = lsm.gather(-1, c["ids"][..., None])[..., 0]
    entropy = -(lsm.exp() * lsm).sum(-1).detach()
    want, logged = _trl_compute_loss(trainer_mod.GRPOTrainer, logp, entropy, c, **opts)
    want.backward()

    h = c["hidden"].clone().requires_grad_(True)
    w = c["weight"].clone().requires_grad_(True)
    loss, stats = linear_grpo_loss(
        h, w, c["ids"], c["mask"], c["adv"], c["old"], c["ref"], bias=c["bias"], temperature=0.8, beta=0.04,
        eps_low=0.2, eps_high=eps_high, loss_type=loss_type, importance_sampling_level=level, delta=1.5,
        use_bias_correction_kl=True, vllm_is_ratio=c["isr"], max_completion_length=20, num_items_in_batch=17)
    loss.backward()
    lrt, grt = linear_loss_rtol(32, 300, 39), linear_grad_rtol(torch.float32, 32, 300, 39)
    assert loss.item() == pytest.approx(want.item(), rel=lrt, abs=lrt)
    assert_close_scaled(h.grad.double(), h64.grad, grt)
    assert_close_scaled(w.grad.double(), w64.grad, grt)
    names = {"kl": "kl", "entropy": "entropy", "clip_ratio_low": "clip_ratio/low_mean",
             "clip_ratio_high": "clip_ratio/high_mean", "clip_ratio_region": "clip_ratio/region_mean",
             "vespo_phi_seq_mean": "vespo/phi_seq_mean"}
    if loss_type == "cispo":
        names["clip_ratio_high"] = "cispo_clip_ratio"
    for ours, theirs in names.items():
        if theirs in logged:
            assert stats[ours].item() == pytest.approx(logged[theirs][0], rel=lrt, abs=lrt), ours


LIGER_CASES = [(lt, "token") for lt in TRL_LOSS_TYPES if lt != "luspo"] + [("grpo", "sequence"), ("dapo", "sequence")]


@pytest.mark.parametrize("loss_type, level", LIGER_CASES)
def test_matches_liger_fused_linear_grpo(small_chunks, loss_type, level):
    # Liger 0.8.5's luspo aggregates unmasked per-token losses (an older TRL); sequence-level cispo/sapo/vespo
    # are refused by Liger. Everything else must agree.
    liger = pytest.importorskip("liger_kernel.chunked_loss")
    c = _case(B=3, T=13, H=32, V=300, seed=16)
    eps_high = 1.2 if loss_type == "cispo" else 0.28
    kw = dict(beta=0.04, epsilon_low=0.2, epsilon_high=eps_high, loss_type=loss_type, max_completion_length=20,
              importance_sampling_level=level, temperature=0.8, delta=1.5, use_bias_correction_kl=True)
    mod = liger.LigerFusedLinearGRPOLoss(compiled=False, use_ref_model=True, chunk_size=1, **kw)
    hl = c["hidden"].clone().requires_grad_(True)
    wl = c["weight"].clone().requires_grad_(True)
    bl = c["bias"].clone().requires_grad_(True)
    want, _ = mod(hl, wl, c["ids"], c["mask"], c["adv"], bias=bl, ref_per_token_logps=c["ref"],
                  old_per_token_logps=c["old"], vllm_is_ratio=c["isr"], num_items_in_batch=17)
    want.backward()
    h = c["hidden"].clone().requires_grad_(True)
    w = c["weight"].clone().requires_grad_(True)
    b = c["bias"].clone().requires_grad_(True)
    loss, _ = linear_grpo_loss(
        h, w, c["ids"], c["mask"], c["adv"], c["old"], c["ref"], bias=b, temperature=0.8, beta=0.04, eps_low=0.2,
        eps_high=eps_high, loss_type=loss_type, importance_sampling_level=level, delta=1.5,
        use_bias_correction_kl=True, vllm_is_ratio=c["isr"], max_completion_length=20, num_items_in_batch=17)
    loss.backward()
    # two fp32 implementations, each within its bounds of exact
    lrt, grt = 2 * linear_loss_rtol(32, 300, 39), 2 * linear_grad_rtol(torch.float32, 32, 300, 39)
    assert loss.item() == pytest.approx(want.item(), rel=lrt, abs=lrt)
    for got, ref in ((h, hl), (w, wl), (b, bl)):
        assert_close_scaled(got.grad, ref.grad, grt)
