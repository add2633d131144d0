"""Reward and advantage math against hand-computed values (paper eq. 1-4), zero-variance groups included."""
import math

import pytest
import torch
from _tolerance import sum_rtol

from semgrpo.config import ConfigError, RewardConfig
from semgrpo.ops import group_advantages, zero_std_groups
from semgrpo.rewards import (
    LanguageConsistency,
    LengthConstraint,
    SemanticSimilarity,
    SentenceBLEU,
    build_reward_functions,
    score,
)
from semgrpo.script.text import tibetan_syllables


class TableEncoder:
    """A stand-in sentence encoder: a fixed vector per text, so cosines are known by hand."""

    def __init__(self, table):
        self.table = table

    def encode(self, texts, **_):
        return torch.tensor([self.table[t] for t in texts], dtype=torch.float32)


ENC = TableEncoder({
    "ref": [1.0, 0.0], "same": [2.0, 0.0], "orth": [0.0, 3.0],
    "sixty": [0.6, 0.8],  # cos with ref = 0.6
    "ninety": [0.9, math.sqrt(1 - 0.81)],  # cos = 0.9
    "": [0.7, 0.7],
})


def test_semantic_threshold_and_rescale_by_hand():
    fn = SemanticSimilarity(ENC, tau=0.5)
    out = fn(["p"] * 5, ["same", "orth", "sixty", "ninety", ""], ["ref"] * 5)
    # (s - tau) / (1 - tau): 1 -> 1, 0 -> 0 (below tau), .6 -> .2, .9 -> .8; empty completion -> s = 0 -> 0
    assert out == pytest.approx([1.0, 0.0, 0.2, 0.8, 0.0], abs=1e-6)


def test_semantic_needs_tau():
    with pytest.raises(RuntimeError, match="tau"):
        SemanticSimilarity(ENC)(["p"], ["same"], ["ref"])


def test_language_consistency_tibetan_and_han():
    bo = LanguageConsistency("tibetan")
    assert bo(None, ["བོད་ཡིག་", "བོད་ཡིག中文", "中文", "", "123 ..."], None) == [1.0, 0.0, 0.0, 0.0, 0.0]
    zh = LanguageConsistency("han")
    assert zh(None, ["中文。", "中文abc"], None) == [1.0, 0.0]


def test_weighted_sum_paper_weights():
    fns = {"semantic": SemanticSimilarity(ENC, tau=0.5), "language": LanguageConsistency("tibetan")}
    total, per_fn = score(fns, {"semantic": 1.5, "language": 1.0}, ["p", "p"], ["ninety", "same"], ["ref", "ref"])
    # "ninety"/"same" are Latin letters -> R_lang 0; R = 1.5 * R_sim
    assert per_fn["language"].tolist() == [0.0, 0.0]
    assert total.tolist() == pytest.approx([1.5 * 0.8, 1.5 * 1.0], abs=1e-6)


def test_none_becomes_nan_and_is_ignored_in_the_sum():
    fns = {"a": lambda p, c, r: [1.0, None, None], "b": lambda p, c, r: [2.0, 3.0, None]}
    total, per_fn = score(fns, {"a": 1.0, "b": 0.5}, [""] * 3, ["x"] * 3, ["y"] * 3)
    assert torch.isnan(per_fn["a"][1])
    assert total[:2].tolist() == pytest.approx([1.0 + 1.0, 1.5])
    assert torch.isnan(total[2])  # every component None -> NaN -> advantage 0


def test_reward_function_with_wrong_length_is_an_error():
    with pytest.raises(ValueError, match="returned 1 values for 2"):
        score({"bad": lambda p, c, r: [1.0]}, {}, ["", ""], ["a", "b"], ["a", "b"])


def test_bleu_and_length_components():
    bleu = SentenceBLEU("tibetan")
    same = "བོད་ཡིག་ནི་ཡག་པོ་རེད།"
    assert bleu(None, [same, "ཁ་ལག"], [same, same]) == pytest.approx([1.0, 0.0], abs=1e-6)
    assert tibetan_syllables(same) == ["བོད", "ཡིག", "ནི", "ཡག", "པོ", "རེད"]
    length = LengthConstraint(0.5, 2.0)
    assert length(None, ["aaaa", "a", "aaaaaaaaa"], ["aaaa"] * 3) == [1.0, 0.0, 0.0]


def test_build_reward_functions_respects_config():
    cfg = RewardConfig(functions=["semantic", "language", "length"], tau=0.3)
    fns = build_reward_functions(cfg, encoder=ENC, script="tibetan")
    assert list(fns) == ["semantic", "language", "length"] and fns["semantic"].tau == 0.3
    with pytest.raises(ConfigError, match="encoder"):
        build_reward_functions(RewardConfig(), encoder=None, script="tibetan")


def test_group_advantages_by_hand_with_zero_variance_and_nan():
    r = torch.tensor([1.0, 2.0, 3.0,   # mean 2, unbiased std 1
                      0.5, 0.5, 0.5,   # all equal: no signal
                      4.0, float("nan"), 0.0])  # NaN ignored: mean 2, std sqrt(8)
    adv, std = group_advantages(r, 3, eps=0.0, return_group_std=True)
    s = math.sqrt(8.0)
    assert adv.tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 2 / s, 0.0, -2 / s], abs=1e-6)
    assert std.tolist() == pytest.approx([1.0, 0.0, s], abs=1e-6)
    assert zero_std_groups(r, 3).tolist() == [False, True, False]


def test_near_equal_rewards_are_not_inflated():
    # fp32 residue: values that differ only in the last bits are a real (tiny) difference, but a group of
    # exactly equal values must give exactly 0, never (r - mean) / (1e-8 + eps) blow-ups.
    r = torch.full((8,), 0.1, dtype=torch.float32) * 3
    assert group_advantages(r, 8).abs().max().item() == 0.0


class CountingEncoder:
    """Wraps an encoder and records every list of texts it is asked to encode."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def encode(self, texts, **kw):
        self.calls.append(list(texts))
        return self.inner.encode(texts, **kw)


def _cosine(a, b) -> float:
    a, b = torch.tensor(a), torch.tensor(b)
    return float(a @ b / (a.norm() * b.norm()))


def test_semantic_encodes_each_distinct_reference_once():
    # Two GRPO groups of G = 4: each reference repeats 4 times, and a group's completions may repeat too.
    refs = ["ref"] * 4 + ["sixty"] * 4
    comps = ["same", "orth", "sixty", "", "ninety", "ref", "ninety", "same"]
    enc = CountingEncoder(ENC)
    out = SemanticSimilarity(enc, tau=0.25)(["p"] * 8, comps, refs)
    encoded = [t for call in enc.calls for t in call]
    assert sorted(encoded) == sorted(comps + ["ref", "sixty"]), f"{len(encoded)} texts encoded: {encoded}"
    # Same values as encoding every reference on its own row (the former behaviour), by hand.
    s = [0.0 if not c else _cosine(ENC.table[c], ENC.table[r]) for c, r in zip(comps, refs)]
    assert out == pytest.approx([max(0.0, (x - 0.25) / 0.75) for x in s], abs=1e-6)


def test_semantic_dedup_keeps_a_real_encoder_results(demo_assets):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(demo_assets.encoder_path), device="cpu", local_files_only=True)
    refs = [r for r in ("བོད་ཡིག་ནི་ཡག་པོ་རེད།", "ཁ་ལག", "ཆུ་") for _ in range(4)]
    comps = ["བོད་ཡིག་", "ཁ་ལག", "", "ཆུ་", "བོད་ཡིག་ནི་ཡག་པོ་རེད།", "ཁ", "ལག", "ཆུ་", "ཁ་ལག", "ཆུ", "བོད", "ཁ་ལག་"]
    enc = CountingEncoder(st)
    got = SemanticSimilarity(enc, batch_size=5).similarity(comps, refs)
    assert sum(len(call) for call in enc.calls) == len(comps) + 3
    # The former behaviour: one row per sample, references repeated.
    c = st.encode(comps, batch_size=5, convert_to_tensor=True)
    r = st.encode(refs, batch_size=5, convert_to_tensor=True)
    want = torch.nn.functional.cosine_similarity(c, r, dim=-1).masked_fill(torch.tensor([not x for x in comps]), 0.0)
    # The same fp32 embeddings, cosine computed two ways (one dot product over the hidden size each).
    torch.testing.assert_close(got, want, atol=sum_rtol(torch.float32, c.shape[-1]), rtol=0)
