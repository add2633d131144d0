"""Every loss setting the trainer gained trains on the demo (issue 26's "done when"): cispo, sapo, luspo with
sequence-level importance sampling, vespo, GSPO (dapo + sequence) and grpo with delta, masked truncated completions
and two iterations, 2 steps each, in one process (tests/_loss_type_runs.py)."""
import json
import math

from _helpers import run_cli
from _loss_type_runs import LOSS_RUNS


def test_every_new_loss_setting_trains_two_steps(demo_assets, tmp_path):
    proc = run_cli("../tests/_loss_type_runs.py", str(tmp_path), timeout=1500)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    runs = json.loads((tmp_path / "runs.json").read_text())
    assert sorted(runs) == sorted(LOSS_RUNS)
    for name, run in runs.items():
        assert run["summary"]["steps"] == 2, name
        assert [r["step"] for r in run["metrics"]] == [1, 2], name
        for r in run["metrics"]:
            assert math.isfinite(r["loss"]) and math.isfinite(r["kl"]) and math.isfinite(r["entropy/mean"]), (name, r)
        assert run["lora_b_max"] > 0, f"{name}: the LoRA did not move (lora_B is still 0)"
    # run.report_to=[none]: the folder holds what every run writes and nothing of a tracker (README "What a run logs")
    from semgrpo.checkpoint import CHECKPOINTS_DIR
    from semgrpo.run_folder import CONFIG_FILE, DEEPSPEED_RECORD, LOCK_FILE
    from semgrpo.tracking.files import ALWAYS_WRITTEN

    for name in LOSS_RUNS:
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == sorted(
            {CONFIG_FILE, DEEPSPEED_RECORD, LOCK_FILE, CHECKPOINTS_DIR, *ALWAYS_WRITTEN}), name
    assert runs["luspo_sequence"]["config"]["importance_sampling_level"] == "sequence"
    assert runs["gspo"]["config"] == {**runs["gspo"]["config"], "loss_type": "dapo", "importance_sampling_level":
                                      "sequence"}
    masked = runs["grpo_delta_masked_mu2"]
    assert masked["config"]["delta"] == 1.5 and masked["config"]["num_iterations"] == 2
    fractions = [r["completion/masked_truncated_fraction"] for r in masked["metrics"]]
    assert any(0 < f < 1 for f in fractions), fractions  # some completions masked, some trained on
    # the clip metrics are the clip types' own: cispo reports its capped fraction, sapo and vespo none
    assert all(r["clip_ratio/low"] == 0 for name in ("cispo", "sapo", "vespo") for r in runs[name]["metrics"])

