"""Reward-encoder training: InfoNCE loss, partial matches, graded diagnostic, trainer and CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from _tolerance import chain_rtol, sum_rtol

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from semgrpo.demo.assets import build_tokenizer, cldr_pairs
from semgrpo.demo.tiny_encoder import build_tiny_encoder
from semgrpo.embedder import (
    EmbedderInputError,
    contrastive_loss,
    graded_diagnostic,
    partial_match,
    read_pairs_jsonl,
    train_embedder,
)
from semgrpo.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def _load_cli():
    """bin/train_embedder.py's logic: `main(argv)` returns its exit status."""
    from types import SimpleNamespace

    from semgrpo.cli import main_embedder

    return SimpleNamespace(main=main_embedder)


@pytest.fixture(scope="module")
def pairs():
    return cldr_pairs()[::4][:64]  # a spread over categories


@pytest.fixture(scope="module")
def plain_encoder_dir(tmp_path_factory, pairs):
    """A plain HF BertModel directory (no modules.json) with the demo-style tokenizer."""
    root = tmp_path_factory.mktemp("enc")
    build_tokenizer([p["bo"] for p in pairs] + [p["zh"] for p in pairs], root / "tok", vocab_size=400)
    build_tiny_encoder(root / "tok", root / "plain", seed=0, num_layers=1)
    assert not (root / "plain" / "modules.json").exists()
    return root / "plain"


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


# ---------------------------------------------------------------- loss


def test_contrastive_loss_hand_computed():
    eye = torch.eye(2)
    # logits = I / 1: each direction's CE is log(1 + e^-1)
    hand = sum_rtol(torch.float32, 2) * 4  # 2x2 fp32 logsumexps of values <= 4 against float64 by hand
    assert contrastive_loss(eye, eye, temperature=1.0).item() == pytest.approx(math.log(1 + math.exp(-1)), abs=hand)
    tgt = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    # logits = [[1.2, 0], [1.6, 2]] at temperature 0.5
    rows = (-1.2 + math.log(math.exp(1.2) + 1)) + (-2 + math.log(math.exp(1.6) + math.exp(2)))
    cols = (-1.2 + math.log(math.exp(1.2) + math.exp(1.6))) + (-2 + math.log(1 + math.exp(2)))
    expected = 0.5 * (rows / 2 + cols / 2)
    assert contrastive_loss(eye, tgt, temperature=0.5).item() == pytest.approx(expected, abs=hand)


def test_contrastive_loss_matches_loop_reference():
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(7, 5, generator=g, dtype=torch.float64), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(7, 5, generator=g, dtype=torch.float64), dim=-1)
    t = 0.07
    ref = 0.0
    for i in range(7):
        s_row = [float(a[i] @ b[j]) / t for j in range(7)]
        s_col = [float(b[i] @ a[j]) / t for j in range(7)]
        ref += -s_row[i] + math.log(sum(math.exp(x) for x in s_row))
        ref += -s_col[i] + math.log(sum(math.exp(x) for x in s_col))
    # float64 throughout: 7-term sums of values up to 1/0.07 ~ 14
    assert contrastive_loss(a, b, temperature=t).item() == pytest.approx(ref / 14, rel=sum_rtol(torch.float64, 7) * 14)


def test_contrastive_loss_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        contrastive_loss(torch.zeros(3, 4), torch.zeros(2, 4), temperature=0.05)
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        contrastive_loss(torch.zeros(4), torch.zeros(4), temperature=0.05)


# ---------------------------------------------------------------- partial matches and diagnostic


def test_partial_match_hand_examples():
    assert partial_match("ཟླ་བ་དང་པོ", "གཟའ་ཉི་མ་") == "ཟླ་ཉི་དང་གཟའ་"
    assert partial_match("阿富汗", "中国") == "阿国汗"
    assert partial_match("日", "中国") == "日中"
    assert partial_match("red green blue", "one two") == "red two blue"


class _BagOfChars:
    """Deterministic stand-in encoder: L2-normalised character counts over a fixed alphabet."""

    training = False

    def __init__(self, alphabet):
        self.alphabet = sorted(alphabet)

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def encode(self, texts, normalize_embeddings=False, **_):
        rows = [[Counter(t)[c] for c in self.alphabet] for t in texts]
        out = torch.tensor(rows, dtype=torch.float32)
        return torch.nn.functional.normalize(out, dim=-1) if normalize_embeddings else out


def test_graded_diagnostic_hand_computed():
    pairs = [{"bo": "ཀ་ཁ་", "zh": "甲乙"}, {"bo": "ག་ང་", "zh": "丙丁"}]
    model = _BagOfChars(set("ཀཁགང་甲乙丙丁"))
    d = graded_diagnostic(model, pairs, src_field="bo", tgt_field="zh", mono_field="bo")
    # partial 'ཀ་ང་' vs 'ཀ་ཁ་': counts {ཀ1,་2,ཁ1}·{ཀ1,་2,ང1} = 5 over 6; unrelated shares only the two tshegs: 4/6
    hand = 2 * sum_rtol(torch.float32, 3)  # fp32 dot products and norms of 3 counts
    assert d["mono_partial"] == pytest.approx(5 / 6, abs=hand)
    assert d["mono_unrelated"] == pytest.approx(4 / 6, abs=hand)
    assert d["mono_graded"] == 1.0
    # Tibetan and Chinese share no characters: every cross cosine is 0, so not graded
    assert d["cross_true"] == d["cross_partial"] == d["cross_unrelated"] == 0.0
    assert d["cross_graded"] == 0.0
    with pytest.raises(EmbedderInputError, match="at least 2"):
        graded_diagnostic(model, pairs[:1], src_field="bo", tgt_field="zh")


# ---------------------------------------------------------------- JSONL


def test_read_pairs_jsonl_errors_name_file_and_line(tmp_path):
    good = {"id": "a", "bo": "ཀ", "zh": "甲"}
    with pytest.raises(EmbedderInputError, match="no such file"):
        read_pairs_jsonl(tmp_path / "missing.jsonl", fields=("bo", "zh"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(good) + "\n{oops\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"bad.jsonl:2: not valid JSON"):
        read_pairs_jsonl(bad, fields=("bo", "zh"))
    _write_jsonl(bad, [good, good, {"id": "c", "bo": "ཀ"}])
    with pytest.raises(EmbedderInputError, match=r"bad.jsonl:3: field 'zh'"):
        read_pairs_jsonl(bad, fields=("bo", "zh"))
    bad.write_text("[1, 2]\n", encoding="utf-8")
    with pytest.raises(EmbedderInputError, match=r"bad.jsonl: record 1: expected a JSON object"):  # a JSON array file
        read_pairs_jsonl(bad, fields=("bo",))
    _write_jsonl(bad, [good, good])
    assert read_pairs_jsonl(bad, fields=("bo", "zh")) == [good, good]


# ---------------------------------------------------------------- trainer


def test_train_embedder_plain_hf_dir_saves_sentence_transformer(plain_encoder_dir, pairs, tmp_path):
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "st"
    lines = []
    diag = train_embedder(
        plain_encoder_dir, pairs, src_field="bo", tgt_field="zh", output_dir=out,
        epochs=4, batch_size=16, lr=2e-3, seed=0, num_threads=1, mono_field="bo", log=lines.append,
    )
    assert diag["steps"] == 4 * (len(pairs) // 16)
    assert diag["losses"][-1] < diag["losses"][0]
    assert set(diag["after"]) >= {"cross_true", "cross_partial", "cross_unrelated", "mono_partial"}
    assert any(line.startswith("embedder: before") for line in lines)
    assert any(line.startswith("embedder: after") for line in lines)
    assert (out / "modules.json").is_file()
    model = SentenceTransformer(str(out), device="cpu", local_files_only=True)
    assert "Pooling" in [type(m).__name__ for m in model]
    emb = model.encode(["ཨཕ་ག་ནི་སྟཱན།", "阿富汗"], convert_to_tensor=True)
    assert emb.shape == (2, 128)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=sum_rtol(torch.float32, 128))  # a 128-term norm
    # the saved model reproduces the diagnostic measured in memory
    again = graded_diagnostic(model, pairs, src_field="bo", tgt_field="zh", mono_field="bo", seed=0)
    # the same fp32 model reloaded, its 128-dim cosines recomputed (threads may regroup the sums)
    assert again == pytest.approx(diag["after"], abs=2 * chain_rtol(torch.float32, 128, depth=4))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 1}, "batch_size"),
        ({"epochs": 0}, "epochs"),
        ({"lr": 0.0}, "lr"),
        ({"num_threads": 0}, "num_threads"),
        ({"src_field": "en"}, "field 'en'"),
    ],
)
def test_train_embedder_rejects_bad_options(plain_encoder_dir, pairs, tmp_path, kwargs, match):
    base = dict(src_field="bo", tgt_field="zh", output_dir=tmp_path / "o", epochs=1, batch_size=8, lr=1e-3)
    with pytest.raises(EmbedderInputError, match=match):
        train_embedder(plain_encoder_dir, pairs, **{**base, **kwargs})


def test_train_embedder_rejects_missing_model(pairs, tmp_path):
    with pytest.raises(EmbedderInputError, match="not a model directory"):
        train_embedder(tmp_path / "nope", pairs, src_field="bo", tgt_field="zh", output_dir=tmp_path / "o",
                       epochs=1, batch_size=8, lr=1e-3)


# ---------------------------------------------------------------- CLI


def _cli_args(model, data, output, *extra):
    return ["--model", str(model), "--data", str(data), "--output", str(output), "--src-field", "bo",
            "--tgt-field", "zh", "--epochs", "1", "--batch-size", "8", "--lr", "1e-3", "--threads", "1", *extra]


def _one_error_line(capsys, expected):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0] and "Traceback" not in err[0], err
    return err[0]


def test_cli_user_errors_exit_2_with_one_line(plain_encoder_dir, pairs, tmp_path, capsys):
    cli = _load_cli()
    data = _write_jsonl(tmp_path / "d.jsonl", pairs[:20])
    assert cli.main(_cli_args(plain_encoder_dir, tmp_path / "none.jsonl", tmp_path / "o")) == 2
    _one_error_line(capsys, "none.jsonl: no such file")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(pairs[0], ensure_ascii=False) + "\nnot json\n", encoding="utf-8")
    assert cli.main(_cli_args(plain_encoder_dir, bad, tmp_path / "o")) == 2
    _one_error_line(capsys, "bad.jsonl:2: not valid JSON")
    _write_jsonl(bad, [pairs[0], {"id": "x", "bo": "ཀ"}])
    assert cli.main(_cli_args(plain_encoder_dir, bad, tmp_path / "o")) == 2
    _one_error_line(capsys, "bad.jsonl:2: field 'zh'")
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    assert cli.main(_cli_args(plain_encoder_dir, data, full)) == 2
    _one_error_line(capsys, "--overwrite")
    assert cli.main(_cli_args(tmp_path / "no_model", data, tmp_path / "o")) == 2
    _one_error_line(capsys, "no_model")


def test_cli_process_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "bin" / "train_embedder.py"),
         *_cli_args(tmp_path, tmp_path / "missing.jsonl", tmp_path / "o")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith("missing.jsonl: no such file")


def test_cli_trains_and_reports(plain_encoder_dir, pairs, tmp_path, capsys):
    cli = _load_cli()
    data = _write_jsonl(tmp_path / "d.jsonl", pairs[:32])
    dev = _write_jsonl(tmp_path / "dev.jsonl", pairs[32:48])
    out = tmp_path / "out"
    assert cli.main(_cli_args(plain_encoder_dir, data, out, "--dev", str(dev))) == 0
    stdout = capsys.readouterr().out
    assert "32 training pairs, 16 dev pairs" in stdout
    assert "embedder: before cross_true=" in stdout and "embedder: after cross_true=" in stdout
    assert (out / "modules.json").is_file()
    # a second run into the now non-empty output needs --overwrite
    assert cli.main(_cli_args(plain_encoder_dir, data, out, "--epochs", "1")) == 2
    assert cli.main(_cli_args(plain_encoder_dir, data, out, "--overwrite")) == 0
