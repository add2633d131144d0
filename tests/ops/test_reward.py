import math

import pytest
import torch
from _tolerance import sum_rtol

from semgrpo.ops import semantic_reward, semantic_reward_torch


def test_hand_computed():
    c = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [2.0, 0.0]])
    r = torch.tensor([[1.0, 1.0], [-1.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    lang = torch.tensor([True, False, True, False])
    reward, sim = semantic_reward_torch(c, r, lang, tau=0.5)
    s = 1 / math.sqrt(2)
    hand = 3 * sum_rtol(torch.float32, 2)  # 2-term dot products and norms, a few fp32 roundings
    torch.testing.assert_close(sim, torch.tensor([s, -1.0, 0.0, 1.0]), rtol=hand, atol=hand)
    want = [1.5 * (s - 0.5) / 0.5 + 1.0, 0.0, 1.0, 1.5]  # zero vector -> sim 0, no NaN
    torch.testing.assert_close(reward, torch.tensor(want), rtol=3 * hand, atol=3 * hand)  # / (1 - tau), x w_sim


def _naive(c, r, lang, tau, w_sim, w_lang):
    out, sims = [], []
    for ci, ri, li in zip(c.double(), r.double(), lang.double()):
        s = float(ci @ ri) / (max(ci.norm().item(), 1e-12) * max(ri.norm().item(), 1e-12))
        sims.append(s)
        out.append(w_sim * (0.0 if s <= tau else (s - tau) / (1 - tau)) + w_lang * float(li))
    return torch.tensor(out, dtype=torch.float64), torch.tensor(sims, dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("N, D", [(37, 1000), (5, 3)])
def test_matches_naive(backend_device, dtype, N, D):
    backend, device = backend_device
    g = torch.Generator().manual_seed(N)
    c = torch.randn(N, D, generator=g).to(dtype)
    r = (c.float() + 0.8 * torch.randn(N, D, generator=g)).to(dtype)
    lang = (torch.rand(N, generator=g) > 0.5).float()
    reward, sim = semantic_reward(c.to(device), r.to(device), lang.to(device), tau=0.3, w_sim=1.5, w_lang=0.7,
                                  backend=backend)
    want_r, want_s = _naive(c.float(), r.float(), lang, 0.3, 1.5, 0.7)
    assert reward.dtype == torch.float32 and sim.dtype == torch.float32
    # fp32 dot products and norms of D terms on the same rounded inputs; cosines are <= 1 in magnitude, and the
    # reward rescales by 1 / (1 - tau) and w_sim
    tol = sum_rtol(torch.float32, D) * 3
    torch.testing.assert_close(sim.cpu().double(), want_s, rtol=tol, atol=tol)
    torch.testing.assert_close(reward.cpu().double(), want_r, rtol=tol, atol=tol * 1.5 / (1 - 0.3))


def test_strided_input(backend_device):
    backend, device = backend_device
    base = torch.randn(8, 20)
    c, r = base[:, ::2].to(device), base[:, 1::2].to(device)
    lang = torch.ones(8, dtype=torch.bool, device=device)
    got = semantic_reward(c, r, lang, tau=-0.2, backend=backend)
    want = semantic_reward_torch(c.cpu().contiguous(), r.cpu().contiguous(), lang.cpu(), tau=-0.2)
    tol = 2 * 3 * sum_rtol(torch.float32, 10)  # two fp32 paths over 10-term dot products and norms
    torch.testing.assert_close(got[0].cpu(), want[0], rtol=tol, atol=tol)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(tau=1.0), "tau"),
        (dict(tau=-1.5), "tau"),
        (dict(tau=0.2, w_sim=float("nan")), "w_sim"),
    ],
)
def test_bad_scalars(kw, match):
    with pytest.raises(ValueError, match=match):
        semantic_reward(torch.randn(3, 4), torch.randn(3, 4), torch.ones(3), **kw)


def test_bad_shapes():
    with pytest.raises(ValueError, match="reference_emb shape"):
        semantic_reward(torch.randn(3, 4), torch.randn(3, 5), torch.ones(3), tau=0.1)
    with pytest.raises(ValueError, match="lang_ok"):
        semantic_reward(torch.randn(3, 4), torch.randn(3, 4), torch.ones(4), tau=0.1)
    with pytest.raises(TypeError, match="lang_ok"):
        semantic_reward(torch.randn(3, 4), torch.randn(3, 4), torch.ones(3, dtype=torch.long), tau=0.1)
