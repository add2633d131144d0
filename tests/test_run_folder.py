"""The run folder: output_dir checks, the lock, fresh/overwrite/resume, and what a resume may change.

Unit tests of semgrpo/run_folder.py first (fast), then a few runs of the entry points as a user does,
sharing one short finished run.
"""
import fcntl
import json
import os
import shutil
from pathlib import Path

import pytest
from _helpers import run_cli

from semgrpo import run_folder as rf
from semgrpo.config import Config, ConfigError, to_dict


def _ckpt(run_dir: Path, step: int, cfg: dict | None) -> Path:
    """A complete-looking checkpoint directory, with the config it was saved with."""
    path = run_dir / "checkpoints" / f"step-{step:08d}"
    path.mkdir(parents=True)
    (path / "COMPLETE").write_text("{}")
    if cfg is not None:
        (path / "config.json").write_text(json.dumps(cfg))
    return path


def _cfg(out, **changes) -> Config:
    cfg = Config()
    cfg.output_dir = str(out)
    for dotted, value in changes.items():
        obj = cfg
        *parents, leaf = dotted.split("__")
        for p in parents:
            obj = getattr(obj, p)
        setattr(obj, leaf, value)
    return cfg


# ------------------------------------------------------------------------------------------ unit


def test_output_dir_must_be_a_usable_folder(tmp_path, monkeypatch):
    for empty in ("", "  "):
        with pytest.raises(ConfigError, match="output_dir is empty"):
            rf.check_output_dir(empty)
    a_file = tmp_path / "f.txt"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        rf.check_output_dir(str(a_file))
    with pytest.raises(ConfigError, match="lies under .* which is a file"):
        rf.check_output_dir(str(a_file / "run" / "deeper"))
    assert rf.check_output_dir(str(tmp_path / "new" / "run")) == tmp_path / "new" / "run"
    monkeypatch.setattr(rf.os, "access", lambda path, mode: False)  # root ignores permission bits
    with pytest.raises(ConfigError, match="not writable"):
        rf.check_output_dir(str(tmp_path / "new" / "run"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]  # nothing was created


def test_the_folders_and_files_a_run_writes_must_be_writable(tmp_path, monkeypatch):
    """Checked before the model loads: a tracker that cannot write used to fail after it (issue 27)."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "tensorboard").write_text("not a folder")
    with pytest.raises(ConfigError, match=r"run/tensorboard' is a file, but the run writes its TensorBoard events"):
        rf.plan(_cfg(out), stage="grpo")
    rf.plan(_cfg(out, run__report_to=["jsonl"]), stage="grpo")  # no TensorBoard: the file is no concern
    (out / "tensorboard").unlink()
    (out / "tensorboard").mkdir()
    real_access = os.access
    monkeypatch.setattr(rf.os, "access", lambda path, mode: Path(path).name != "tensorboard" and real_access(path, mode))
    with pytest.raises(ConfigError, match=r"run/tensorboard' is not writable, and the run writes its TensorBoard"):
        rf.plan(_cfg(out), stage="grpo")
    monkeypatch.setattr(rf.os, "access", real_access)
    (out / "metrics.jsonl").mkdir()
    with pytest.raises(ConfigError, match=r"run/metrics.jsonl' is a folder, but the run writes a file of that name"):
        rf.plan(_cfg(out), stage="grpo")
    (out / "metrics.jsonl").rmdir()
    assert rf.plan(_cfg(out), stage="grpo").mode == "fresh"
    assert sorted(p.name for p in out.iterdir()) == ["tensorboard"]  # the checks wrote nothing


def test_fresh_start_into_a_run_with_checkpoints_needs_overwrite(tmp_path):
    _ckpt(tmp_path, 2, None)
    with pytest.raises(ConfigError, match="overwrite=true"):
        rf.start_mode(_cfg(tmp_path, resume=""), None)
    assert rf.start_mode(_cfg(tmp_path, resume="none", overwrite=True), None) == "overwrite"
    assert rf.start_mode(_cfg(tmp_path / "empty", resume=""), None) == "fresh"
    assert rf.start_mode(_cfg(tmp_path), tmp_path / "checkpoints" / "step-00000002") == "resume"


def test_compare_configs_sorts_changes_into_applied_and_refused():
    old = to_dict(_cfg("runs/x", grpo__max_steps=8))
    new = to_dict(_cfg("runs/x", grpo__max_steps=12, run__log_every=5, tax_meter__every_steps=3, grpo__lr=1e-3,
                       grpo__group_size=4, model__lora__r=8, seed=1))
    applied, refused = rf.compare_configs(old, new)
    assert [k for k, *_ in applied] == ["grpo.max_steps", "run.log_every", "tax_meter.every_steps"]
    assert ("grpo.max_steps", 8, 12) in applied
    assert {k for k, *_ in refused} == {"grpo.group_size", "grpo.lr", "model.lora.r", "seed"}
    # max_steps may not shrink, nor switch to epochs (-1).
    for smaller in (4, -1):
        _, refused = rf.compare_configs(old, to_dict(_cfg("runs/x", grpo__max_steps=smaller)))
        assert [k for k, *_ in refused] == ["grpo.max_steps"]
    # A key an older version did not record: fine at its default, refused otherwise.
    older = {k: v for k, v in old.items() if k != "overwrite"}
    assert rf.compare_configs(older, old) == ([], [])
    # A moved run folder: paths inside it moved with it.
    moved = to_dict(_cfg("elsewhere/x", grpo__max_steps=8, model__init_from="elsewhere/x/cold_start"))
    assert rf.compare_configs(dict(old, model=dict(old["model"], init_from="runs/x/cold_start")), moved) == \
        ([], [])
    # SFT ignores what it never reads.
    assert [k for k, *_ in rf.compare_configs(old, new, stage="sft")[1]] == ["model.lora.r", "seed"]


@pytest.mark.parametrize("beta", [0.04, 0.0])
def test_a_run_saved_before_bias_corrected_kl_resumes_with_what_it_ran(beta):
    """Saved configs before grpo.use_bias_correction_kl existed trained without it; its default is now true, so a
    KL run must say false to resume (refused otherwise), while with beta 0 the key changes nothing."""
    old = to_dict(_cfg("runs/x", grpo__beta=beta))
    del old["grpo"]["use_bias_correction_kl"]
    applied, refused = rf.compare_configs(old, to_dict(_cfg("runs/x", grpo__beta=beta)))
    assert applied == [] and refused == ([("grpo.use_bias_correction_kl", False, True)] if beta else [])
    same = to_dict(_cfg("runs/x", grpo__beta=beta, grpo__use_bias_correction_kl=False))
    assert rf.compare_configs(old, same) == ([], [] if beta else [("grpo.use_bias_correction_kl", True, False)])


def test_resume_check_names_every_refused_key_with_both_values(tmp_path):
    old = _cfg(tmp_path, grpo__max_steps=8)
    ckpt = _ckpt(tmp_path, 8, to_dict(old))
    line = rf.check_resume_config(_cfg(tmp_path, grpo__max_steps=12, run__log_every=5), ckpt, stage="grpo")
    assert line == "semgrpo: resume from step-00000008: applying changed grpo.max_steps 8 -> 12, run.log_every 1 -> 5"
    assert rf.check_resume_config(_cfg(tmp_path, grpo__max_steps=8), ckpt, stage="grpo") is None
    with pytest.raises(ConfigError) as err:
        rf.check_resume_config(_cfg(tmp_path, grpo__max_steps=4, reward__tau="0.3", grpo__beta=0.1), ckpt,
                               stage="grpo")
    msg = str(err.value)
    assert "grpo.beta 0.0 -> 0.1" in msg and "reward.tau 'auto' -> '0.3'" in msg and "grpo.max_steps 8 -> 4" in msg
    assert "\n" not in msg


def test_resume_check_falls_back_to_the_run_config_and_compares_the_deepspeed_json(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 8}))
    old = _cfg(tmp_path, run__deepspeed=str(ds))
    ckpt = _ckpt(tmp_path, 1, None)  # an old checkpoint without its own config.json
    (tmp_path / "config.json").write_text(json.dumps(to_dict(old)))
    (tmp_path / "deepspeed.json").write_text(json.dumps(rf.deepspeed_record(old)))
    with pytest.raises(ConfigError, match="seed 0 -> 3"):
        rf.check_resume_config(_cfg(tmp_path, run__deepspeed=str(ds), seed=3), ckpt, stage="grpo")
    assert rf.check_resume_config(_cfg(tmp_path, run__deepspeed=str(ds)), ckpt, stage="grpo") is None
    moved = tmp_path / "moved.json"
    moved.write_text(ds.read_text())
    assert "run.deepspeed" in rf.check_resume_config(_cfg(tmp_path, run__deepspeed=str(moved)), ckpt, stage="grpo")
    ds.write_text(json.dumps({"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": 8}))
    with pytest.raises(ConfigError, match="content of run.deepspeed"):
        rf.check_resume_config(_cfg(tmp_path, run__deepspeed=str(ds)), ckpt, stage="grpo")


def _old_style(cfg: Config) -> dict:
    """`cfg` as a development snapshot before 0.1.0 saved it: GRPO's optimisation and the shared run keys under `train`,
    the tax meter under `eval`."""
    tree = to_dict(cfg)
    grpo, run, meter = tree["grpo"], tree.pop("run"), tree.pop("tax_meter")
    run.pop("gpu_memory_gib")  # added before 0.1.0: an older snapshot's config never had it
    run.pop("report_to")  # newer still
    tree["train"] = {**run, **{k: grpo.pop(k) for k in ("lr", "scheduler", "warmup_ratio", "epochs", "max_steps")}}
    tree["eval"] = meter
    return tree


def test_a_checkpoint_saved_with_the_old_key_names_resumes_and_compares_under_the_new_ones(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 8}))
    old = _cfg(tmp_path, grpo__max_steps=8, run__deepspeed=str(ds), tax_meter__every_steps=5)
    ckpt = _ckpt(tmp_path, 8, _old_style(old))
    (tmp_path / "deepspeed.json").write_text(json.dumps(rf.deepspeed_record(old)))
    same = _cfg(tmp_path, grpo__max_steps=8, run__deepspeed=str(ds), tax_meter__every_steps=5)
    assert rf.check_resume_config(same, ckpt, stage="grpo") is None
    assert rf.check_resume_config(same, ckpt, stage="sft") is None
    expected = to_dict(old)
    expected["run"].pop("gpu_memory_gib")  # the old config has every key it had, under its new name
    expected["run"].pop("report_to")
    assert rf.recorded_config(ckpt)[0] == expected
    line = rf.check_resume_config(_cfg(tmp_path, grpo__max_steps=12, run__deepspeed=str(ds), tax_meter__every_steps=2),
                                  ckpt, stage="grpo")
    assert line == ("semgrpo: resume from step-00000008: applying changed grpo.max_steps 8 -> 12, "
                    "tax_meter.every_steps 5 -> 2")
    with pytest.raises(ConfigError, match=r"grpo\.lr 5e-07 -> 0\.001") as err:
        rf.check_resume_config(_cfg(tmp_path, grpo__max_steps=8, run__deepspeed=str(ds), grpo__lr=1e-3), ckpt,
                               stage="grpo")
    assert "train." not in str(err.value) and "eval." not in str(err.value)
    # The other way round too (compare_configs takes either form on either side).
    assert rf.compare_configs(to_dict(old), _old_style(old)) == ([], [])


def test_lock_refuses_a_second_holder_and_is_not_stale_after_release(tmp_path):
    first = rf.RunLock(tmp_path / "run")
    first.acquire()
    with pytest.raises(ConfigError, match=rf"in use by another training \(pid {os.getpid()} on host "):
        rf.RunLock(tmp_path / "run").acquire()
    first.release()  # a crashed process releases its flock the same way
    again = rf.RunLock(tmp_path / "run")
    again.acquire()
    again.release()


def test_start_records_the_config_once_and_overwrite_clears_the_old_run(tmp_path):
    out = tmp_path / "run"
    cfg = _cfg(out, grpo__max_steps=2)
    folder = rf.plan(cfg, stage="grpo")
    assert folder.mode == "fresh" and not out.exists()  # planning writes nothing
    folder.start(cfg)
    assert json.loads((out / "config.json").read_text())["grpo"]["max_steps"] == 2
    with pytest.raises(ConfigError, match="in use"):
        rf.plan(cfg, stage="grpo").start(cfg)
    folder.close()
    # A resume that changes max_steps: applied, logged in the checkpoint, config.json untouched.
    _ckpt(out, 2, to_dict(cfg))
    cfg3 = _cfg(out, grpo__max_steps=3)
    resume = rf.plan(cfg3, stage="grpo")
    assert resume.mode == "resume" and "grpo.max_steps 2 -> 3" in resume.note
    resume.start(cfg3)
    resume.close()
    assert json.loads((out / "config.json").read_text())["grpo"]["max_steps"] == 2
    # Fresh start with overwrite: the old run's files go, other files stay.
    for name in ("metrics.jsonl", "summary.json", "reward_curve.png", "notes.txt"):
        (out / name).write_text("old")
    (out / "tensorboard").mkdir()
    cfg5 = _cfg(out, grpo__max_steps=5, resume="", overwrite=True)
    folder = rf.plan(cfg5, stage="grpo")
    folder.start(cfg5)
    folder.close()
    assert sorted(p.name for p in out.iterdir() if p.name != "deepspeed.json") == [".lock", "config.json", "notes.txt"]
    assert json.loads((out / "config.json").read_text())["grpo"]["max_steps"] == 5


# ---------------------------------------------------------------------------------- entry points

# Both stages, tiny: a 2-step cold start into <run>/cold_start, then GRPO from its adapter.
QUICK = ["sft.before_grpo=true", "sft.samples=16", "sft.epochs=1", "grpo.max_completion_length=8", "model.lora.r=4", "model.lora.alpha=8",
         "reward.tau_samples=8", "train.save_every=1"]


def _error_line(proc) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ": error: " in ln]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def finished_run(demo_assets, tmp_path_factory):
    """A finished two-stage run: cold start, then 2 GRPO steps (checkpoints at steps 1 and 2)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    proc = run_cli("train_grpo.py", f"output_dir={out}", *QUICK, "train.max_steps=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    return out


def test_resume_refuses_changed_settings_and_writes_nothing(run_copy):
    before = _snapshot(run_copy)
    proc = run_cli("train_grpo.py", f"output_dir={run_copy}", *QUICK, "train.max_steps=1", "grpo.group_size=4",
                   "model.lora.r=8")
    line = _error_line(proc)
    assert line.startswith("train_grpo.py: error: resume from step-00000002"), line
    for needle in ("grpo.group_size 8 -> 4", "model.lora.r 4 -> 8", "grpo.max_steps 2 -> 1"):
        assert needle in line, line
    assert _snapshot(run_copy) == before


def test_resume_applies_allowed_changes_in_one_line_and_keeps_the_recorded_config(run_copy):
    recorded = (run_copy / "config.json").read_bytes()
    proc = run_cli("train_grpo.py", f"output_dir={run_copy}", *QUICK, "train.max_steps=3", "train.log_every=5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("semgrpo: resume from step-00000002: applying changed grpo.max_steps 2 -> 3, run.log_every 1 -> 5"
            in proc.stdout.splitlines()), proc.stdout
    assert (run_copy / "config.json").read_bytes() == recorded
    steps = [json.loads(ln)["step"] for ln in (run_copy / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    saved = json.loads((run_copy / "checkpoints" / "step-00000003" / "config.json").read_text())
    assert saved["grpo"]["max_steps"] == 3


def test_a_tensorboard_folder_it_cannot_write_stops_the_resume_before_the_model_loads(run_copy):
    shutil.rmtree(run_copy / "tensorboard")
    (run_copy / "tensorboard").write_text("a file where the events go")
    before = _snapshot(run_copy)
    line = _error_line(run_cli("train_grpo.py", f"output_dir={run_copy}", *QUICK, "train.max_steps=3"))
    assert f"'{run_copy / 'tensorboard'}' is a file, but the run writes its TensorBoard events" in line, line
    assert _snapshot(run_copy) == before


def test_a_damaged_tracker_state_never_blocks_a_resume(run_copy):
    state = run_copy / "tracker_state.json"
    state.write_text(state.read_text()[:7])  # a disk that filled up mid-write
    proc = run_cli("train_grpo.py", f"output_dir={run_copy}", *QUICK, "train.max_steps=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in proc.stderr.splitlines() if "semgrpo: warning:" in line]
    assert len(warnings) == 1 and f"{state} is unreadable" in warnings[0], proc.stderr[-3000:]
    steps = [json.loads(ln)["step"] for ln in (run_copy / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3] and json.loads(state.read_text())["wall_seconds"] > 0
    assert len(list(run_copy.glob("tracker_state.json.damaged-*"))) == 1


def test_fresh_start_into_a_finished_run_is_refused(run_copy):
    before = _snapshot(run_copy)
    line = _error_line(run_cli("train_grpo.py", f"output_dir={run_copy}", *QUICK, "train.max_steps=2", "resume="))
    assert "holds another run's checkpoints" in line and "overwrite=true" in line, line
    assert _snapshot(run_copy) == before


def test_a_second_training_into_a_locked_folder_fails_and_a_rerun_finishes(run_copy):
    before = _snapshot(run_copy)
    recorded = (run_copy / "config.json").read_bytes()
    fd = os.open(run_copy / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b"pid 4242 on host elsewhere\n")
        line = _error_line(run_cli("train_grpo.py", f"output_dir={run_copy}", *QUICK, "train.max_steps=2"))
    finally:
        os.close(fd)
    assert "is in use by another training (pid 4242 on host elsewhere)" in line, line
    assert _snapshot(run_copy) == before
    # The same command once the folder is free: nothing left to train, it ends cleanly (the demo run twice).
    proc = run_cli("train_grpo.py", f"output_dir={run_copy}", *QUICK, "train.max_steps=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run_copy / "config.json").read_bytes() == recorded
    steps = [json.loads(ln)["step"] for ln in (run_copy / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


@pytest.mark.parametrize("value, needle", [("", "output_dir is empty"), ("FILE", "is a file")])
def test_unusable_output_dir(tmp_path, value, needle):
    if value == "FILE":
        value = str(tmp_path / "f.txt")
        Path(value).write_text("x")
    line = _error_line(run_cli("train_sft.py", f"output_dir={value}", "train.max_steps=1"))
    assert needle in line, line


def test_dropped_over_long_records_are_reported_once(demo_assets, tmp_path):
    # group_size=3 is refused right after the data loaded: the report is printed before that error.
    proc = run_cli("train_grpo.py", f"output_dir={tmp_path / 'run'}", "sft.before_grpo=false", "train.max_steps=1",
                   "data.max_prompt_length=41", "grpo.group_size=3")
    assert proc.returncode == 2, proc.stderr[-3000:]
    reports = [ln for ln in proc.stdout.splitlines() if f"{demo_assets.train_path}: kept " in ln]
    assert len(reports) == 1, proc.stdout
    kept, total = (int(x) for x in reports[0].split(": kept ")[1].split(" (")[0].split(" of "))
    assert 0 < kept < total == 254
    assert f"({total - kept} over max_prompt_length / max_sample_tokens" in reports[0]
