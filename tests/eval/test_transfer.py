"""bin/transfer.py: two MT runs fine-tuned on the same few headline samples through bin/train_sft.py, then
evaluated on the headline task (paper Table 4); the reuse of finished fine-tunes; user errors."""
from __future__ import annotations

import json

import pytest
from _helpers import fake_run_stage, run_cli

SFT = ["sft.epochs=1", "sft.lr=1e-3", "sft.max_length=128", "data.max_prompt_length=96",
       "data.max_sample_tokens=128", "model.lora.r=4", "model.lora.alpha=8", "model.dtype=fp32",
       "grpo.max_completion_length=8"]


@pytest.fixture(scope="module")
def sources(demo_assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("transfer")
    pairs = [json.loads(line) for line in demo_assets.train_path.read_text(encoding="utf-8").splitlines()]
    # A tiny Tibetan "headline" task: the text is three terms, the title the first of them.
    hg = [{"id": f"h{i}", "text": "། ".join(p["bo"] for p in pairs[i:i + 3]), "title": pairs[i]["bo"]}
          for i in range(0, 60, 3)]
    for split, rows in (("train", hg[:16]), ("dev", hg[16:])):
        (root / f"hg_{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                               encoding="utf-8")
    common = (demo_assets.policy_path, demo_assets.tokenizer_path, demo_assets.dev_path, demo_assets.encoder_path)
    for name, seed in (("mt_sft", 1), ("mt_rl", 2)):
        (root / name).mkdir()
        fake_run_stage(root / name, *common, init_from="", seed=seed)
    return root


def test_transfer_fine_tunes_each_source_and_writes_table4(sources, demo_assets):
    out = sources / "out"
    args = ["--from", f"mt_sft={sources / 'mt_sft'}", "--from", f"mt_rl={sources / 'mt_rl'}",
            "--train", str(sources / "hg_train.jsonl"), "--dev", str(sources / "hg_dev.jsonl"),
            "--samples", "16", "--output", str(out), *SFT, f"reward.encoder={demo_assets.encoder_path}"]
    proc = run_cli("transfer.py", *args, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "eval" / "eval.json").read_text())
    assert result["kind"] == "transfer" and result["task"] == "hg_bo" and result["task_metric"] == "rouge_l"
    assert list(result["models"]) == ["base", "mt_sft+hg", "mt_rl+hg"]
    for name in ("mt_sft", "mt_rl"):
        tuned = result["models"][f"{name}+hg"]
        # The source's MT adapter, then the new HG adapter trained on top of it.
        assert tuned["adapters"][0].startswith(str(sources / name)) and str(out / name) in tuned["adapters"][1]
        assert tuned["task"]["n"] == 4 and tuned["task"]["similarity"] is not None
        summary = json.loads((out / name / "summary.json").read_text())
        assert summary["samples"] == 16 and summary["stage"] == "sft"
    assert "Table 4" in (out / "eval" / "eval.md").read_text()
    assert "| mt_rl+hg |" in proc.stdout

    # Run again: both fine-tunes are reused, only the evaluation runs.
    proc = run_cli("transfer.py", *args, timeout=900)
    assert proc.returncode == 0 and proc.stderr.count("reusing the finished fine-tune") == 2, proc.stderr[-2000:]


@pytest.mark.parametrize("args,match", [
    ([], "no source: pass --from NAME=RUN_DIR"),
    (["--from", "x"], "--from 'x' is not of the form NAME=RUN_DIR"),
    (["--from", "x=/nonexistent"], "is not a training run"),
    (["--from", "base=SRC"], "source names must be unique and not 'base'"),
    (["--from", "a=SRC", "--samples", "0"], "--samples must be >= 1"),
    (["--from", "a=SRC", "sft.nope=1"], "unknown config key 'sft.nope'"),
    (["--from", "a=SRC"], "no HG test data"),
])
def test_transfer_user_errors(sources, args, match):
    args = [a.replace("SRC", str(sources / "mt_sft")) for a in args]
    proc = run_cli("transfer.py", *args, "--output", str(sources / "err"), timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("transfer.py: error: ") and match in last, proc.stderr[-2000:]
    assert not (sources / "err").exists()
