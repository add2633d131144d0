"""Comparison tolerances from the dtype and the size of the computation, in one place, so that no bound is
tuned to one machine's result.

What differs between CPUs is the order of floating-point additions: SIMD width (SSE, AVX2, AVX-512, AMX), the
BLAS's blocking and the thread count all regroup the partial sums of a matmul or a reduction, and each
grouping rounds differently. What does not differ is how large that rounding can be:
- every operation returns the exact result times (1 + d) with |d| <= u, the dtype's unit roundoff (exp, log and
  the other library functions are within a few units in the last place: a few more operations);
- an n-term sum or dot product, accumulated in any order, is then off by at most
  gamma(n) = n u / (1 - n u) times the sum of its terms' magnitudes (Higham, "Accuracy and Stability of
  Numerical Algorithms", 2002, section 3.1; `worst_rtol`);
- when the rounding errors are independent with mean zero, as round-to-nearest makes them, by at most
  lambda sqrt(n) u times that, except with probability 2 exp(-lambda^2 / 2) (Higham and Mary, "A new approach
  to probabilistic rounding error analysis", 2019; `sum_rtol`). LAMBDA = 6 makes that 3e-8 per sum.
A chain of `depth` such steps (the matmuls of a forward and backward pass) adds their bounds (`chain_rtol`).

Each bound is relative to the magnitudes of the terms, not to the result: where the terms cancel (advantages of
both signs, a gradient summed over samples), the caller scales by those magnitudes (`assert_close_scaled`).

Comparisons of float64 or exact arithmetic (Python floats, numpy float64, counts) keep `pytest.approx`'s default
(relative 1e-6): their rounding is ~1e-16, out of reach of any machine. Two runs of the same code on the same
values compare with rtol=0: equal bit for bit.
"""
from __future__ import annotations

import math

import torch

UNIT_ROUNDOFF = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
LAMBDA = 6.0
LIBM_OPS = 4  # exp/log/log1p/tanh within ~2 ulp each: counted as a few more roundings per element


def unit_roundoff(dtype: torch.dtype) -> float:
    """u of `dtype`: half the distance from 1 to the next representable number."""
    return UNIT_ROUNDOFF[dtype]


def sum_rtol(dtype: torch.dtype, n: int) -> float:
    """Probabilistic bound on the error of an n-term sum or dot product, relative to its terms' magnitudes,
    plus a few libm roundings."""
    return (LAMBDA * math.sqrt(max(n, 1)) + LIBM_OPS) * unit_roundoff(dtype)


def chain_rtol(dtype: torch.dtype, n: int, depth: int) -> float:
    """`depth` sums of at most n terms in a row (e.g. the layers of a forward and backward pass)."""
    return depth * sum_rtol(dtype, n)


def worst_rtol(dtype: torch.dtype, n: int) -> float:
    """Worst-case bound gamma(n) of an n-term sum in any order, relative to its terms' magnitudes."""
    nu = max(n, 1) * unit_roundoff(dtype)
    assert nu < 1, f"{n} terms of {dtype}: no bound (n u >= 1)"
    return nu / (1 - nu)


def stored_rtol(dtype: torch.dtype) -> float:
    """A value computed in higher precision and stored as `dtype`: one unit in the last place (rounding to
    nearest costs half of it; the Triton interpreter's casts truncate, which costs up to all of it)."""
    return 2 * unit_roundoff(dtype)


def assert_close_scaled(got: torch.Tensor, want: torch.Tensor, rtol: float, *, msg=None) -> None:
    """Each element of `got` within `rtol` of `want`'s largest magnitude, the stand-in for the magnitude of the
    terms every element was summed from: an element bound relative to itself alone fails on entries that are
    small only because their terms cancelled."""
    want = want.detach()
    scale = want.abs().max().item() if want.numel() else 0.0
    torch.testing.assert_close(got.detach().to(want.dtype), want, rtol=rtol, atol=rtol * scale, msg=msg)


def model_rtol(config_json, *, tokens: int = 0) -> float:
    """Two fp32 computations of a forward and backward pass of the model of `config_json` (a path) that differ
    only in summation order: 2 reductions per layer (attention, MLP) and the head's 2, each of at most
    max(hidden, MLP width, vocabulary, tokens) terms."""
    import json
    from pathlib import Path

    c = json.loads(Path(config_json).read_text())
    n = max(c["hidden_size"], c.get("intermediate_size", 0), c["vocab_size"], tokens)
    return chain_rtol(torch.float32, n, depth=2 * c["num_hidden_layers"] + 2)


def loss_rtol(vocab: int, tokens: int) -> float:
    """An op that computes a GRPO loss (or log-probs, entropies) in fp32 from logits, against a float64
    reference on the same logits: a log-sum-exp over `vocab` terms per token, then a mean over `tokens`.
    The logits' own dtype does not enter: both sides read the same rounded values."""
    return sum_rtol(torch.float32, vocab) + sum_rtol(torch.float32, tokens)


def grad_rtol(dtype: torch.dtype, vocab: int, tokens: int) -> float:
    """The gradient of such a loss, computed in fp32 and stored in the logits' `dtype` (one more rounding)."""
    return loss_rtol(vocab, tokens) + stored_rtol(dtype)


def linear_loss_rtol(hidden: int, vocab: int, tokens: int) -> float:
    """`loss_rtol` for an op that computes the logits itself, hidden @ weight.T, accumulating `hidden` terms in
    fp32 (the reference multiplies the same rounded inputs in float64)."""
    return loss_rtol(vocab, tokens) + sum_rtol(torch.float32, hidden)


def linear_grad_rtol(dtype: torch.dtype, hidden: int, vocab: int, tokens: int) -> float:
    """Its gradients: back through the backward's matmuls (sums over the vocabulary or the tokens), with the
    logits' gradient rounded to the weights' `dtype` before them and the result stored in it."""
    return (linear_loss_rtol(hidden, vocab, tokens) + sum_rtol(torch.float32, max(vocab, tokens))
            + 2 * stored_rtol(dtype))
