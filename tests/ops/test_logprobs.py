import pytest
import torch
from _ops_ref import naive_logps
from _tolerance import loss_rtol, sum_rtol

from semgrpo.ops import logprobs as logprobs_mod
from semgrpo.ops import token_logprobs, token_logprobs_torch


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("temperature", [1.0, 0.8])
def test_matches_full_log_softmax(backend_device, dtype, temperature):
    backend, device = backend_device
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 37, 1000, generator=g) * 3).to(dtype)
    ids = torch.randint(0, 1000, (2, 37), generator=g)
    got = token_logprobs(logits.to(device), ids.to(device), temperature=temperature, backend=backend)
    assert got.dtype == torch.float32 and got.shape == (2, 37)
    # reference on the same (rounded) low-precision values, in float64: fp32 math per token, relative to the
    # magnitudes it sums (|logits| / temperature up to ~15 here)
    tol = loss_rtol(1000, 1) * 15
    torch.testing.assert_close(got.cpu().double(), naive_logps(logits, ids, temperature), rtol=tol, atol=tol)


def test_strided_view_and_small_chunks(backend_device, monkeypatch):
    backend, device = backend_device
    monkeypatch.setattr(logprobs_mod, "_CHUNK_ELEMS", 64)  # many chunks on the torch path
    full = torch.randn(3, 20, 33)
    ids = torch.randint(0, 33, (3, 15))
    view = full.to(device)[:, 4:-1]
    assert not view.is_contiguous()
    got = token_logprobs(view, ids.to(device), backend=backend)
    tol = loss_rtol(33, 1) * 5  # per token; randn logits: |values| up to ~5
    torch.testing.assert_close(got.cpu().double(), naive_logps(full[:, 4:-1], ids), rtol=tol, atol=tol)


def test_hand_computed():
    logits = torch.log(torch.tensor([[[1.0, 3.0]]]))  # softmax = [.25, .75]
    got = token_logprobs_torch(logits, torch.tensor([[1]]))
    hand = sum_rtol(torch.float32, 2)  # a few fp32 operations on exact inputs
    torch.testing.assert_close(got, torch.log(torch.tensor([[0.75]])), rtol=hand, atol=hand)


def test_bad_inputs():
    x = torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match="ids shape"):
        token_logprobs(x, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="ids"):
        token_logprobs(x, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(x, torch.zeros(2, 3, dtype=torch.long), temperature=-1.0)
    with pytest.raises(ValueError, match="dims"):
        token_logprobs(torch.randn(6, 5), torch.zeros(6, dtype=torch.long))
