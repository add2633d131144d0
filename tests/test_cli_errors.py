"""Every user error: one clear line on stderr, exit status 2, no traceback, output_dir untouched."""
import json

import pytest
from _helpers import run_cli

FAST = ["train.max_steps=1", "sft.before_grpo=false"]


@pytest.fixture
def out_dir(tmp_path):
    """An existing run folder with content that an error must not touch."""
    d = tmp_path / "run"
    d.mkdir()
    (d / "notes.txt").write_text("keep me")
    return d


def _assert_user_error(proc, *needles, out_dir=None):
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "Warning" not in ln and "warn" not in ln]
    error_lines = [ln for ln in lines if ": error: " in ln]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(error_lines) == 1, proc.stderr[-3000:]
    for needle in needles:
        assert needle in error_lines[0], error_lines[0]
    if out_dir is not None:
        assert sorted(p.name for p in out_dir.iterdir()) == ["notes.txt"]
        assert (out_dir / "notes.txt").read_text() == "keep me"


def _jsonl(path, records_or_lines):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)
                              for r in records_or_lines) + "\n", encoding="utf-8")
    return path


def test_unknown_config_key(out_dir):
    proc = run_cli("train_grpo.py", f"output_dir={out_dir}", "grpo.betta=0.1")
    _assert_user_error(proc, "unknown config key 'grpo.betta'", "valid keys:", "grpo.beta", out_dir=out_dir)


def test_bad_value_type(out_dir):
    proc = run_cli("train_grpo.py", f"output_dir={out_dir}", "grpo.group_size=eight")
    _assert_user_error(proc, "grpo.group_size must be an integer", out_dir=out_dir)


def test_bad_loss_type(out_dir):
    proc = run_cli("train_grpo.py", f"output_dir={out_dir}", "grpo.loss_type=ppo")
    _assert_user_error(proc, "grpo.loss_type must be one of grpo, bnpo, dr_grpo, dapo, cispo, sapo, luspo, vespo; "
                       "got 'ppo'", out_dir=out_dir)


def test_missing_config_file(out_dir):
    proc = run_cli("train_grpo.py", "--config", str(out_dir / "nope.yaml"))
    _assert_user_error(proc, "config file not found", out_dir=out_dir)


def test_missing_data_file(demo_assets, out_dir):
    proc = run_cli("train_grpo.py", f"output_dir={out_dir}", f"data.train={out_dir}/missing.jsonl", *FAST)
    _assert_user_error(proc, "missing.jsonl", "not found", out_dir=out_dir)


def test_malformed_jsonl_names_file_and_line(demo_assets, out_dir, tmp_path):
    bad = _jsonl(tmp_path / "bad.jsonl", [{"id": 1, "bo": "བོད", "zh": "藏"}, '{"id": 2, "bo": "x" "zh": "y"}'])
    proc = run_cli("train_grpo.py", f"output_dir={out_dir}", f"data.train={bad}", *FAST)
    _assert_user_error(proc, "bad.jsonl:2", "not valid JSON", out_dir=out_dir)


def test_missing_field(demo_assets, out_dir, tmp_path):
    bad = _jsonl(tmp_path / "nofield.jsonl", [{"id": 1, "bo": "བོད", "zh": "藏"}, {"id": 2, "bo": "བོད"}])
    proc = run_cli("train_grpo.py", f"output_dir={out_dir}", f"data.train={bad}", *FAST)
    _assert_user_error(proc, "nofield.jsonl:2", '"zh"', out_dir=out_dir)


def test_empty_after_filtering(demo_assets, out_dir):
    proc = run_cli("train_grpo.py", f"output_dir={out_dir}", "data.max_prompt_length=2", *FAST)
    _assert_user_error(proc, "no examples left after filtering", out_dir=out_dir)


def test_model_path_does_not_exist(demo_assets, out_dir):
    proc = run_cli("train_grpo.py", f"output_dir={out_dir}", f"model.path={out_dir}/no-model", *FAST)
    _assert_user_error(proc, "model.path", "does not exist", out_dir=out_dir)


def test_batch_sizes_that_do_not_divide(demo_assets, out_dir):
    proc = run_cli("train_grpo.py", f"output_dir={out_dir}", "grpo.group_size=3", *FAST)
    _assert_user_error(proc, "not a multiple of grpo.group_size 3", out_dir=out_dir)


def test_resume_from_a_path_that_is_not_a_checkpoint(demo_assets, out_dir):
    proc = run_cli("train_grpo.py", f"output_dir={out_dir}", f"resume={out_dir}", *FAST)
    _assert_user_error(proc, "resume", out_dir=out_dir)


def test_sft_entry_point_reports_errors_the_same_way(demo_assets, out_dir):
    proc = run_cli("train_sft.py", f"output_dir={out_dir}", "sft.lr=fast")
    _assert_user_error(proc, "sft.lr must be a number", out_dir=out_dir)


def test_merged_generation_needs_an_adapter(demo_assets, out_dir):
    proc = run_cli("train_grpo.py", f"output_dir={out_dir}", "grpo.merge_adapter_for_generation=true",
                   "model.lora.enabled=false", "grpo.beta=0", *FAST)
    _assert_user_error(proc, "grpo.merge_adapter_for_generation needs model.lora.enabled", out_dir=out_dir)


def test_merged_generation_needs_gathered_weights_under_zero3(demo_assets, out_dir):
    proc = run_cli("train_grpo.py", f"output_dir={out_dir}", "grpo.merge_adapter_for_generation=true",
                   "grpo.gather_for_generation=false", *FAST)
    _assert_user_error(proc, "needs grpo.gather_for_generation under ZeRO-3", out_dir=out_dir)


# Issue #12.6: values that passed the config check and crashed after the model loaded (or were accepted
# silently) are now one line, exit 2, before anything is written: output_dir is not even created.


def _assert_rejected_early(proc, run_dir, *needles):
    _assert_user_error(proc, *needles)
    assert not run_dir.exists(), sorted(p.name for p in run_dir.rglob("*"))


@pytest.mark.parametrize("override,needle", [
    ("train.log_every=0", "run.log_every must be >= 1, got 0"),  # an old name: the error names the new one
    ("reward.script=Klingon", "reward.script: unknown script 'Klingon'; expected an ISO 15924 code"),
])
def test_out_of_range_value_is_rejected_before_the_run(tmp_path, override, needle):
    run_dir = tmp_path / "run"
    proc = run_cli("train_grpo.py", f"output_dir={run_dir}", override, *FAST)
    _assert_rejected_early(proc, run_dir, needle)


def test_deepspeed_json_that_is_a_list(demo_assets, tmp_path):
    ds, run_dir = tmp_path / "ds.json", tmp_path / "run"
    ds.write_text("[]")
    proc = run_cli("train_grpo.py", f"output_dir={run_dir}", f"train.deepspeed={ds}", *FAST)
    _assert_rejected_early(proc, run_dir, "ds.json", "expected a JSON object")


def test_truncated_model_weights(demo_assets, tmp_path):
    import shutil

    policy, run_dir = shutil.copytree(demo_assets.policy_path, tmp_path / "policy"), tmp_path / "run"
    weights = policy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    proc = run_cli("train_grpo.py", f"output_dir={run_dir}", f"model.path={policy}", *FAST)
    _assert_rejected_early(proc, run_dir, "model.path", "model.safetensors", "not a readable safetensors file")


def test_lone_surrogate_in_jsonl(demo_assets, tmp_path):
    bad, run_dir = tmp_path / "sur.jsonl", tmp_path / "run"
    bad.write_text('{"id": 1, "bo": "བོད", "zh": "藏"}\n{"id": 2, "bo": "\\ud800", "zh": "藏"}\n', encoding="utf-8")
    proc = run_cli("train_grpo.py", f"output_dir={run_dir}", f"data.train={bad}", *FAST)
    _assert_rejected_early(proc, run_dir, "sur.jsonl:2", 'field "bo"', "lone surrogate")
