"""semgrpo.rollout: the rollout's sampling loop against HF's own warpers and `generate`."""
from __future__ import annotations

import pytest
import torch
from _tolerance import sum_rtol
from transformers import Qwen3Config, Qwen3ForCausalLM
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from semgrpo.data import collate_left_padded
from semgrpo.rollout import next_token_probs, sample_completions

VOCAB, PAD, EOS = 48, 0, 1


@pytest.fixture(scope="module")
def tiny_lm():
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, pad_token_id=PAD,
                      eos_token_id=EOS, bos_token_id=None)
    model = Qwen3ForCausalLM(cfg).eval()
    # Make eos likely after a few tokens so that rows end at different steps.
    with torch.no_grad():
        model.lm_head.weight[EOS] *= 3.0
    return model


def hf_probs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    scores = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return torch.softmax(scores, dim=-1)


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.8, 0.9), (0.6, 0.5), (1.3, 0.99), (0.7, 1e-6)])
def test_next_token_probs_equal_hf_warpers(temperature, top_p):
    torch.manual_seed(1)
    logits = torch.randn(6, 500) * 3
    ours = next_token_probs(logits, temperature=temperature, top_p=top_p)
    ours = ours / ours.sum(-1, keepdim=True)
    # two fp32 softmaxes over 500 logits (ours renormalised), each within its rounding of exact
    tol = 2 * sum_rtol(torch.float32, 500)
    torch.testing.assert_close(ours, hf_probs(logits, temperature, top_p), atol=tol, rtol=tol)
    # The nucleus is never empty: the most likely token always survives.
    assert bool((ours.argmax(-1) == logits.argmax(-1)).all())


@pytest.mark.parametrize("kwargs,match", [
    (dict(temperature=0.0, top_p=0.9), "temperature must be > 0"),
    (dict(temperature=1.0, top_p=0.0), "top_p must be in"),
    (dict(temperature=1.0, top_p=1.5), "top_p must be in"),
])
def test_next_token_probs_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        next_token_probs(torch.zeros(1, 4), **kwargs)


def _prompts():
    rows = [[5, 9, 13, 2], [7, 3], [11, 12, 14, 15, 16, 17], [4]]
    return collate_left_padded(rows, pad_token_id=PAD)


def test_greedy_equals_hf_generate_on_left_padded_batch(tiny_lm):
    ids, mask = _prompts()
    ours = sample_completions(tiny_lm, ids, mask, max_new_tokens=12, eos_ids=[EOS], pad_id=PAD, greedy=True)
    hf = tiny_lm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                          eos_token_id=[EOS], pad_token_id=PAD)[:, ids.shape[1]:]
    assert ours.shape[1] <= 12
    width = max(ours.shape[1], hf.shape[1])
    pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]), value=PAD)
    assert torch.equal(pad(ours), pad(hf))
    # Some row ended early and was padded after its eos, so the eos/pad path ran.
    ended = (ours == EOS).any(1)
    assert bool(ended.any())
    for row in ours[ended]:
        after = row[int((row == EOS).nonzero()[0]) + 1:]
        assert bool((after == PAD).all())


def test_sampling_with_a_tiny_nucleus_is_greedy(tiny_lm):
    ids, mask = _prompts()
    greedy = sample_completions(tiny_lm, ids, mask, max_new_tokens=8, eos_ids=[EOS], pad_id=PAD, greedy=True)
    torch.manual_seed(3)
    sampled = sample_completions(tiny_lm, ids, mask, max_new_tokens=8, eos_ids=[EOS], pad_id=PAD,
                                 temperature=0.9, top_p=1e-6)
    assert torch.equal(sampled, greedy)


def test_sampling_is_seeded_and_stops_when_every_row_has_ended(tiny_lm):
    ids, mask = _prompts()
    eos_ids = list(range(1, 9))  # several stop tokens: every row ends well before the length limit
    runs = []
    for _ in range(2):
        torch.manual_seed(4)
        runs.append(sample_completions(tiny_lm, ids, mask, max_new_tokens=40, eos_ids=eos_ids, pad_id=PAD,
                                       temperature=1.0, top_p=0.95))
    assert torch.equal(runs[0], runs[1])
    out = runs[0]
    is_eos = torch.isin(out, torch.tensor(eos_ids))
    assert out.shape[1] < 40
    assert bool(is_eos.any(1).all()) and bool(is_eos[:, -1].any())
    first_eos = is_eos.long().argmax(1)
    for row, end in zip(out, first_eos.tolist()):
        assert bool((row[end + 1:] == PAD).all())


def test_sample_completions_rejects_bad_lengths_and_settings(tiny_lm):
    ids, mask = _prompts()
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1, got 0"):
        sample_completions(tiny_lm, ids, mask, max_new_tokens=0, eos_ids=[EOS], pad_id=PAD)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        sample_completions(tiny_lm, ids, mask, max_new_tokens=4, eos_ids=[EOS], pad_id=PAD, temperature=0.0)
