import math

import pytest
import torch
from _ops_ref import naive_advantages
from _tolerance import sum_rtol

from semgrpo.ops import group_advantages, group_advantages_torch, zero_std_groups

NAN = float("nan")


def test_hand_computed_g3():
    r = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0, NAN, 0.0, 2.0, NAN, 4.0, NAN])
    adv, std = group_advantages_torch(r, 3, eps=1e-4, return_group_std=True)
    s2 = math.sqrt(2.0)
    want = [-1 / 1.0001, 0.0, 1 / 1.0001, 0, 0, 0, 0, -1 / (s2 + 1e-4), 1 / (s2 + 1e-4), 0, 0, 0]
    hand = sum_rtol(torch.float32, 3)  # a 3-term mean and std, one division: a few fp32 roundings
    torch.testing.assert_close(adv, torch.tensor(want), rtol=hand, atol=hand)
    torch.testing.assert_close(std, torch.tensor([1.0, 0.0, s2, 0.0]), rtol=hand, atol=hand)
    assert zero_std_groups(r, 3).tolist() == [False, True, False, True]


@pytest.mark.parametrize("G", [1, 3, 8, 16])
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_matches_naive(backend_device, G, scale):
    backend, device = backend_device
    g = torch.Generator().manual_seed(G)
    r = torch.randn(7 * G, generator=g)
    r[::5] = NAN
    r[:G] = 0.25  # an all-equal group
    got = group_advantages(r.to(device), G, scale=scale, backend=backend)
    assert got.dtype == torch.float32 and got.shape == r.shape
    # fp32 means and stds over G (or the whole batch of 7 G) rewards, then a division; |advantages| <~ 3
    tol = 3 * sum_rtol(torch.float32, 7 * G) * 3
    torch.testing.assert_close(got.cpu().double(), naive_advantages(r, G, scale), rtol=tol, atol=tol)


def test_equal_rewards_exactly_zero_no_residue(backend_device):
    backend, device = backend_device
    # 0.1 is not representable: a std computed in fp32 leaves residue ~1e-9 that /eps would inflate
    r = torch.full((4 * 8,), 0.1, dtype=torch.float32)
    r[8:16] = 1e6 + 0.1
    adv, std = group_advantages(r.to(device), 8, eps=1e-8, return_group_std=True, backend=backend)
    assert torch.count_nonzero(adv).item() == 0
    assert torch.count_nonzero(std).item() == 0


def test_bf16_input_and_std(backend_device):
    backend, device = backend_device
    r = torch.tensor([0.0, 1.0, 0.5, 2.0, 1.0, 3.0], dtype=torch.bfloat16)
    adv, std = group_advantages(r.to(device), 3, return_group_std=True, backend=backend)
    ref_adv, ref_std = group_advantages_torch(r.float(), 3, return_group_std=True)
    tol = 2 * 3 * sum_rtol(torch.float32, 3)  # two fp32 paths: 3-term means and stds, a division; |adv| < 3
    torch.testing.assert_close(adv.cpu(), ref_adv, rtol=tol, atol=tol)
    torch.testing.assert_close(std.cpu(), ref_std, rtol=tol, atol=tol)


@pytest.mark.parametrize(
    "kwargs, err",
    [
        (dict(group_size=4), ValueError),  # 6 not divisible by 4
        (dict(group_size=0), ValueError),
        (dict(group_size=3, scale="seq"), ValueError),
        (dict(group_size=3, eps=-1.0), ValueError),
    ],
)
def test_bad_inputs(kwargs, err):
    with pytest.raises(err, match="group_size|scale|eps"):
        group_advantages(torch.zeros(6), **kwargs)


def test_bad_tensor():
    with pytest.raises(TypeError, match="floating"):
        group_advantages(torch.zeros(6, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="dims"):
        group_advantages(torch.zeros(2, 3), 3)
    with pytest.raises(ValueError, match="backend"):
        group_advantages(torch.zeros(6), 3, backend="cuda")
