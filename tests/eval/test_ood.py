"""semgrpo.eval.ood and semgrpo.eval.tax_meter: passage loading (every format and its errors), windows, and the
per-token drift against a direct torch computation."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _tolerance import sum_rtol

from semgrpo.config import Config, ConfigError
from semgrpo.eval.ood import (
    OODError,
    drift_of_models,
    drift_per_token,
    encode_windows,
    load_passages,
    pad_windows,
    script_token_mask,
)
from semgrpo.eval.tax_meter import TaxMeter


def test_load_passages_cmrc_json_dedups_contexts(tmp_path):
    data = {"data": [{"paragraphs": [{"context": "甲乙", "qas": []}, {"context": "甲乙", "qas": []}]},
                     {"paragraphs": [{"context": " 丙丁 ", "qas": []}]}]}
    path = tmp_path / "cmrc.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    assert load_passages(path) == ["甲乙", "丙丁"]
    assert load_passages(path, limit=1) == ["甲乙"]


def test_load_passages_jsonl_and_text(tmp_path):
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"text": "a b"}\n\n{"context": "c"}\n', encoding="utf-8")
    assert load_passages(jl) == ["a b", "c"]
    txt = tmp_path / "p.txt"
    txt.write_text("one\n\n two \n", encoding="utf-8")
    assert load_passages(txt) == ["one", "two"]


@pytest.mark.parametrize("name,content,match", [
    ("bad.json", "{not json", r"bad\.json: not valid JSON \(line 1"),
    ("shape.json", '{"data": [{"title": "x"}]}', "data\\[\\].paragraphs\\[\\].context"),
    ("bad.jsonl", '{"text": "ok"}\n{oops\n', r"bad\.jsonl:2: not valid JSON"),
    ("field.jsonl", '{"body": "x"}\n', r"field\.jsonl:1: expected an object with a string 'text'"),
    ("empty.txt", "\n  \n", "holds no passage"),
])
def test_load_passages_bad_input(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(OODError, match=match):
        load_passages(path)


def test_load_passages_missing_file(tmp_path):
    with pytest.raises(OODError, match="not found"):
        load_passages(tmp_path / "nope.json")


class _CharTokenizer:
    """One id per character (ord % 50), enough to test windowing."""

    pad_token_id = 0

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[1 + ord(c) % 50 for c in t] for t in texts]}


def test_encode_windows_truncates_and_drops_short():
    windows = encode_windows(_CharTokenizer(), ["abcdef", "x", "abc"], max_tokens=4)
    assert [len(w) for w in windows] == [4, 3]
    with pytest.raises(OODError, match="2 or more tokens"):
        encode_windows(_CharTokenizer(), ["x"], max_tokens=4)
    with pytest.raises(ValueError, match="max_tokens must be >= 2"):
        encode_windows(_CharTokenizer(), ["abc"], max_tokens=1)


def _linear_lm(vocab, seed):
    """A toy causal LM: logits at t depend on tokens <= t (embedding + cumulative mean)."""
    g = torch.Generator().manual_seed(seed)
    emb, out = torch.randn(vocab, 8, generator=g), torch.randn(8, vocab, generator=g)

    def logits(ids, mask):
        h = emb[ids] * mask[..., None]
        h = h.cumsum(1) / mask.cumsum(1).clamp(min=1)[..., None]
        return h @ out
    return logits


def test_drift_per_token_matches_direct_torch():
    windows = [[3, 5, 7, 9, 2], [4, 4, 1], [8, 6, 5, 3]]
    adapted, base = _linear_lm(12, 0), _linear_lm(12, 1)
    got = drift_per_token(adapted, base, windows, pad_id=0, batch_size=2)
    nll_a, nll_b, kl = [], [], []
    for w in windows:  # one passage at a time, no padding: an independent path
        ids = torch.tensor([w])
        la = F.log_softmax(adapted(ids, torch.ones_like(ids))[0, :-1].double(), -1)
        lb = F.log_softmax(base(ids, torch.ones_like(ids))[0, :-1].double(), -1)
        tgt = ids[0, 1:, None]
        nll_a += (-la.gather(-1, tgt)).flatten().tolist()
        nll_b += (-lb.gather(-1, tgt)).flatten().tolist()
        kl += (lb.exp() * (lb - la)).sum(-1).tolist()
    assert len(got["kl"]) == sum(len(w) - 1 for w in windows)
    # fp32 log-softmax over 12 logits of magnitude < ~10 against float64: absolute, relative to those magnitudes
    tol = sum_rtol(torch.float32, 12) * 10
    np.testing.assert_allclose(got["nll_adapted"], nll_a, rtol=tol, atol=tol)
    np.testing.assert_allclose(got["nll_base"], nll_b, rtol=tol, atol=tol)
    np.testing.assert_allclose(got["kl"], kl, rtol=tol, atol=tol)
    np.testing.assert_allclose(got["delta_nll"], np.array(nll_a) - np.array(nll_b), rtol=tol, atol=2 * tol)


def test_drift_of_models_reads_the_base_once_per_batch_and_splits_the_script_mass():
    windows = [[3, 5, 7, 9, 2], [4, 4, 1], [8, 6, 5, 3]]
    base_lm, calls = _linear_lm(12, 1), []
    base = lambda ids, mask: calls.append(ids.shape) or base_lm(ids, mask)
    models = {"a": _linear_lm(12, 0), "b": _linear_lm(12, 2)}
    script = torch.zeros(12, dtype=torch.bool)
    script[[2, 5, 9]] = True  # the "taught script's" tokens
    got = drift_of_models(models, base, windows, pad_id=0, batch_size=2, script_mask=script)
    assert len(calls) == 2  # one base forward per batch of windows, whatever the number of models
    tol = sum_rtol(torch.float32, 12) * 10  # as above
    for name, fn in models.items():
        alone = drift_per_token(fn, base_lm, windows, pad_id=0, batch_size=2)
        for key in ("nll_base", "nll_adapted", "kl"):
            np.testing.assert_array_equal(got[name][key], alone[key])  # the same computation
        # the split adds up exactly, and the shift is -log(1 - p(script tokens)) computed in float64 by hand
        np.testing.assert_allclose(got[name]["nll_renormalised"] + got[name]["script_shift"], got[name]["nll_adapted"],
                                   rtol=0, atol=1e-12)
        shift = []
        for w in windows:
            ids = torch.tensor([w])
            p = F.softmax(fn(ids, torch.ones_like(ids))[0, :-1].double(), -1)
            shift += (-torch.log1p(-p[:, script].sum(-1))).tolist()
        np.testing.assert_allclose(got[name]["script_shift"], shift, rtol=tol, atol=tol)


def test_script_token_mask_marks_tokens_holding_a_letter_of_the_script():
    class Tok:
        vocab = ["<pad>", "ཀ", "་", "甲", "ཀ་", "a", "ཁ甲"]

        def __len__(self):
            return len(self.vocab)

        def decode(self, ids):
            return "".join(self.vocab[i] for i in ids)

    # a tsheg alone is neutral, not Tibetan; a token mixing a Tibetan letter with Han still holds one
    assert script_token_mask(Tok(), "tibetan").tolist() == [False, True, False, False, True, False, True]


def test_pad_windows_right_pads():
    ids, mask = pad_windows([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


class _PeftLike(torch.nn.Module):
    """Stands in for a PeftModel: `disable_adapter()` switches to the base logits."""

    def __init__(self, vocab=12):
        super().__init__()
        self.adapted, self.base, self.off = _linear_lm(vocab, 0), _linear_lm(vocab, 1), False

    def disable_adapter(self):
        outer = self

        class _Off:
            def __enter__(self):
                outer.off = True

            def __exit__(self, *exc):
                outer.off = False
        return _Off()

    def forward(self, input_ids, attention_mask, use_cache=False):
        fn = self.base if self.off else self.adapted
        return SimpleNamespace(logits=fn(input_ids, attention_mask))


def test_tax_meter_equals_drift_summary(tmp_path):
    passages = tmp_path / "ood.txt"
    passages.write_text("abcdefg\nhij\nklmnopqrs\n", encoding="utf-8")
    cfg = Config()
    cfg.tax_meter.every_steps, cfg.tax_meter.ood_passages, cfg.tax_meter.ood_max_tokens, cfg.tax_meter.batch_size = 1, str(passages), 6, 2
    tok = _CharTokenizer()
    meter = TaxMeter(cfg, tok)
    model = _PeftLike(vocab=51)
    out = meter.measure(SimpleNamespace(module=model, device=torch.device("cpu")))
    windows = encode_windows(tok, load_passages(passages), max_tokens=6)
    ref = drift_per_token(model.adapted, model.base, windows, pad_id=0)
    # the same per-token values (the meter splits the windows over batches its own way), then fp32 means
    tol = 2 * sum_rtol(torch.float32, len(ref["kl"])) * 10
    assert out["tax/nll_mean"] == pytest.approx(ref["nll_adapted"].mean(), rel=tol)
    assert out["tax/nll_p90"] == pytest.approx(np.percentile(ref["nll_adapted"], 90), rel=tol)
    assert out["tax/kl_mean"] == pytest.approx(ref["kl"].mean(), rel=tol, abs=tol)
    assert out["tax/kl_p90"] == pytest.approx(np.percentile(ref["kl"], 90), rel=tol, abs=tol)
    assert out["tax/delta_nll_mean"] == pytest.approx(ref["delta_nll"].mean(), rel=tol, abs=tol)


def test_tax_meter_bad_config(tmp_path):
    cfg = Config()
    cfg.tax_meter.every_steps = 5
    with pytest.raises(ConfigError, match="needs tax_meter.ood_passages"):
        TaxMeter(cfg, _CharTokenizer())
    cfg.tax_meter.ood_passages = str(tmp_path / "missing.txt")
    with pytest.raises(ConfigError, match="tax_meter.ood_passages: OOD passage file not found"):
        TaxMeter(cfg, _CharTokenizer())
    cfg.model.lora.enabled = False
    with pytest.raises(ConfigError, match="needs model.lora.enabled"):
        TaxMeter(cfg, _CharTokenizer())
