"""Issue #12: evaluation keeps what it computed when the judge fails, names the checkpoint of each stage,
follows the config saved with that checkpoint, and reports damaged inputs as one-line user errors;
bin/transfer.py keeps its fine-tunes inside --output.

The CLIs run in-process (`main(argv)`) on the tiny demo policy to keep the CPU cost low.
"""
from __future__ import annotations

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from _helpers import fake_run_stage

from semgrpo.eval import cli as eval_cli
from semgrpo.eval import transfer


def _stderr_lines(err: str) -> list[str]:
    """Lines a user reads: tqdm's carriage-return redraws dropped."""
    return [line.split("\r")[-1] for line in err.splitlines() if line.split("\r")[-1].strip()]


@pytest.fixture(scope="module")
def stale_run(demo_assets, tmp_path_factory):
    """cold_start -> grpo, whose run-level config.json a later start rewrote (no cold start, other
    settings) while its checkpoint kept the config it was trained with."""
    root = tmp_path_factory.mktemp("stale")
    run, cold = root / "runs" / "demo", root / "runs" / "demo" / "cold_start"
    cold.mkdir(parents=True)
    common = (demo_assets.policy_path, demo_assets.tokenizer_path, demo_assets.dev_path, demo_assets.encoder_path)
    a1 = fake_run_stage(cold, *common, init_from="", seed=1)
    a2 = fake_run_stage(run, *common, init_from=str(cold), seed=2)
    (run / "summary.json").write_text(json.dumps({"tau": 0.1, "steps": 1}))
    for stage in (cold, run):  # checkpoints save their own config (semgrpo.checkpoint.checkpoint_config)
        shutil.copy(stage / "config.json", stage / "checkpoints" / "step-00000001" / "config.json")
    later = json.loads((run / "config.json").read_text())
    later["model"]["init_from"] = ""
    later["grpo"]["max_completion_length"] = 3
    later["data"]["task"] = "mt_bo_zh"
    (run / "config.json").write_text(json.dumps(later))
    return {"root": root, "run": run, "adapters": [a1, a2]}


# ------------------------------------------------------------------ checkpoint config and stage names


def test_settings_follow_the_checkpoint_config_not_the_rewritten_run_config(stale_run):
    args = eval_cli._parser().parse_args(["--run", str(stale_run["run"])])
    settings = eval_cli.settings_from_args(args)
    assert [sp.name for sp in settings.models] == ["base", "cold_start", "grpo"]
    assert settings.models[-1].adapters == stale_run["adapters"]
    assert settings.max_new_tokens == 8 and settings.task == "mt_zh_bo"


def test_old_checkpoints_without_config_fall_back_to_the_run_config(stale_run, tmp_path):
    run = tmp_path / "old"
    shutil.copytree(stale_run["run"], run, ignore=shutil.ignore_patterns("cold_start"))
    (run / "checkpoints" / "step-00000001" / "config.json").unlink()
    from semgrpo.lineage import run_config

    assert run_config(run)["grpo"]["max_completion_length"] == 3  # the run-level one, as before


def test_run_config_is_the_config_of_the_checkpoint_named_or_picked(tmp_path):
    """Filesystem only: two checkpoints with their own configs, a run-level one that differs from both."""
    from semgrpo.lineage import run_config

    run = tmp_path / "run"
    for step in (1, 2):
        ckpt = run / "checkpoints" / f"step-{step:08d}"
        (ckpt / "adapter").mkdir(parents=True)
        (ckpt / "adapter" / "adapter_config.json").write_text("{}")
        (ckpt / "COMPLETE").write_text("{}")
        (ckpt / "config.json").write_text(json.dumps({"model": {"path": f"base-{step}"}}))
    (run / "config.json").write_text(json.dumps({"model": {"path": "rewritten"}}))
    assert run_config(run)["model"]["path"] == "base-2"  # the newest complete checkpoint, as evaluated
    assert run_config(run / "checkpoints" / "step-00000001")["model"]["path"] == "base-1"
    assert run_config(run / "checkpoints" / "step-00000001" / "adapter")["model"]["path"] == "base-1"
    (run / "checkpoints" / "step-00000002" / "COMPLETE").unlink()  # an unfinished save is not picked
    assert run_config(run)["model"]["path"] == "base-1"


def test_run_config_saved_with_the_old_section_names_reads_under_the_new_ones(tmp_path):
    """A checkpoint config of a development snapshot before 0.1.0 (`train.*`, `eval.*`): readers see `grpo.*`, `run.*`, `tax_meter.*`."""
    from semgrpo.lineage import run_config

    ckpt = tmp_path / "run" / "checkpoints" / "step-00000001"
    ckpt.mkdir(parents=True)
    (ckpt / "COMPLETE").write_text("{}")
    (ckpt / "config.json").write_text(json.dumps({
        "model": {"path": "base"}, "grpo": {"max_completion_length": 7},
        "train": {"lr": 1e-3, "max_steps": 4, "deepspeed": "ds.json"}, "eval": {"ood_passages": "ood.txt"}}))
    cfg = run_config(tmp_path / "run")
    assert cfg["tax_meter"]["ood_passages"] == "ood.txt" and "eval" not in cfg and "train" not in cfg
    # With beta 0 the bias-corrected KL changes nothing, so an old run takes the default (config/renames.py).
    assert cfg["grpo"] == {"max_completion_length": 7, "lr": 1e-3, "max_steps": 4, "use_bias_correction_kl": True}
    assert cfg["run"] == {"deepspeed": "ds.json"}


def test_evaluation_names_each_stage_checkpoint_and_keeps_the_cold_start(stale_run, capsys):
    out = stale_run["root"] / "out"
    rc = eval_cli.main(["--run", str(stale_run["run"]), "--limit", "2", "--batch-size", "2", "--encoder", "",
                        "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err[-3000:]
    result = json.loads((out / "eval.json").read_text())
    assert list(result["models"]) == ["base", "cold_start", "grpo"] and result["complete"] is True
    assert result["settings"]["max_new_tokens"] == 8
    lines = _stderr_lines(err)
    for name, adapter in (("cold_start", stale_run["adapters"][0]), ("grpo", stale_run["adapters"][1])):
        ckpt = str(adapter.parent)
        assert ckpt.endswith("step-00000001") and result["models"][name]["checkpoint"] == ckpt
        assert sum(line.startswith(f"evaluate: {name}: checkpoint {ckpt} ") for line in lines) == 1, lines
    assert sum(line.startswith("evaluate: base: the base model ") for line in lines) == 1, lines


# -------------------------------------------------------------------- a failing judge keeps the metrics


class _Stub:
    def __init__(self, status: int, body: str):
        self.count = 0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                stub.count += 1
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()


@pytest.mark.parametrize("kind,status,body,requests", [
    ("garbage", 200, "<html>bad gateway</html>", 2 * 3),  # 2 judgements in a row, 3 attempts each
    ("500", 500, "internal error", 2 * 3),
    ("401", 401, '{"error": "invalid api key"}', 2),  # not retried
])
def test_failing_judge_leaves_metrics_and_outputs(demo_assets, tmp_path, capsys, monkeypatch, kind, status,
                                                  body, requests):
    from semgrpo.eval import judge

    monkeypatch.setattr(judge.time, "sleep", lambda s: None)  # no retry back-off in the test
    stub = _Stub(status, body)
    out = tmp_path / "out"
    try:
        rc = eval_cli.main(["--base", str(demo_assets.policy_path), "--tokenizer", str(demo_assets.tokenizer_path),
                            "--model", f"copy={demo_assets.policy_path}", "--data", str(demo_assets.dev_path),
                            "--task", "mt_zh_bo", "--limit", "5", "--max-new-tokens", "3", "--judge-url", stub.url,
                            "--judge-model", "stub", "--judge-max-failures", "2", "--output", str(out)])
    finally:
        stub.server.shutdown()
        stub.server.server_close()
    err = capsys.readouterr().err
    assert rc == eval_cli.JUDGE_FAILED == 3, err[-3000:]
    assert stub.count == requests  # the breaker stopped calling after two failed judgements
    result = json.loads((out / "eval.json").read_text())
    assert list(result["models"]) == ["base", "copy"] and result["models"]["copy"]["task"]["n"] == 5
    assert result["complete"] is True
    pair = result["judge"]["pairs"][0]
    assert (pair["a"], pair["b"]) == ("copy", "base") and "judge disabled after 2 consecutive" in pair["error"]
    assert "copy vs base" in result["judge"]["error"]
    rows = [json.loads(line) for line in (out / "outputs.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and set(rows[0]) >= {"id", "reference", "base", "copy"}
    assert (out / "eval.md").is_file()
    warnings = [line for line in _stderr_lines(err) if line.startswith("evaluate.py: ")]
    assert len(warnings) == 2 and warnings[1].startswith("evaluate.py: warning: LLM judge failed"), warnings
    assert "Traceback" not in err


def test_metrics_are_written_after_each_model(demo_assets, tmp_path, monkeypatch):
    """A failure while the second model is scored leaves the first model's metrics and outputs."""
    from semgrpo.eval import run as evaluate
    from semgrpo.eval.models import ModelSpec

    real, calls = evaluate._task_scores, []

    def flaky(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash in the second model")
        return real(*a, **kw)

    monkeypatch.setattr(evaluate, "_task_scores", flaky)
    out = tmp_path / "partial"
    settings = evaluate.EvalSettings(
        output=str(out), base=str(demo_assets.policy_path), tokenizer=str(demo_assets.tokenizer_path),
        models=[ModelSpec("base", str(demo_assets.policy_path)),
                ModelSpec("copy", str(demo_assets.policy_path), full_path=str(demo_assets.policy_path))],
        task="mt_zh_bo", data=str(demo_assets.dev_path), limit=3, max_new_tokens=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        evaluate.run_evaluation(settings)
    result = json.loads((out / "eval.json").read_text())
    assert list(result["models"]) == ["base"] and result["complete"] is False
    assert result["models"]["base"]["task"]["n"] == 3
    rows = [json.loads(line) for line in (out / "outputs.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and "base" in rows[0] and "copy" not in rows[0]
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]


# ------------------------------------------------------------------------------- damaged user inputs


@pytest.mark.parametrize("content,where", [
    ("{not json", "could not be read as JSON"),
    ("[1, 2]", 'the top level must be an object with a "data" list'),
    ('{"data": [{"title": "x"}]}', 'data[0] must be an object with a "paragraphs" list'),
    ('{"data": [{"paragraphs": [{"context": "c"}]}]}', 'data[0].paragraphs[0] must be an object'),
    ('{"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "q", "question": "?", "answers": "x"}]}]}]}',
     "data[0].paragraphs[0].qas[0].answers must be a list"),
    ('{"data": [{"paragraphs": [{"context": "c", "qas": []}]}]}', "holds no questions"),
])
def test_cmrc_file_of_the_wrong_structure(demo_assets, tmp_path, capsys, content, where):
    bad = tmp_path / "cmrc.json"
    bad.write_text(content, encoding="utf-8")
    rc = eval_cli.main(["--base", str(demo_assets.policy_path), "--tokenizer", str(demo_assets.tokenizer_path),
                        "--data", str(demo_assets.dev_path), "--task", "mt_zh_bo", "--cmrc", str(bad),
                        "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2, err[-2000:]
    last = _stderr_lines(err)[-1]
    assert last.startswith("evaluate.py: error: ") and str(bad) in last and where in last, last


@pytest.mark.parametrize("damage,file", [("weights", "adapter_model.safetensors"), ("config", "adapter_config.json")])
def test_truncated_adapter(stale_run, tmp_path, capsys, damage, file):
    run = tmp_path / "run"
    shutil.copytree(stale_run["run"], run, ignore=shutil.ignore_patterns("cold_start"))
    cfg = json.loads((run / "checkpoints" / "step-00000001" / "config.json").read_text())
    cfg["model"]["init_from"] = ""
    (run / "checkpoints" / "step-00000001" / "config.json").write_text(json.dumps(cfg))
    target = run / "checkpoints" / "step-00000001" / "adapter" / file
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    rc = eval_cli.main(["--run", str(run), "--limit", "2", "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2, err[-2000:]
    last = _stderr_lines(err)[-1]
    assert last.startswith("evaluate.py: error: ") and str(target) in last and "truncated" in last, last
    assert "Traceback" not in err and not (tmp_path / "out" / "eval.json").exists()


# ---------------------------------------------------------------------------------- transfer names


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".hidden", "/abs", "x y"])
def test_transfer_rejects_names_that_are_not_identifiers(stale_run, tmp_path, capsys, name):
    out = tmp_path / "deep" / "out"
    rc = transfer.main(["--from", f"{name}={stale_run['run']}", "--dev", "x.jsonl", "--launcher", "false",
                        "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    lines = _stderr_lines(err)
    assert len(lines) == 1 and lines[0].startswith("transfer.py: error: --from name ") \
        and "simple identifier" in lines[0], lines
    assert list(tmp_path.iterdir()) == []  # nothing written, inside --output or beside it
