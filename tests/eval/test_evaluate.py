"""bin/evaluate.py end to end on a two-stage run built from the demo policy (cold start -> GRPO adapters),
checked against an independent computation (adapters merged one after another), a loopback judge stub,
and the user errors."""
from __future__ import annotations

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _helpers import fake_run_stage as _fake_stage
from _helpers import run_cli
from _tolerance import model_rtol, sum_rtol


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
    # the adapters stacked vs merged into the weights, fp32 vs float64 softmax: the demo policy's forward chain
    rtol = model_rtol(demo_assets.policy_path / "config.json")
    assert grpo["ood"]["kl"]["mean"] == pytest.approx(np.mean(kls), rel=rtol, abs=rtol)
    assert grpo["ood"]["nll"]["p90"] == pytest.approx(np.percentile(nlls, 90), rel=rtol)

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
    (["--checkpoints", "all"], "--checkpoints all needs --run DIR"),
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


def test_evaluate_every_checkpoint_with_lengths_script_split_and_an_independent_encoder(two_stage_run, demo_assets,
                                                                                          tmp_path):
    run = shutil.copytree(two_stage_run["run"], tmp_path / "run")
    second = run / "checkpoints" / "step-00000003"  # a second checkpoint of the GRPO stage (a copy of the first)
    shutil.copytree(run / "checkpoints" / "step-00000001", second)
    out = tmp_path / "out"
    proc = run_cli("evaluate.py", "--run", str(run), "--checkpoints", "all", "--limit", "4", "--max-new-tokens", "6",
                   "--ood", str(demo_assets.ood_path), "--ood-samples", "3", "--ood-max-tokens", "16",
                   "--independent-encoder", str(demo_assets.encoder_path), "--output", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    models = json.loads((out / "eval.json").read_text())["models"]
    assert list(models) == ["base", "cold_start", "grpo@1", "grpo@3"]
    assert models["grpo@3"]["checkpoint"] == str(second)
    for name, m in models.items():
        length = m["task"]["length"]
        assert 1 <= length["mean_tokens"] <= 6 and 0.0 <= length["capped_share"] <= 1.0, name
        sim = m["task"]["similarity_independent"]
        assert -1.0 <= sim["mean"] <= 1.0 and sim["p10"] <= sim["median"] <= sim["p90"], name
        split = m["ood"]["delta_nll_split"]
        # the two parts add up to the model's ΔNLL (means of per-token sums; fp32 per token)
        assert split["script_shift"] + split["nll_renormalised"] == pytest.approx(
            m["ood"]["delta_nll"]["mean"], abs=4 * sum_rtol(torch.float32, 764) * 10), name
    assert models["base"]["ood"]["delta_nll_split"] == {"script_shift": 0.0, "nll_renormalised": 0.0}
    assert models["grpo@1"]["task"] == models["grpo@3"]["task"]  # the same adapter, the same outputs


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
    # the same weights loaded twice: the same computation, so KL 0 up to the KL's own fp32 sum and equal NLLs
    assert copy["ood"]["kl"]["p90"] == pytest.approx(0.0, abs=sum_rtol(torch.float32, 764))
    assert copy["ood"]["nll"] == pytest.approx(result["models"]["base"]["ood"]["nll"], rel=sum_rtol(torch.float32, 764))
    rows = [json.loads(line) for line in (out / "outputs.jsonl").read_text().splitlines()]
    assert all(r["base"] == r["copy"] for r in rows) and len(rows) == 3
