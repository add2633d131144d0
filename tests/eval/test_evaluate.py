"""bin/evaluate.py end to end on a two-stage run built from the demo policy (cold start -> GRPO adapters),
checked against an independent computation (adapters merged one after another), a loopback judge stub,
and the user errors."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _helpers import fake_run_stage as _fake_stage
from _helpers import run_cli


@pytest.fixture(scope="module")
def two_stage_run(demo_assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    run = root / "runs" / "demo"
    cold = run / "cold_start"
    cold.mkdir(parents=True)
    common = (demo_assets.policy_path, demo_assets.tokenizer_path, demo_assets.dev_path, demo_assets.encoder_path)
    a1 = _fake_stage(cold, *common, init_from="", seed=1)
    a2 = _fake_stage(run, *common, init_from=str(cold), seed=2, ood=str(demo_assets.ood_path))
    (run / "summary.json").write_text(json.dumps({"tau": 0.1, "steps": 1}))
    cmrc = {"data": [{"paragraphs": [
        {"context": "北京是中国的首都。上海是中国最大的城市。", "qas": [
            {"id": "Q1", "question": "中国的首都是哪里？", "answers": [{"text": "北京", "answer_start": 0}]},
            {"id": "Q2", "question": "最大的城市？", "answers": [{"text": "上海", "answer_start": 9}]}]}]}]}
    (root / "cmrc.json").write_text(json.dumps(cmrc, ensure_ascii=False), encoding="utf-8")
    return {"root": root, "run": run, "adapters": [a1, a2], "cmrc": root / "cmrc.json"}


class _Judge(BaseHTTPRequestHandler):
    """Always prefers candidate 1: with randomized order, a wins exactly when it was shown first."""

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps({"choices": [{"message": {"content": "Both fine.\nVerdict: 1"}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_evaluate_run_end_to_end(two_stage_run, demo_assets):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out = two_stage_run["root"] / "out"
    try:
        proc = run_cli("evaluate.py", "--run", str(two_stage_run["run"]), "--limit", "6", "--cmrc",
                       str(two_stage_run["cmrc"]), "--ood", str(demo_assets.ood_path), "--ood-samples", "5",
                       "--ood-max-tokens", "24", "--judge-url", f"http://127.0.0.1:{server.server_port}/v1",
                       "--judge-model", "stub", "--output", str(out), timeout=300)
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "eval.json").read_text())
    assert result["schema"] == "semgrpo.eval/1" and list(result["models"]) == ["base", "cold_start", "grpo"]
    base, grpo = result["models"]["base"], result["models"]["grpo"]
    assert grpo["adapters"] == [str(a) for a in two_stage_run["adapters"]]
    assert base["ood"]["kl"]["mean"] == 0.0 and base["ood"]["delta_nll"]["mean"] == 0.0
    assert grpo["task"]["n"] == 6 and 0.0 <= grpo["task"]["bleu"] <= 100.0
    assert all(0.0 <= grpo["task"][k] <= 100.0 for k in ("chrf", "chrf_pp", "rouge_l"))
    assert grpo["cmrc"]["total"] == 2 and 0.0 <= grpo["cmrc"]["f1"] <= 100.0

    # Independent path: both adapters merged into the base one after another, KL by hand.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from semgrpo.eval.ood import load_passages
    tok = AutoTokenizer.from_pretrained(demo_assets.tokenizer_path)
    base_model = AutoModelForCausalLM.from_pretrained(demo_assets.policy_path).eval()
    merged = AutoModelForCausalLM.from_pretrained(demo_assets.policy_path)
    for adapter in two_stage_run["adapters"]:
        merged = PeftModel.from_pretrained(merged, str(adapter)).merge_and_unload()
    merged.eval()
    kls, nlls = [], []
    with torch.no_grad():
        for text in load_passages(demo_assets.ood_path, limit=5):
            ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"][:24]])
            lb = F.log_softmax(base_model(ids).logits[0, :-1].double(), -1)
            la = F.log_softmax(merged(ids).logits[0, :-1].double(), -1)
            kls += (lb.exp() * (lb - la)).sum(-1).tolist()
            nlls += (-la.gather(-1, ids[0, 1:, None])).flatten().tolist()
    assert grpo["ood"]["tokens"] == len(kls)
    assert grpo["ood"]["kl"]["mean"] == pytest.approx(np.mean(kls), rel=1e-4)
    assert grpo["ood"]["nll"]["p90"] == pytest.approx(np.percentile(nlls, 90), rel=1e-4)

    pair = result["judge"]["pairs"][0]
    assert (pair["a"], pair["b"]) == ("grpo", "cold_start")
    assert pair["n"] == 6 and pair["errors"] == 0 and pair["wins"] + pair["losses"] == 6
    assert 0 < pair["wins"] < 6  # the stub always says "1": order was randomized per pair

    rows = [json.loads(line) for line in (out / "outputs.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and set(rows[0]) >= {"id", "reference", "base", "cold_start", "grpo"}
    report = (out / "eval.md").read_text()
    assert "| grpo |" in report and "Table 3" in report and "Appendix C" in report
    for png in ("alignment_tax.png", "ood_distributions.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    npz = np.load(out / "ood_tokens.npz")
    assert npz["grpo/kl"].shape == (len(kls),)


@pytest.mark.parametrize("args,match", [
    (["--model", "oops"], "--model 'oops' is not of the form NAME=PATH"),
    (["--model", "x=/nonexistent/dir"], "model 'x': '/nonexistent/dir' is not a directory"),
    ([], "no base model: pass --run DIR or --base PATH"),
    (["--run", "RUN", "--judge-pair", "grpo:nobody"], "--judge-pair 'grpo:nobody' must name two of the models"),
    (["--run", "RUN", "--judge-url", "http://127.0.0.1:9/v1"], "--judge-url needs --judge-model"),
    (["--run", "RUN", "--limit", "-1"], "--limit must be >= 0"),
    (["--run", "RUN", "--cmrc", "/nonexistent.json"], "--cmrc '/nonexistent.json' does not exist"),
    (["--run", "NOT_A_RUN"], "is not a run directory"),
])
def test_evaluate_user_errors(two_stage_run, args, match):
    args = [str(two_stage_run["run"]) if a == "RUN" else str(two_stage_run["root"]) if a == "NOT_A_RUN" else a
            for a in args]
    out = two_stage_run["root"] / "err_out"
    proc = run_cli("evaluate.py", *args, "--output", str(out), timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("evaluate.py: error: ") and match in lines[-1], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (out / "eval.json").exists()


def test_evaluate_full_model_directory_against_base(demo_assets, tmp_path):
    """A full-weight model directory is loaded as its own copy; the base itself as one: KL 0, same outputs."""
    out = tmp_path / "full"
    proc = run_cli("evaluate.py", "--base", str(demo_assets.policy_path), "--tokenizer",
                   str(demo_assets.tokenizer_path), "--model", f"copy={demo_assets.policy_path}", "--data",
                   str(demo_assets.dev_path), "--task", "mt_zh_bo", "--limit", "3", "--max-new-tokens", "6",
                   "--ood", str(demo_assets.ood_path), "--ood-samples", "3", "--ood-max-tokens", "16",
                   "--output", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "eval.json").read_text())
    assert list(result["models"]) == ["base", "copy"] and result["judge"] is None
    copy = result["models"]["copy"]
    assert copy["adapters"] == [] and copy["task"]["similarity"] is None  # no encoder without a run
    assert copy["ood"]["kl"]["p90"] == pytest.approx(0.0, abs=1e-6)
    assert copy["ood"]["nll"] == pytest.approx(result["models"]["base"]["ood"]["nll"], rel=1e-6)
    rows = [json.loads(line) for line in (out / "outputs.jsonl").read_text().splitlines()]
    assert all(r["base"] == r["copy"] for r in rows) and len(rows) == 3
