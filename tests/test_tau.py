"""semgrpo.tau: tau=auto stays in [0, 1) however the cold-start policy scores."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from _tolerance import stored_rtol
from transformers import Qwen3Config, Qwen3ForCausalLM

from semgrpo.tau import TAU_MAX, clamp_tau, measure_tau


@pytest.mark.parametrize("mean_similarity,tau", [
    (-0.37, 0.0),   # outputs further from the references than unrelated text: every sample clears tau = 0
    (-1.0, 0.0),
    (0.0, 0.0),
    (0.42, 0.42),
    (TAU_MAX, TAU_MAX),
    (1.0, TAU_MAX),  # a policy already at the reference would make 1 - tau zero
    (1.3, TAU_MAX),  # float residue above 1
])
def test_clamp_tau(mean_similarity, tau):
    assert clamp_tau(mean_similarity) == pytest.approx(tau, abs=0.0)
    assert 0.0 <= clamp_tau(mean_similarity) < 1.0


def test_clamp_tau_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        clamp_tau(math.nan)


class _Engine:
    def __init__(self, module):
        self.module, self.device = module, torch.device("cpu")

    def zero_optimization_stage(self) -> int:
        return 0


class _Tokenizer:
    pad_token_id = 0

    def batch_decode(self, ids, skip_special_tokens=True):
        return [" ".join(map(str, row.tolist())) for row in ids]


class _FixedSimilarity:
    """R_sim's `similarity` with a fixed raw cosine per sample."""

    def __init__(self, value: float):
        self.value = value

    def similarity(self, completions, references):
        return torch.full((len(completions),), self.value)


def _run_measure_tau(similarity: float) -> float:
    torch.manual_seed(0)
    policy = Qwen3ForCausalLM(Qwen3Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                          num_attention_heads=2, num_key_value_heads=1, head_dim=8, pad_token_id=0,
                                          eos_token_id=1, bos_token_id=None))
    examples = [SimpleNamespace(prompt_ids=[5 + i, 7, 9], reference=f"ref {i}") for i in range(3)]
    return measure_tau(_Engine(policy), _Tokenizer(), examples, _FixedSimilarity(similarity).similarity,
                       eos_ids=[1], gather=True, max_new_tokens=4, batch_size=0)


@pytest.mark.parametrize("similarity,tau", [(-0.4, 0.0), (0.3, 0.3), (1.0, TAU_MAX)])
def test_measure_tau_is_clamped(similarity, tau):
    assert _run_measure_tau(similarity) == pytest.approx(tau, abs=stored_rtol(torch.float32))  # a float32 mean of equal values


def test_measure_tau_without_a_similarity_is_an_error():
    with pytest.raises(ValueError, match="NaN"):
        _run_measure_tau(math.nan)
