"""Full-parameter GRPO (model.lora.enabled=false) with a KL term on 2 ranks under ZeRO-3: every base weight
trains, the reference is a frozen partitioned copy that never moves, the optimizer state is split between the
ranks, and kill + resume equals the straight run."""
import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from _helpers import SAME_RUN_RTOL, deepspeed_launcher, run_cli
from _tolerance import assert_close_scaled, model_rtol

pytestmark = pytest.mark.skipif(shutil.which("deepspeed") is None, reason="the deepspeed launcher is not on PATH")

ROOT = Path(__file__).resolve().parents[1]
FULL = ["sft.before_grpo=false", "model.lora.enabled=false", "grpo.beta=0.04", "grpo.merge_adapter_for_generation=false",
        "grpo.max_completion_length=8", "grpo.lr=1e-4", "reward.tau_samples=8", "tax_meter.every_steps=0"]


def test_full_parameter_grpo_trains_every_weight_against_a_frozen_partitioned_reference(demo_assets, tmp_path,
                                                                                       launches):
    ds = json.loads((ROOT / "ds_configs" / "zero3.json").read_text())
    ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0  # every parameter partitioned
    (tmp_path / "zero3.json").write_text(json.dumps(ds))
    # Both probe runs at once, each in a folder of its own (a probe's run folder is beside its output).
    # "gathered" is the default: the first policy pass runs on the weights gathered for generation.
    probes = {"gathered": _start_probe(launches, tmp_path, "gathered"),
              "hooked": _start_probe(launches, tmp_path, "hooked", "grpo.gathered_policy_pass=false")}
    reports = _probe_reports(launches, tmp_path, "gathered", probes)
    rep = reports[0]
    assert rep["zero_stage"] == 3 and not rep["reference_trainable"]
    assert rep["trainable"] and not any("lora" in n for n in rep["trainable"])
    assert rep["unchanged"] == [], rep["unchanged"]  # every trained base weight moved
    assert rep["policy_logps_change"] > 1e-4
    for r in reports:
        assert r["ref_logps_change"] == 0.0, r["ref_logps_change"]  # the reference never moves
        # The reference is partitioned too: each rank holds about half of it.
        assert r["reference_held"] <= 0.5 * r["reference_numel"] + 2 * 64 * 16, (r["reference_held"], r["reference_numel"])
    assert all(k > 0 for k in rep["kl"][1:])  # after the first update the policy has left its reference
    total = rep["trainable_numel"]
    parts = [sum(r["partition_numel"]) for r in reports]
    assert all(0 < p < total for p in parts) and sum(parts) >= total and max(parts) - min(parts) <= 2 * 64 * 16
    for r, p in zip(reports, parts):  # Adam's two moments, this rank's partition only
        assert 2 * p <= r["optimizer_state_numel"] <= 2 * p + 64, (r["optimizer_state_numel"], p)
    # The policy pass on the weights gathered for generation (ZeRO's hooks off) makes the same update as
    # ZeRO-3's own layer-by-layer pass: full-size gradients still reach each rank's partition.
    _probe_reports(launches, tmp_path, "hooked", probes)  # the run with grpo.gathered_policy_pass=false
    # The first update's gradients agree to summation order (tests/_grpo_probe.py says why not the weights).
    gathered, hooked = (torch.load(tmp_path / n / f"{n}.json.grad.pt") for n in ("gathered", "hooked"))
    assert gathered.keys() == hooked.keys() and len(gathered) == len(rep["trainable"])
    rtol = model_rtol(demo_assets.policy_path / "config.json")
    for name in gathered:
        assert_close_scaled(gathered[name], hooked[name], rtol, msg=name)


def _start_probe(launches, tmp_path, name, *overrides):
    (tmp_path / name).mkdir()
    out = tmp_path / name / f"{name}.json"
    return launches.start("../tests/_full_param_probe.py", str(out), *FULL, f"run.deepspeed={tmp_path / 'zero3.json'}",
                          *overrides, launcher=deepspeed_launcher(), log=tmp_path / f"{name}.log")


def _probe_reports(launches, tmp_path, name, probes):
    returncode, output = launches.wait(probes[name])
    assert returncode == 0, output
    return [json.loads((tmp_path / name / f"{name}.json.rank{r}").read_text()) for r in (0, 1)]


def _metrics(out_dir):
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]


def test_full_parameter_kill_and_resume_equals_the_straight_run(demo_assets, tmp_path, launches):
    args = FULL + ["grpo.max_steps=2", "run.save_every=1"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    # The straight run goes on beside the killed run and its resumption (separate folders and ports).
    straight_run = launches.start("train_grpo.py", f"output_dir={straight}", *args, launcher=deepspeed_launcher(),
                                  log=tmp_path / "straight.log")

    # The same run, killed (the launcher and both ranks) once its step-1 checkpoint is complete.
    victim = launches.start("train_grpo.py", f"output_dir={resumed}", *args, launcher=deepspeed_launcher(),
                            log=tmp_path / "victim.log")
    marker = resumed / "checkpoints" / "step-00000001" / "COMPLETE"
    deadline = time.time() + 600
    while not marker.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    launches.kill(victim)
    assert marker.exists(), "the run never wrote its step-1 checkpoint"
    assert not (resumed / "summary.json").exists(), "the run finished before it could be killed"

    proc = run_cli("train_grpo.py", f"output_dir={resumed}", *args, launcher=deepspeed_launcher())
    assert proc.returncode == 0, proc.stderr[-3000:]
    returncode, output = launches.wait(straight_run)
    assert returncode == 0, output
    a, b = _metrics(straight), _metrics(resumed)
    assert [r["step"] for r in a] == [1, 2] and [r["step"] for r in b][-1:] == [2]
    by_step = {r["step"]: r for r in b}
    for ra in a[1:]:
        rb = by_step[ra["step"]]
        for key in ra:
            assert ra[key] == pytest.approx(rb[key], rel=SAME_RUN_RTOL, abs=SAME_RUN_RTOL, nan_ok=True), (ra["step"], key)


def test_a_full_parameter_run_as_init_from_says_to_export_it(tmp_path):
    from semgrpo.config import ConfigError
    from semgrpo.lineage import find_adapter_dir

    ckpt = tmp_path / "run" / "checkpoints" / "step-00000001"
    (ckpt / "state").mkdir(parents=True)
    (ckpt / "COMPLETE").write_text(json.dumps({"step": 1, "time": 0, "world_size": 2}))
    (tmp_path / "run" / "config.json").write_text(json.dumps({"model": {"lora": {"enabled": False}}}))
    with pytest.raises(ConfigError, match="full-parameter run .* bin/export.py"):
        find_adapter_dir(str(tmp_path / "run"))
