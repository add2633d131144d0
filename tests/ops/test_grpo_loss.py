import math

import pytest
import torch
from _ops_ref import naive_grpo_loss
from _tolerance import assert_close_scaled, grad_rtol, loss_rtol, sum_rtol

from semgrpo.ops import LOSS_TYPES, grpo_loss, grpo_loss_torch

STAT_KEYS = ("kl", "clip_ratio_low", "clip_ratio_high", "clip_ratio_region")


def _case(B=3, T=37, V=1000, dtype=torch.float32, seed=0, with_old=True, with_ref=True, adv_2d=False):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, T, V, generator=g) * 2).to(dtype)
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = (torch.rand(B, T, generator=g) > 0.2).float()
    mask[-1] = 0  # a fully masked row
    adv = torch.randn(B, T, generator=g) if adv_2d else torch.randn(B, generator=g)
    adv[0] = abs(adv[0])  # both signs present for clip stats
    exact = torch.log_softmax(logits.double(), -1).gather(-1, ids[..., None])[..., 0].float()
    old = exact + 0.4 * torch.randn(B, T, generator=g) if with_old else None
    ref = exact + 0.3 * torch.randn(B, T, generator=g) if with_ref else None
    return logits, ids, mask, adv, old, ref


def _check_against_naive(logits, ids, mask, adv, old, ref, backend, device, **kw):
    x = logits.detach().clone().to(device).requires_grad_(True)
    loss, stats = grpo_loss(x, ids.to(device), mask.to(device), adv.to(device),
                            None if old is None else old.to(device), None if ref is None else ref.to(device),
                            backend=backend, **kw)
    loss.backward()
    xr = logits.detach().double().requires_grad_(True)
    want, klm, low, high, region = naive_grpo_loss(xr, ids, mask, adv, old, ref, **kw)
    want.backward()
    V, N = logits.shape[-1], ids.numel()
    rtol = loss_rtol(V, N)  # the reference reads the same rounded logits: fp32 math is all that differs
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert loss.item() == pytest.approx(want.item(), rel=rtol, abs=rtol)
    assert_close_scaled(x.grad.cpu().double(), xr.grad, grad_rtol(logits.dtype, V, N))
    for k, v in zip(STAT_KEYS, (klm, low, high, region)):
        assert stats[k].dim() == 0 and not stats[k].requires_grad
        assert stats[k].item() == pytest.approx(v, rel=rtol, abs=rtol), k
    assert torch.isfinite(x.grad).all()
    return loss, stats, x.grad


def test_hand_computed_unclipped_and_clipped():
    logits = torch.zeros(1, 2, 2, requires_grad=True)
    ids = torch.tensor([[0, 1]])
    lp = -math.log(2.0)
    old = torch.tensor([[lp, lp - math.log(1.5)]])  # ratios 1 and 1.5
    loss, stats = grpo_loss_torch(logits, ids, torch.ones(1, 2), torch.tensor([1.0]), old, loss_type="bnpo")
    # token 0: -1*1 = -1, grad -(onehot - p) = [-.5, .5]; token 1: -min(1.5, 1.2) = -1.2, clipped -> grad 0
    hand = sum_rtol(torch.float32, 2)  # a handful of fp32 operations on exact inputs
    assert loss.item() == pytest.approx((-1.0 - 1.2) / 2, rel=hand)
    loss.backward()
    torch.testing.assert_close(logits.grad, torch.tensor([[[-0.25, 0.25], [0.0, 0.0]]]), rtol=hand, atol=hand)
    assert stats["clip_ratio_high"].item() == pytest.approx(0.5, rel=hand)
    assert stats["clip_ratio_low"].item() == 0.0 and stats["kl"].item() == 0.0


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_loss_types_vs_naive(backend_device, loss_type):
    backend, device = backend_device
    kw = dict(loss_type=loss_type, beta=0.04, eps_low=0.2, eps_high=0.28)
    if loss_type == "dr_grpo":
        kw["max_completion_length"] = 50
    if loss_type == "dapo":
        kw["num_items_in_batch"] = 123
    _check_against_naive(*_case(seed=1), backend, device, **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtypes_temperature_beta0(backend_device, dtype):
    backend, device = backend_device
    _check_against_naive(*_case(dtype=dtype, seed=2, with_ref=False), backend, device,
                         temperature=0.7, beta=0.0)


def test_no_old_per_token_adv_and_ref_stats_only(backend_device):
    backend, device = backend_device
    _, stats, _ = _check_against_naive(*_case(B=2, T=9, V=257, seed=3, with_old=False, adv_2d=True),
                                       backend, device, beta=0.0, temperature=1.3)
    assert stats["kl"].item() > 0  # ref given: KL reported even though beta == 0
    assert stats["clip_ratio_region"].item() == 0.0  # ratio == 1 without old


def test_strided_logits_and_masked_row(backend_device):
    backend, device = backend_device
    logits, ids, mask, adv, old, ref = _case(B=2, T=11, V=300, seed=4)
    P = 5
    full = torch.randn(2, P + 11, 300).to(device)
    full[:, P - 1 : -1] = logits.to(device)
    full.requires_grad_(True)
    view = full[:, P - 1 : -1]
    assert not view.is_contiguous()
    loss, _ = grpo_loss(view, ids.to(device), mask.to(device), adv.to(device), old.to(device), ref.to(device),
                        beta=0.1, backend=backend)
    loss.backward()
    x = logits.double().requires_grad_(True)
    want = naive_grpo_loss(x, ids, mask, adv, old, ref, beta=0.1)[0]
    want.backward()
    assert loss.item() == pytest.approx(want.item(), rel=loss_rtol(300, 22))
    gfull = full.grad.cpu().double()
    assert_close_scaled(gfull[:, P - 1 : -1], x.grad, grad_rtol(torch.float32, 300, 22))
    assert gfull[:, : P - 1].abs().sum() == 0 and gfull[:, -1].abs().sum() == 0
    assert gfull[-1, P - 1 : -1].abs().sum() == 0  # fully masked row: zero gradient
    # garbage (inf) in masked positions of old/ref never leaks into the loss
    old2, ref2 = old.clone(), ref.clone()
    old2[mask == 0] = float("-inf")
    ref2[mask == 0] = float("inf")
    loss2, st2 = grpo_loss(logits.to(device), ids.to(device), mask.to(device), adv.to(device), old2.to(device),
                           ref2.to(device), beta=0.1, backend=backend)
    assert torch.isfinite(loss2) and torch.isfinite(st2["kl"])
    assert loss2.item() == pytest.approx(loss.item(), rel=loss_rtol(300, 22))


def test_all_masked_is_zero_not_nan(backend_device):
    backend, device = backend_device
    x = torch.randn(2, 4, 50, device=device, requires_grad=True)
    ids = torch.zeros(2, 4, dtype=torch.long, device=device)
    for lt in LOSS_TYPES:
        loss, stats = grpo_loss(x, ids, torch.zeros(2, 4, device=device), torch.ones(2, device=device),
                                loss_type=lt, backend=backend)
        loss.backward()
        assert loss.item() == 0.0 and all(v.item() == 0.0 for v in stats.values())
        assert x.grad.abs().sum().item() == 0.0


def test_grad_output_scaling_and_inplace(backend_device):
    backend, device = backend_device
    logits, ids, mask, adv, old, ref = _case(B=2, T=5, V=130, seed=5)
    args = (ids.to(device), mask.to(device), adv.to(device), old.to(device), ref.to(device))
    x = logits.detach().clone().to(device).requires_grad_(True)
    loss, _ = grpo_loss(x, *args, beta=0.2, backend=backend)
    (3.0 * loss).backward()
    xr = logits.detach().clone().to(device).requires_grad_(True)
    lr, _ = grpo_loss_torch(xr, *args, beta=0.2)
    (3.0 * lr).backward()
    rtol = 2 * grad_rtol(torch.float32, 130, 10)  # two fp32 computations, each within grad_rtol of exact
    assert_close_scaled(x.grad, xr.grad, rtol)
    if backend == "triton":
        buf = logits.detach().clone().to(device).requires_grad_(True)
        li, _ = grpo_loss(buf, *args, beta=0.2, backend=backend, inplace_grad=True)
        li.backward()
        torch.testing.assert_close(li, loss, rtol=0, atol=0)  # the same kernel on the same values
        assert_close_scaled(buf.grad, xr.grad / 3, rtol)
        torch.testing.assert_close(buf.detach(), buf.grad, rtol=0, atol=0)  # the buffer now holds the gradient


def test_no_grad_forward_only(backend_device):
    backend, device = backend_device
    logits, ids, mask, adv, old, ref = _case(B=2, T=6, V=64, seed=6)
    with torch.no_grad():
        loss, _ = grpo_loss(logits.to(device), ids.to(device), mask.to(device), adv.to(device), old.to(device),
                            backend=backend)
    want = naive_grpo_loss(logits, ids, mask, adv, old)[0]
    assert loss.item() == pytest.approx(want.item(), rel=loss_rtol(64, 12))


def _good():
    return torch.randn(2, 3, 5), torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3), torch.ones(2)


@pytest.mark.parametrize(
    "change, err, match",
    [
        (lambda a, k: a.__setitem__(0, torch.randn(2, 3)), ValueError, "logits"),
        (lambda a, k: a.__setitem__(1, torch.zeros(2, 3)), TypeError, "completion_ids"),
        (lambda a, k: a.__setitem__(1, torch.zeros(2, 4, dtype=torch.long)), ValueError, "completion_ids"),
        (lambda a, k: a.__setitem__(2, torch.ones(3, 2)), ValueError, "completion_mask"),
        (lambda a, k: a.__setitem__(3, torch.ones(3)), ValueError, "advantages"),
        (lambda a, k: a.append(torch.zeros(2, 2)), ValueError, "old_logps"),
        (lambda a, k: k.update(loss_type="ppo"), ValueError, "loss_type"),
        (lambda a, k: k.update(beta=0.1), ValueError, "ref_logps"),
        (lambda a, k: k.update(temperature=0.0), ValueError, "temperature"),
        (lambda a, k: k.update(eps_low=1.0), ValueError, "eps_low"),
        (lambda a, k: k.update(eps_high=-0.1), ValueError, "eps_high"),
        (lambda a, k: k.update(max_completion_length=0), ValueError, "max_completion_length"),
        (lambda a, k: k.update(num_items_in_batch=0), ValueError, "num_items_in_batch"),
        (lambda a, k: k.update(loss_type="GRPO"), ValueError, "loss_type must be one of"),
        (lambda a, k: k.update(importance_sampling_level="batch"), ValueError, "importance_sampling_level"),
        (lambda a, k: k.update(delta=0.0), ValueError, "delta must be a finite number > 0"),
        (lambda a, k: k.update(delta=-1.5), ValueError, "delta"),
        (lambda a, k: k.update(delta=float("inf")), ValueError, "delta"),
        (lambda a, k: k.update(vllm_is_ratio=torch.ones(2, 2)), ValueError, "vllm_is_ratio shape"),
        (lambda a, k: k.update(vllm_is_ratio=torch.ones(3)), ValueError, "vllm_is_ratio shape"),
        (lambda a, k: k.update(vllm_is_ratio=torch.ones(2, 3, dtype=torch.long)), TypeError, "vllm_is_ratio"),
        (lambda a, k: k.update(vllm_is_ratio=torch.ones(2, 3, 1)), ValueError, "vllm_is_ratio"),
        (lambda a, k: k.update(sapo_temperature_neg=0.0), ValueError, "sapo_temperature_neg"),
        (lambda a, k: k.update(vespo_k_pos=float("nan")), ValueError, "vespo_k_pos"),
    ],
)
@pytest.mark.parametrize("fn", [grpo_loss, grpo_loss_torch], ids=["grpo_loss", "grpo_loss_torch"])
def test_bad_inputs(fn, change, err, match):
    args, kw = list(_good()), {}
    change(args, kw)
    with pytest.raises(err, match=match):
        fn(*args, **kw)


def test_dapo_falls_back_to_mask_sum():
    x, ids, m, a = _good()
    m[1, 2] = 0
    l1, _ = grpo_loss(x, ids, m, a, loss_type="dapo")
    l2, _ = grpo_loss(x, ids, m, a, loss_type="bnpo")
    l3, _ = grpo_loss(x, ids, m, a, loss_type="dapo", num_items_in_batch=torch.tensor(5.0))
    torch.testing.assert_close(l1, l2, rtol=0, atol=0)  # the same sum over the same count
    torch.testing.assert_close(l3, l2, rtol=0, atol=0)
