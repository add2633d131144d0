"""Files named by the config that are malformed: one ConfigError / DataError line naming the file, raised by
the checks that run before the model loads (issue #12.6). End-to-end forms are in test_cli_errors.py."""
import json
import shutil

import pytest

from semgrpo.config import ConfigError, ModelConfig
from semgrpo.data import DataError, load_records
from semgrpo.ds_config import load_ds_config
from semgrpo.modeling import check_model_source, load_tokenizer

DS = {"train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 2, "zero_optimization": {"stage": 3}}


def _one_line(exc_info, *needles):
    message = str(exc_info.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message


# ----------------------------------------------------------------------------- DeepSpeed JSON


@pytest.mark.parametrize("content,needle", [
    (b"[1, 2]", "expected a JSON object at the top level, got list"),
    (b'{"train_micro_batch_size_per_gpu": 8, "x": "\xff\xfe"}', "not UTF-8"),
    (json.dumps(dict(DS, zero_optimization={"stage": 9})).encode(), "zero_optimization.stage must be 0, 1, 2 or 3, got 9"),
    (json.dumps(dict(DS, zero_optimization=3)).encode(), "zero_optimization must be a JSON object"),
    (json.dumps(dict(DS, train_micro_batch_size_per_gpu="8")).encode(), "train_micro_batch_size_per_gpu must be a positive integer"),
    (json.dumps(dict(DS, train_batch_size=1.5)).encode(), "train_batch_size must be a positive integer, got 1.5"),
], ids=["list", "not-utf8", "stage-9", "zero-not-object", "micro-string", "total-float"])
def test_bad_deepspeed_json(tmp_path, content, needle):
    path = tmp_path / "ds.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_ds_config(path, dtype="fp32", world_size=1)
    _one_line(info, str(path), needle)


def test_fp16_without_cuda(tmp_path, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(dict(DS, fp16={"enabled": True})))
    with pytest.raises(ConfigError) as info:
        load_ds_config(path, dtype="fp32", world_size=1)
    _one_line(info, str(path), "fp16.enabled needs a CUDA device")
    path.write_text(json.dumps(DS))
    with pytest.raises(ConfigError) as info:
        load_ds_config(path, dtype="fp16", world_size=1)
    _one_line(info, "model.dtype fp16 needs a CUDA device")
    ds, plan = load_ds_config(path, dtype="fp32", world_size=1)  # the CPU default still loads
    assert ds["fp16"] == {"enabled": False} and plan.per_rank == 16


# ----------------------------------------------------------------------------- model / encoder / tokenizer folders


@pytest.fixture
def policy_copy(demo_assets, tmp_path):
    return shutil.copytree(demo_assets.policy_path, tmp_path / "policy")


def test_empty_model_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    for what, kind in (("model.path", "model"), ("reward.encoder", "model"), ("model.tokenizer", "tokenizer")):
        with pytest.raises(ConfigError) as info:
            check_model_source(str(tmp_path / "empty"), what, kind=kind)
        _one_line(info, what, "empty directory")


def test_model_folder_without_config_json(policy_copy):
    (policy_copy / "config.json").unlink()
    with pytest.raises(ConfigError) as info:
        check_model_source(str(policy_copy), "model.path")
    _one_line(info, "model.path", "no config.json")


@pytest.mark.parametrize("keep", [0.5, 0.0001], ids=["half", "header-cut"])
def test_truncated_safetensors(policy_copy, keep):
    weights = policy_copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: max(4, int(len(data) * keep))])
    with pytest.raises(ConfigError) as info:
        check_model_source(str(policy_copy), "model.path")
    _one_line(info, "model.path", str(weights), "not a readable safetensors file")


def test_good_model_folder_passes(demo_assets):
    assert check_model_source(str(demo_assets.policy_path), "model.path") == str(demo_assets.policy_path)
    assert check_model_source(str(demo_assets.encoder_path), "reward.encoder") == str(demo_assets.encoder_path)
    assert check_model_source(str(demo_assets.tokenizer_path), "model.tokenizer", kind="tokenizer")


def test_corrupt_tokenizer_is_one_line(demo_assets, tmp_path):
    tok_dir = shutil.copytree(demo_assets.tokenizer_path, tmp_path / "tok")
    (tok_dir / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    with pytest.raises(ConfigError) as info:
        load_tokenizer(ModelConfig(path=str(demo_assets.policy_path), tokenizer=str(tok_dir)))
    _one_line(info, "model.tokenizer", str(tok_dir), "could not be loaded")


def test_tokenizer_folder_without_tokenizer_files(tmp_path):
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "README.md").write_text("nothing here")
    with pytest.raises(ConfigError) as info:
        load_tokenizer(ModelConfig(path=str(tmp_path / "tok")))
    _one_line(info, "model.tokenizer", "holds no tokenizer files")


# ----------------------------------------------------------------------------- JSONL text


@pytest.mark.parametrize("line,field", [
    ('{"id": 2, "bo": "\\ud800", "zh": "y"}', '"bo"'),
    ('{"id": 2, "bo": "x", "zh": "ab\\udfffc"}', '"zh"'),
    ('{"id": 2, "bo": "x", "zh": "y", "meta": {"tags": ["ok", "\\ud83d"]}}', '"meta.tags[1]"'),
])
def test_lone_surrogate_names_file_line_and_field(tmp_path, line, field):
    path = tmp_path / "s.jsonl"
    path.write_text('{"id": 1, "bo": "x", "zh": "y"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_records(path, task="mt_zh_bo")
    _one_line(info, f"{path}:2", f"field {field}", "lone surrogate")


def test_lone_surrogate_in_a_json_array_file(tmp_path):
    path = tmp_path / "s.json"
    path.write_text('[{"id": 1, "bo": "x", "zh": "y"}, {"id": 2, "bo": "\\udc00", "zh": "y"}]', encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_records(path, task="mt_zh_bo")
    _one_line(info, f"{path}: record 2", 'field "bo"', "lone surrogate")


def test_surrogate_pair_escape_is_fine(tmp_path):
    path = tmp_path / "ok.jsonl"
    path.write_text('{"id": 1, "bo": "x", "zh": "\\ud83d\\ude00"}\n', encoding="utf-8")
    assert load_records(path, task="mt_zh_bo")[0]["zh"] == "\U0001F600"
