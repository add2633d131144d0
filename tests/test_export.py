"""bin/export.py: real runs exported and loaded back with plain transformers / PEFT give the trained
policy's logits; bad input is one error line with OUT_DIR untouched.

The runs come from tests/_export_runs.py under `deepspeed --num_gpus 2` (two gloo ranks on CPU): a LoRA run
started from another LoRA run (other target modules and rank), and full-parameter runs under ZeRO-3 (every
parameter partitioned), ZeRO-2 and no ZeRO. The same driver rebuilds each engine from its checkpoint with
the project's own loading code and records the logits of fixed inputs: the reference the exports must match.
"""
import json
import pickle
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import deepspeed  # noqa: F401 - imported before any capsys test: DeepSpeed's logger keeps the stream it first saw
import pytest
import torch
from _helpers import REPO, deepspeed_launcher, run_cli, user_env
from _tolerance import assert_close_scaled, chain_rtol
from safetensors import safe_open

from semgrpo.checkpoint.integrity import write_manifest
from semgrpo.export.cli import main as export_main

pytestmark = pytest.mark.skipif(shutil.which("deepspeed") is None, reason="the deepspeed launcher is not on PATH")

# The demo policy: 2 layers, hidden 128, MLP 256. An export and the engine rebuilt from the checkpoint compute the
# same fp32 logits by other paths (adapters merged into the weights, ZeRO shards consolidated): summation order
# only, over the forward's 2 reductions per layer and the head's, of at most 256 terms each.
RTOL = chain_rtol(torch.float32, 256, depth=2 * 2 + 1)


@pytest.fixture(scope="module")
def runs(demo_assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("export_runs")
    for stage in (3, 2, 0):
        ds = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
              "steps_per_print": 10**6, "zero_optimization": {"stage": stage}}
        if stage == 3:  # partition every parameter, however small (the tiny model's are all below the default)
            ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0
        (root / f"zero{stage}.json").write_text(json.dumps(ds))
    proc = run_cli("../tests/_export_runs.py", str(root), launcher=deepspeed_launcher())
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return root


def _reference(runs: Path, name: str) -> dict:
    ref = torch.load(runs / f"{name}.ref.pt", weights_only=True)
    assert ref["world_size"] == 2
    return ref


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def _load(path, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)


def _base(demo_assets):
    return _load(demo_assets.policy_path)


def _export(capsys, *args) -> tuple[int, str, str]:
    status = export_main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


# ------------------------------------------------------------------------------------------- round trips


def test_lora_chain_exports_as_one_merged_model(runs, demo_assets, tmp_path, capsys):
    ref = _reference(runs, "lora2")
    out = tmp_path / "merged"
    status, stdout, err = _export(capsys, runs / "lora2", out)
    assert status == 0, err
    assert "export: merging adapter 1/2" in stdout and "export: merging adapter 2/2" in stdout
    assert str(runs / "lora1") in stdout  # the init_from run's adapter is the first of the chain
    assert all(line.startswith("export: ") for line in stdout.splitlines()), stdout

    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= names, names
    assert not any("adapter" in n for n in names) and not any(".tmp-" in p.name for p in tmp_path.iterdir())
    logits = _logits(_load(out), ref["input_ids"])
    assert_close_scaled(logits, ref["logits"], RTOL)
    # Both stages changed the policy: the export is neither the base nor the base + stage 1 alone.
    assert (_logits(_base(demo_assets), ref["input_ids"]) - ref["logits"]).abs().max() > 1e-2
    from peft import PeftModel

    stage1 = PeftModel.from_pretrained(_base(demo_assets), str(runs / "lora1" / "checkpoints" / "step-00000002" /
                                                                "adapter"))
    assert (_logits(stage1, ref["input_ids"]) - ref["logits"]).abs().max() > 1e-3

    from transformers import AutoTokenizer

    text = "བོད་ཡིག 中文"
    assert AutoTokenizer.from_pretrained(str(out))(text)["input_ids"] == \
        AutoTokenizer.from_pretrained(str(demo_assets.tokenizer_path))(text)["input_ids"]


def test_adapter_only_folds_the_chain_into_one_exact_adapter(runs, demo_assets, tmp_path, capsys):
    ref = _reference(runs, "lora2")
    out = tmp_path / "adapter"
    status, stdout, err = _export(capsys, runs / "lora2", out, "--adapter-only")
    assert status == 0, err
    assert "one LoRA of rank 6" in stdout

    cfg = json.loads((out / "adapter_config.json").read_text())
    # lora1: r=4 on q,v; lora2: r=2 on q,k,down -> q: 6, v: 4, k and down: 2; scaling 1 everywhere.
    assert cfg["r"] == cfg["lora_alpha"] == 6 and not cfg["use_rslora"]
    assert sorted(cfg["target_modules"]) == ["down_proj", "k_proj", "q_proj", "v_proj"]
    assert cfg["rank_pattern"] == cfg["alpha_pattern"]
    assert sorted(set(cfg["rank_pattern"].values())) == [2, 4] and len(cfg["rank_pattern"]) == 3 * 2  # 2 layers
    with safe_open(str(out / "adapter_model.safetensors"), framework="pt") as f:
        keys = list(f.keys())  # a safetensors handle, not a dict
        ranks = {k: f.get_slice(k).get_shape()[0] for k in keys if "lora_A" in k}
    assert {k.split(".")[-3]: r for k, r in ranks.items()} == {"q_proj": 6, "v_proj": 4, "k_proj": 2, "down_proj": 2}

    from peft import PeftModel

    model = PeftModel.from_pretrained(_base(demo_assets), str(out))
    assert_close_scaled(_logits(model, ref["input_ids"]), ref["logits"], RTOL)


@pytest.mark.parametrize("name, stage", [("full3", 3), ("full2", 2), ("full0", 0)])
def test_full_parameter_run_exports_its_consolidated_weights(runs, demo_assets, tmp_path, capsys, name, stage):
    ref = _reference(runs, name)
    assert ref["zero_stage"] == stage
    if stage == 3:  # the shards really were partitioned: each rank held about half of every parameter
        assert ref["shards"] and all(0 < held < total for held, total in ref["shards"].values()), ref["shards"]
    out = tmp_path / "full"
    status, stdout, err = _export(capsys, runs / name, out)
    assert status == 0, err
    assert "consolidating the ZeRO shards" in stdout and "wrote" in stdout

    model = _load(out)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied embeddings stay tied
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert "model.embed_tokens.weight" in list(f.keys())
    assert_close_scaled(_logits(model, ref["input_ids"]), ref["logits"], RTOL)
    assert (_logits(_base(demo_assets), ref["input_ids"]) - ref["logits"]).abs().max() > 1e-2  # it trained


def test_dtype_override_and_overwrite(runs, tmp_path, capsys):
    ref = _reference(runs, "full3")
    full = tmp_path / "fp32"  # the run's own dtype, checked against the engine's logits above
    assert _export(capsys, runs / "full3", full)[0] == 0
    out = tmp_path / "bf16"
    out.mkdir()
    (out / "old.txt").write_text("an earlier export")
    status, _, err = _export(capsys, runs / "full3", out, "--dtype", "bf16", "--overwrite")
    assert status == 0, err
    assert not (out / "old.txt").exists()
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    # --dtype rounds the fp32 result once, at the end: every tensor is exactly the fp32 export's, cast.
    with safe_open(str(out / "model.safetensors"), framework="pt") as f, \
            safe_open(str(full / "model.safetensors"), framework="pt") as f32:
        keys = sorted(f.keys())  # a safetensors handle, not a dict
        assert keys == sorted(f32.keys())
        for k in keys:
            assert torch.equal(f.get_tensor(k), f32.get_tensor(k).to(torch.bfloat16)), k
    # So it computes exactly what the fp32 export loaded as bf16 computes (the same ops, the same
    # rounding), and that model is the trained policy (test_full_parameter_run_exports_its_consolidated_weights).
    logits = _logits(_load(out, torch.bfloat16), ref["input_ids"])
    torch.testing.assert_close(logits, _logits(_load(full, torch.bfloat16), ref["input_ids"]), rtol=0, atol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bf16", "fp32"]  # no staging or old folder left


def test_a_damaged_newest_checkpoint_falls_back_to_the_older_one(runs, tmp_path, capsys):
    run = shutil.copytree(runs / "full0", tmp_path / "run")
    (run / "checkpoints" / "step-00000002" / "client_state.json").write_text("{}")
    out = tmp_path / "nested" / "export"  # missing parents are created
    status, stdout, err = _export(capsys, run, out)
    assert status == 0, err
    assert stdout.splitlines()[0].startswith(f"export: {run / 'checkpoints' / 'step-00000001'} (full-parameter run)")
    assert (out / "model.safetensors").is_file()


def test_auto_dtype_is_the_one_the_base_records(demo_assets, tmp_path):
    from semgrpo.export.source import _run_dtype

    base = shutil.copytree(demo_assets.policy_path, tmp_path / "base")
    assert _run_dtype("auto", str(base)) == "fp32"
    cfg = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps(dict(cfg, dtype="bfloat16")))
    assert _run_dtype("auto", str(base)) == "bf16"
    assert _run_dtype("fp16", str(base)) == "fp16"


# ------------------------------------------------------------------------------------------- bad input


def _rewrite_config(run: Path, **model_keys) -> None:
    """Change the model section of every checkpoint's config (manifest refreshed: an intact checkpoint)."""
    for ckpt in sorted((run / "checkpoints").glob("step-*")):
        cfg = json.loads((ckpt / "config.json").read_text())
        cfg["model"].update(model_keys)
        (ckpt / "config.json").write_text(json.dumps(cfg))
        write_manifest(ckpt, skip=("COMPLETE",))


def _case(name: str, runs: Path, tmp: Path) -> tuple[list, Path, str]:
    """(arguments, OUT_DIR, what the error line must say) for one kind of bad input."""
    out = tmp / "out"
    if name == "run missing":
        return [tmp / "nope", out], out, "RUN_DIR '" + str(tmp / "nope") + "' does not exist"
    if name == "not a run":
        (tmp / "empty").mkdir()
        return [tmp / "empty", out], out, "is not a run (no config.json and no checkpoints/"
    if name == "no complete checkpoint":
        run = tmp / "unfinished"
        (run / "checkpoints" / "step-00000001").mkdir(parents=True)
        shutil.copy(runs / "full0" / "config.json", run / "config.json")
        return [run, out], out, "has no complete checkpoint under checkpoints/"
    if name == "every checkpoint damaged":
        run = shutil.copytree(runs / "full0", tmp / "damaged")
        for ckpt in (run / "checkpoints").glob("step-*"):
            (ckpt / "client_state.json").write_text("{}")
        return [run, out], out, "every complete checkpoint is damaged"
    if name == "named checkpoint damaged":
        run = shutil.copytree(runs / "full0", tmp / "damaged")
        (run / "checkpoints" / "step-00000001" / "client_state.json").write_text("{}")
        return [run, out, "--checkpoint", "step-00000001"], out, "--checkpoint 'step-00000001' is damaged"
    if name == "checkpoint of another run":
        other = runs / "full2" / "checkpoints" / "step-00000002"
        return [runs / "full0", out, "--checkpoint", other], out, "is not a checkpoint of RUN_DIR"
    if name == "checkpoint missing":
        return [runs / "full0", out, "--checkpoint", "step-00000009"], out, "--checkpoint 'step-00000009' does not exist"
    if name == "base missing":
        run = shutil.copytree(runs / "lora2", tmp / "moved")
        _rewrite_config(run, path=str(tmp / "no-base"))
        return [run, out], out, f"model.path (recorded in {run}/checkpoints/step-00000002/config.json) " \
                                f"'{tmp / 'no-base'}' does not exist"
    if name == "out not empty":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        return [runs / "full0", out], out, f"OUT_DIR '{out}' is not empty (pass --overwrite to replace it)"
    if name == "out is a file":
        out.write_text("mine")
        return [runs / "full0", out], out, "is a file; expected a new or empty directory"
    if name == "out is the run":
        run = shutil.copytree(runs / "full0", tmp / "run")
        return [run, run, "--overwrite"], run, f"OUT_DIR '{run}' is the run '{run}', which the export reads"
    # Issue 27: a full-parameter run has no adapters, and its checkpoints folder itself was not protected.
    if name == "out is the checkpoints of a full-parameter run":
        run = shutil.copytree(runs / "full0", tmp / "run")
        out = run / "checkpoints"
        return [run, out, "--overwrite"], out, f"OUT_DIR '{out}' is the run's checkpoints '{out}', which the export reads"
    if name == "out is the checkpoints of a LoRA run":
        out = runs / "lora2" / "checkpoints"
        return [runs / "lora2", out, "--overwrite"], out, "is the run's checkpoints"
    if name == "out inside the base":
        run = shutil.copytree(runs / "full0", tmp / "run")
        base = shutil.copytree(Path(json.loads((run / "config.json").read_text())["model"]["path"]), tmp / "base")
        _rewrite_config(run, path=str(base))
        out = base / "export"
        return [run, out], out, f"lies inside the base model '{base}', which the export reads"
    if name == "out holds the tokenizer":
        run = shutil.copytree(runs / "full0", tmp / "run")
        tokenizer = Path(json.loads((run / "config.json").read_text())["model"]["tokenizer"])
        (tmp / "models").mkdir()
        _rewrite_config(run, tokenizer=str(shutil.copytree(tokenizer, tmp / "models" / "tokenizer")))
        out = tmp / "models"
        return [run, out, "--overwrite"], out, f"holds the tokenizer '{out / 'tokenizer'}', which the export reads"
    if name == "out inside a checkpoint of the init_from run":
        stage1 = shutil.copytree(runs / "lora1", tmp / "lora1")
        run = shutil.copytree(runs / "lora2", tmp / "lora2")
        _rewrite_config(run, init_from=str(stage1))
        out = stage1 / "checkpoints" / "step-00000002" / "export"
        return [run, out], out, f"lies inside the checkpoints of an init_from run '{stage1 / 'checkpoints'}'"
    if name == "out inside the checkpoints":
        run = shutil.copytree(runs / "full0", tmp / "run")
        out = run / "checkpoints" / "export"
        return [run, out, "--overwrite"], out, "lies inside the run's checkpoints"
    if name == "adapter-only on a full-parameter run":
        return [runs / "full3", out, "--adapter-only"], out, "--adapter-only needs a LoRA run"
    if name == "planted pickle":
        run = shutil.copytree(runs / "full3", tmp / "planted")
        ckpt = run / "checkpoints" / "step-00000002"
        marker = tmp / "payload-ran"
        torch.save({"optimizer_state_dict": _Payload(str(marker))},
                   next((ckpt / "state").glob("*rank_1*optim_states.pt")))
        write_manifest(ckpt, skip=("COMPLETE",))  # whoever planted it also fixed the manifest
        return [run, out], out, "optim_states.pt: it calls io.open, which the weights-only unpickler refuses"
    raise AssertionError(name)


class _Payload:
    """Unpickling this would create a file: what a planted checkpoint would do, harmlessly."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def _state(path: Path):
    if not path.exists():
        return None
    if path.is_file():
        return path.read_bytes()
    return sorted((str(p.relative_to(path)), p.stat().st_mtime_ns) for p in path.rglob("*"))


CASES = ["run missing", "not a run", "no complete checkpoint", "every checkpoint damaged", "named checkpoint damaged",
         "checkpoint of another run", "checkpoint missing", "base missing", "out not empty", "out is a file",
         "out is the run", "out inside the checkpoints", "adapter-only on a full-parameter run", "planted pickle",
         "out is the checkpoints of a full-parameter run", "out is the checkpoints of a LoRA run", "out inside the base",
         "out holds the tokenizer", "out inside a checkpoint of the init_from run"]


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_error_line_and_leaves_out_dir_untouched(runs, tmp_path, capsys, name):
    tmp = tmp_path
    args, out, expected = _case(name, runs, tmp)
    before, inputs = _state(out), _state(tmp)
    siblings = sorted(p.name for p in out.parent.iterdir()) if out.parent.exists() else []
    status, stdout, err = _export(capsys, *args)
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("export.py: error: ")]
    assert status == 2, (name, err)
    assert len(errors) == 1 and expected in errors[0], (name, expected, err)
    assert _state(out) == before, name
    after = sorted(p.name for p in out.parent.iterdir()) if out.parent.exists() else []
    assert after == siblings, (name, after)  # no OUT_DIR.tmp-* left behind
    assert _state(tmp) == inputs, name  # the runs, checkpoints and models the case reads, all as they were
    assert "wrote" not in stdout, name
    assert not (tmp / "payload-ran").exists(), "the planted pickle ran"


def test_out_dir_may_not_be_hold_or_lie_inside_anything_the_export_reads(tmp_path):
    """check_out_dir alone, on made-up folders (the cases above run the whole command on real runs)."""
    from semgrpo.config import ConfigError
    from semgrpo.export.output import check_out_dir

    run, base = tmp_path / "run", tmp_path / "models" / "base"
    for folder in (run / "checkpoints" / "step-00000002", base):
        folder.mkdir(parents=True)
    (tmp_path / "link").symlink_to(run / "checkpoints")
    reads = [("the run", run, True), ("the run's checkpoints", run / "checkpoints", False),
             ("the base model", base, False)]
    refused = {run: "is the run", run / "checkpoints": "is the run's checkpoints", tmp_path / "link": "is the run's",
               run / "checkpoints" / "x": "lies inside the run's checkpoints", tmp_path / "models": "holds the base",
               tmp_path: "holds the run", base / "export": "lies inside the base model"}
    for out, expected in refused.items():
        with pytest.raises(ConfigError, match=expected):
            check_out_dir(out, overwrite=True, reads=reads)
    for out in (run / "export", tmp_path / "exports" / "x", tmp_path / "models" / "other"):
        check_out_dir(out, overwrite=True, reads=reads)


def _earlier_export(tmp_path: Path) -> Path:
    """An OUT_DIR holding an earlier export, which a failed one must leave as it is."""
    out = tmp_path / "export"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"the earlier export")
    return out


def test_a_full_disk_while_writing_is_one_line_and_keeps_the_earlier_export(runs, tmp_path, capsys, monkeypatch):
    """ENOSPC, as safetensors' writer reports it, once part of the weights reached the staging folder."""
    import transformers.modeling_utils
    from safetensors import SafetensorError

    def disk_fills_up(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 4096)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", disk_fills_up)
    out = _earlier_export(tmp_path)
    before, run = _state(out), _state(runs / "full0")
    status, stdout, err = _export(capsys, runs / "full0", out, "--overwrite")
    errors = [line for line in err.splitlines() if line.startswith("export.py: error: ")]
    assert status == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert "writing the export failed (Error while serializing: I/O error: No space left on device (os error 28))" \
        in errors[0] and "is removed and OUT_DIR is as it was" in errors[0], errors[0]
    assert _state(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no staging left
    assert _state(runs / "full0") == run and "wrote" not in stdout


def test_a_write_the_file_system_refuses_is_the_same_one_line(runs, tmp_path):
    """A real I/O error from the writers: the export's process may write files of 512 KiB at most (RLIMIT_FSIZE,
    EFBIG: what a quota does), and the tiny model's weights are larger. CPython ignores SIGXFSZ."""
    out = _earlier_export(tmp_path)
    before = _state(out)

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (2**19, 2**19))

    proc = subprocess.run([sys.executable, str(REPO / "bin" / "export.py"), str(runs / "full0"), str(out),
                           "--overwrite"], cwd=REPO, env=user_env(), capture_output=True, text=True, timeout=600,
                          preexec_fn=limit_file_size)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("export.py: error: ")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "File too large (os error 27)" in errors[0] and "OUT_DIR is as it was" in errors[0], errors[0]
    assert _state(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_entry_point_prints_one_error_line_and_exits_2(tmp_path):
    proc = run_cli("export.py", str(tmp_path / "no-run"), str(tmp_path / "out"))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [f"export.py: error: RUN_DIR '{tmp_path / 'no-run'}' does not exist"]
    assert sorted(tmp_path.iterdir()) == []


def test_consolidated_weights_must_fit_the_base_exactly():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from semgrpo.checkpoint.state_files import CheckpointError
    from semgrpo.export.zero import load_into

    cfg = Qwen3Config(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=8, tie_word_embeddings=True)
    torch.manual_seed(0)
    trained = {k: v + 0.5 for k, v in Qwen3ForCausalLM(cfg).state_dict().items()}
    model = Qwen3ForCausalLM(cfg)
    load_into(model, trained, base="b")  # lm_head.weight and its tied partner: both given, equal
    assert torch.equal(model.lm_head.weight, trained["model.embed_tokens.weight"])
    assert model.lm_head.weight is model.model.embed_tokens.weight
    load_into(model, {k: v for k, v in trained.items() if k != "lm_head.weight"}, base="b")  # the alias may go

    bad = {
        "missing": {k: v for k, v in trained.items() if k != "model.norm.weight"},
        "unexpected": {**trained, "model.extra.weight": torch.zeros(3)},
        "not loaded as stored": {**trained, "lm_head.weight": trained["lm_head.weight"] + 1},
        "do not fit": {**trained, "model.norm.weight": torch.zeros(7)},
    }
    for expected, state in bad.items():
        with pytest.raises(CheckpointError, match=expected):
            load_into(Qwen3ForCausalLM(cfg), state, base="b")


def test_pickle_payload_fixture_really_is_a_payload(tmp_path):
    """The planted-pickle case above means something: a full unpickler does run this payload."""
    path = tmp_path / "evil.pt"
    torch.save({"x": _Payload(str(tmp_path / "ran"))}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    torch.load(path, weights_only=False)
    assert (tmp_path / "ran").exists()
