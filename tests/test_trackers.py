"""run.report_to: the wandb, jsonl and none trackers of RunTracker, the completion tables, the missing-wandb error.

wandb runs offline here (WANDB_MODE=offline); its scalars are read back from the run's `.wandb` file with the
reader wandb ships (`wandb leet inspect --json`) and compared with TensorBoard's event files.
"""
from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import types

import numpy as np
import pytest
from _helpers import REPO, run_cli

from semgrpo.config import ConfigError
from semgrpo.tracking import SAMPLE_COLUMNS, RunTracker, check_trackers, read_metrics, read_samples
from semgrpo.tracking import wandb_run as tracking_wandb

SAMPLES = [{"prompt": "把它译成藏文：你好", "completion": "བཀྲ་ཤིས་བདེ་ལེགས།", "reference": "བཀྲ་ཤིས་བདེ་ལེགས།", "reward": 2.5},
           {"prompt": "把它译成藏文：你好", "completion": "a | *b*\nc", "reference": "བཀྲ་ཤིས།", "reward": 0.25}]


def _scalars(step: int) -> dict[str, float]:
    """A GRPO step's keys; kl is NaN at step 2 (no reference pass) to check non-finite values too."""
    return {"reward/mean": 0.1 * step, "reward/std": 0.5 / step, "reward/semantic": 0.3 + step / 7,
            "reward/frac_zero_std_groups": 0.25, "loss": 1.0 / (step + 2), "kl": math.nan if step == 2 else step / 3,
            "clip_ratio/region": 0.0, "entropy/mean": 2.0 - step / 11, "completion/mean_length": 12.0 + step,
            "lr": 5e-7, "perf/step_seconds": 1.5 + step}


def _tensorboard(output_dir) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(output_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def _wandb_records(run_dir) -> list[dict]:
    """Every record of one offline run folder's .wandb file, through wandb's own reader."""
    proc = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_dir)],
                          capture_output=True, text=True, timeout=120, env={**_env(), "WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def _env() -> dict:
    import os

    return dict(os.environ)


def _wandb_scalars(output_dir) -> tuple[dict[str, dict[int, float]], list[dict], list]:
    """{key: {step: value}} over every wandb run folder of output_dir (oldest first), the history items that
    hold a samples table, and the run records."""
    scalars, tables, runs = {}, [], []
    for run_dir in sorted((output_dir / "wandb").glob("offline-run-*")):
        for rec in _wandb_records(run_dir):
            if rec["type"] == "run":
                runs.append(rec["run"])
            if rec["type"] != "history":
                continue
            item = rec["history"]["item"]
            if "samples._type" in item:
                tables.append({**item, "run_dir": run_dir})
            for key, value in item.items():
                if not key.startswith(("_", "samples.")):
                    assert item["_step"] not in scalars.get(key, {}), f"{key} sent twice at step {item['_step']}"
                    scalars.setdefault(key, {})[item["_step"]] = float(value)  # "NaN" / "Infinity" as well
    return scalars, tables, runs


def _assert_same(wandb_scalars, tb_scalars):
    """Every key and step equal; TensorBoard stores float32, so the wandb value is compared as float32."""
    assert sorted(wandb_scalars) == sorted(tb_scalars)
    for key, by_step in tb_scalars.items():
        assert sorted(wandb_scalars[key]) == sorted(by_step), key
        for step, value in by_step.items():
            np.testing.assert_array_equal(np.float32(wandb_scalars[key][step]), np.float32(value), err_msg=f"{key}@{step}")


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.setattr(tracking_wandb, "wandb_reachable", lambda *a, **k: pytest.fail("WANDB_MODE is set: no probe"))


# ------------------------------------------------------------------------------------ wandb == TensorBoard


def test_wandb_scalars_and_tables_equal_tensorboard(tmp_path, offline):
    out = tmp_path / "my-run"
    config = {"grpo": {"beta": 0.0, "group_size": 2}, "run": {"report_to": ["tensorboard", "wandb"]}}
    with RunTracker(out, enabled=True, total_steps=4, report_to=["tensorboard", "wandb"], config=config) as tr:
        for step in range(1, 5):
            tr.log(step, _scalars(step))
            if step % 2 == 0:
                tr.log_samples(step, SAMPLES)
        tr.summary(tau=0.25)
    tb = _tensorboard(out)
    assert math.isnan(tb["kl"][2])
    wb, tables, runs = _wandb_scalars(out)
    _assert_same(wb, tb)
    assert len(list((out / "wandb").glob("offline-run-*"))) == 1
    state = json.loads((out / "tracker_state.json").read_text())
    assert runs[0]["run_id"] == state["wandb_run_id"] and state["wandb_step"] == 4
    assert runs[0]["display_name"] == "my-run" and runs[0]["project"] == "semgrpo"
    assert runs[0]["config"]["update"]["grpo"] == {"beta": 0.0, "group_size": 2}
    # The completion tables: at steps 2 and 4, the four columns, the rows as logged.
    assert [t["_step"] for t in tables] == [2, 4]
    for t in tables:
        assert t["samples._type"] == "table-file" and t["samples.nrows"] == 2
        table = json.loads((t["run_dir"] / "files" / t["samples.path"]).read_text(encoding="utf-8"))
        assert table["columns"] == list(SAMPLE_COLUMNS)
        assert table["data"] == [[s[k] for k in SAMPLE_COLUMNS] for s in SAMPLES]
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4] and read_metrics(out)[1]["kl"] is None
    assert not (out / "samples.jsonl").exists()


def test_wandb_resume_continues_the_same_run(tmp_path, offline):
    """Steps 1-4, resume after step 2 and redo 3-4 then 5-6: TensorBoard is purged and rewritten, wandb (which
    cannot take data back) gets only 5-6 from the second session, in the same run; together they match."""
    out = tmp_path / "run"
    kw = {"enabled": True, "total_steps": 6, "report_to": ["wandb", "tensorboard"]}
    with RunTracker(out, **kw) as tr:
        for step in range(1, 5):
            tr.log(step, _scalars(step))
    with RunTracker(out, start_step=2, **kw) as tr:
        for step in range(3, 7):
            tr.log(step, _scalars(step))
    tb = _tensorboard(out)
    assert sorted(tb["loss"]) == [1, 2, 3, 4, 5, 6]
    wb, _, runs = _wandb_scalars(out)
    _assert_same(wb, tb)
    assert len(runs) == 2 and runs[0]["run_id"] == runs[1]["run_id"]  # two offline files of one run
    second = sorted((out / "wandb").glob("offline-run-*"))[1]
    steps = [r["history"]["item"]["_step"] for r in _wandb_records(second) if r["type"] == "history"]
    assert steps == [5, 6]
    # A fresh start (start_step 0) is a new wandb run.
    with RunTracker(out, **kw) as tr:
        tr.log(1, _scalars(1))
    assert json.loads((out / "tracker_state.json").read_text())["wandb_run_id"] != runs[0]["run_id"]


def test_grpo_demo_run_logs_the_same_scalars_to_wandb_and_tensorboard(demo_assets, tmp_path):
    out = tmp_path / "demo"
    proc = run_cli("train_grpo.py", f"output_dir={out}", "sft.before_grpo=false", "grpo.max_completion_length=8",
                   "model.lora.r=4", "model.lora.alpha=8", "reward.tau_samples=8", "run.sample_every=1",
                   "grpo.max_steps=2", "run.report_to=[tensorboard,wandb]", env={"WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    tb = _tensorboard(out)
    assert {"reward/mean", "entropy/mean", "loss", "kl", "perf/step_seconds"} <= set(tb)
    wb, tables, runs = _wandb_scalars(out)
    _assert_same(wb, tb)
    assert [t["_step"] for t in tables] == [1, 2]
    assert runs[0]["config"]["update"]["run"]["report_to"] == ["tensorboard", "wandb"]
    assert json.loads((out / "summary.json").read_text())["steps"] == 2


# ------------------------------------------------------------------------- wandb's start, with a fake wandb


class FakeWandb(types.ModuleType):
    """The few parts of wandb that RunTracker uses; records every init and log."""

    class Error(Exception):
        pass

    def __init__(self, fail_online: bool = False):
        super().__init__("wandb")
        self.errors = types.SimpleNamespace(Error=FakeWandb.Error)
        self.fail_online, self.inits, self.runs = fail_online, [], []
        self.Settings = dict
        self.Table = lambda columns, data: ("table", tuple(columns), [tuple(r) for r in data])

    def init(self, **kw):
        self.inits.append(kw)
        if self.fail_online and kw["mode"] is None:
            raise FakeWandb.Error("No API key configured. Use `wandb login` to log in.")
        run = types.SimpleNamespace(logged=[], summary={}, finished=False)
        run.log = lambda data, step: run.logged.append((step, dict(data)))
        run.finish = lambda: setattr(run, "finished", True)
        self.runs.append(run)
        return run


@pytest.fixture
def fake_wandb(monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    monkeypatch.delenv("WANDB_NAME", raising=False)
    return fake


def test_unreachable_host_logs_offline_and_says_how_to_sync(tmp_path, fake_wandb, monkeypatch, capsys):
    monkeypatch.setattr(tracking_wandb, "wandb_reachable", lambda *a, **k: False)
    with RunTracker(tmp_path / "r", enabled=True, total_steps=2, report_to=["wandb"], config={"seed": 1}, desc="sft"):
        pass
    (init,) = fake_wandb.inits
    assert init["mode"] == "offline" and init["dir"] == str(tmp_path / "r") and init["resume"] == "allow"
    assert init["project"] == "semgrpo" and init["name"] == "r" and init["config"] == {"seed": 1}
    assert init["job_type"] == "sft"
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "wandb" in ln]
    assert len(lines) == 1 and "not reachable" in lines[0] and f"wandb sync {tmp_path / 'r' / 'wandb'}" in lines[0]
    assert not (tmp_path / "r" / "tensorboard").exists()


def test_failed_online_start_falls_back_to_offline(tmp_path, fake_wandb, monkeypatch, capsys):
    fake_wandb.fail_online = True
    monkeypatch.setattr(tracking_wandb, "wandb_reachable", lambda *a, **k: True)
    monkeypatch.setenv("WANDB_PROJECT", "mine")
    with RunTracker(tmp_path / "r", enabled=True, total_steps=2, report_to=["wandb"]):
        pass
    assert [i["mode"] for i in fake_wandb.inits] == [None, "offline"]
    assert fake_wandb.inits[1]["project"] == "mine"
    err = capsys.readouterr().err
    assert "online start failed (No API key configured" in err and "wandb sync" in err


def test_set_wandb_mode_is_obeyed_without_a_probe(tmp_path, fake_wandb, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setattr(tracking_wandb, "wandb_reachable", lambda *a, **k: pytest.fail("probed"))
    with RunTracker(tmp_path / "r", enabled=True, total_steps=2, report_to=["wandb"]):
        pass
    assert [i["mode"] for i in fake_wandb.inits] == [None]  # None: wandb reads WANDB_MODE itself


def test_killed_session_resends_only_what_wandb_never_committed(tmp_path, fake_wandb, monkeypatch):
    """wandb commits a step's row when a later step comes: a session killed after logging step 5 leaves 1-4 in
    wandb; resumed after the step-4 checkpoint, it sends 5 and on."""
    monkeypatch.setattr(tracking_wandb, "wandb_reachable", lambda *a, **k: True)
    killed = RunTracker(tmp_path / "r", enabled=True, total_steps=8, report_to=["wandb"])
    for step in range(1, 6):
        killed.log(step, {"loss": float(step)})
        killed.log_samples(step, SAMPLES[:1])
    assert json.loads((tmp_path / "r" / "tracker_state.json").read_text())["wandb_step"] == 4
    with RunTracker(tmp_path / "r", enabled=True, total_steps=8, start_step=4, report_to=["wandb"]) as tr:
        for step in (5, 6):
            tr.log(step, {"loss": float(step)})
    first, second = fake_wandb.runs
    assert fake_wandb.inits[0]["id"] == fake_wandb.inits[1]["id"]
    assert [s for s, _ in second.logged] == [5, 6] and second.finished
    assert first.logged[1] == (1, {"samples": ("table", SAMPLE_COLUMNS, [tuple(SAMPLES[0].values())])})
    # Resumed from an older checkpoint (step 2): steps 3-6 stay as wandb has them; 7 is new.
    with RunTracker(tmp_path / "r", enabled=True, total_steps=8, start_step=2, report_to=["wandb"]) as tr:
        for step in range(3, 8):
            tr.log(step, {"loss": float(step)})
    assert [s for s, _ in fake_wandb.runs[2].logged] == [7]


def test_summary_goes_to_the_wandb_summary(tmp_path, fake_wandb, monkeypatch):
    monkeypatch.setattr(tracking_wandb, "wandb_reachable", lambda *a, **k: True)
    with RunTracker(tmp_path / "r", enabled=True, total_steps=2, report_to=["wandb"]) as tr:
        tr.log(1, {"reward/mean": 0.5})
        tr.summary(tau=None, stage="grpo")
    summary = fake_wandb.runs[0].summary
    assert summary["summary/reward_mean_last_20pct"] == 0.5 and summary["summary/stage"] == "grpo"
    assert "summary/tau" not in summary


def test_disabled_tracker_never_starts_wandb(tmp_path, fake_wandb):
    with RunTracker(tmp_path / "r", enabled=False, total_steps=2, report_to=["wandb", "jsonl"]) as tr:
        tr.log(1, {"loss": 1.0})
        tr.log_samples(1, SAMPLES)
    assert fake_wandb.inits == [] and not (tmp_path / "r").exists()


def test_wandb_reachable_probe(monkeypatch):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
        assert tracking_wandb.wandb_reachable(timeout=2.0)
    finally:
        server.close()
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")  # closed now: refused at once
    assert not tracking_wandb.wandb_reachable(timeout=2.0)


# --------------------------------------------------------------------------------------------- jsonl, none


def test_jsonl_writes_samples_and_truncates_on_resume(tmp_path):
    out = tmp_path / "run"
    with RunTracker(out, enabled=True, total_steps=6, report_to=["jsonl"]) as tr:
        for step in range(1, 5):
            tr.log(step, {"loss": float(step)})
            tr.log_samples(step, [SAMPLES[step % 2]])
        tr.log_samples(4, [])  # nothing to show: no line
    first = read_samples(out)
    assert [r["step"] for r in first] == [1, 2, 3, 4]
    assert first[0]["rows"] == [SAMPLES[1]] and first[1]["rows"] == [SAMPLES[0]]
    assert "བཀྲ་ཤིས" in (out / "samples.jsonl").read_text(encoding="utf-8")  # readable, not \u-escaped
    with RunTracker(out, enabled=True, total_steps=6, start_step=2, report_to=["jsonl"]) as tr:
        for step in range(3, 5):
            tr.log(step, {"loss": float(step)})
            tr.log_samples(step, [{**SAMPLES[step % 2], "reward": math.nan}])
    again = read_samples(out)
    assert again[:2] == first[:2] and [r["step"] for r in again] == [1, 2, 3, 4]
    assert again[2]["rows"][0]["reward"] is None  # strict JSON, as metrics.jsonl
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4]
    assert not (out / "tensorboard").exists() and not (out / "wandb").exists()
    with RunTracker(out, enabled=True, total_steps=6, report_to=["jsonl"]):
        pass  # a fresh start clears it
    assert read_samples(out) == []


def test_none_writes_only_metrics(tmp_path):
    out = tmp_path / "run"
    with RunTracker(out, enabled=True, total_steps=2, report_to=["none"]) as tr:
        tr.log(1, {"loss": 1.0})
        tr.log_samples(1, SAMPLES)
        tr.log_text(1, "note", "x")
        tr.summary()
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl", "summary.json", "tracker_state.json"]


def test_tensorboard_samples_table(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with RunTracker(tmp_path, enabled=True, total_steps=3) as tr:
        tr.log_samples(1, SAMPLES)
        tr.log_samples(2, [SAMPLES[0], {**SAMPLES[1], "prompt": "另一个"}])
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    one, two = (e.tensor_proto.string_val[0].decode() for e in acc.Tensors("samples/text_summary"))
    assert one == ("prompt: 把它译成藏文：你好\n\n| reward | completion | reference |\n|---|---|---|\n"
                   "| 2.500 | བཀྲ་ཤིས་བདེ་ལེགས། | བཀྲ་ཤིས་བདེ་ལེགས། |\n| 0.250 | a \\| \\*b\\* c | བཀྲ་ཤིས། |")
    assert two.splitlines()[0] == "| reward | prompt | completion | reference |"  # prompts differ: a column


@pytest.mark.parametrize("report_to", ["wandb", [], ["none", "jsonl"], ["jsonl", "jsonl"], ["mlflow"]])
def test_bad_report_to(tmp_path, report_to):
    with pytest.raises(ValueError, match="report_to"):
        RunTracker(tmp_path, enabled=False, total_steps=1, report_to=report_to)


@pytest.mark.parametrize("samples, match", [
    ({"prompt": "p"}, "expected a list"),
    ([{"prompt": "p", "completion": "c", "reference": "r"}], r"samples\[0\]"),
    ([{"prompt": "p", "completion": b"c", "reference": "r", "reward": 1.0}], r"samples\[0\]\['completion'\]"),
    ([{"prompt": "p", "completion": "c", "reference": "r", "reward": "high"}], "not a number"),
])
def test_log_samples_rejects_bad_rows(tmp_path, samples, match):
    with RunTracker(tmp_path, enabled=False, total_steps=1) as tr, pytest.raises(ValueError, match=match):
        tr.log_samples(1, samples)


# ---------------------------------------------------------------------------------------- missing wandb


def test_missing_wandb_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    check_trackers(["tensorboard", "jsonl"])  # not asked for: fine
    with pytest.raises(ConfigError) as info:
        check_trackers(["tensorboard", "wandb"])
    msg = str(info.value)
    assert "\n" not in msg and "run.report_to" in msg and "not installed" in msg and "pip install wandb" in msg


def test_importing_semgrpo_does_not_import_wandb():
    code = ("import sys, semgrpo.tracking, semgrpo.train, semgrpo.sft, semgrpo.cli; "
            "semgrpo.tracking.check_trackers(['tensorboard']); print(sorted(m for m in sys.modules if m.split('.')[0] == 'wandb'))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("script", ["train_grpo.py", "train_sft.py"])
def test_cli_missing_wandb_is_one_error_line(tmp_path, script):
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "wandb.py").write_text("raise ModuleNotFoundError(\"No module named 'wandb'\", name='wandb')\n")
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    pythonpath = ":".join(p for p in (str(shadow), _env().get("PYTHONPATH", "")) if p)
    proc = run_cli(script, f"output_dir={out}", "run.report_to=[tensorboard,wandb]", "grpo.max_steps=1",
                   "sft.before_grpo=false", timeout=300, env={"PYTHONPATH": pythonpath})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ": error: " in ln]
    assert len(errors) == 1 and "wandb" in errors[0] and "pip install wandb" in errors[0], proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
