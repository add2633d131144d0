"""Issue #12: a damaged newest checkpoint falls back to an intact one; our state files are not pickles.

One single-process ZeRO-3 engine (CPU, gloo) for the whole module.
"""
from __future__ import annotations

import json
import logging
import pickle
import shutil

import pytest
import torch
from _ds_single import ds_config, init_single_process, make_engine
from test_checkpoint import _peft_model, _train

from semgrpo.checkpoint import (
    MANIFEST_FILE,
    CheckpointError,
    clean_stale_tmp,
    find_latest_checkpoint,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
)


@pytest.fixture(scope="module")
def engine():
    init_single_process()
    eng = make_engine(_peft_model(), ds_config(stage=3, lr=1e-2))
    eng.train()
    return eng


@pytest.fixture
def two_checkpoints(engine, tmp_path):
    _train(engine, 1)
    old = save_checkpoint(engine, tmp_path, step=1, client_state={"step": 1, "tau": 0.5}, keep_last=3)
    _train(engine, 1, start=1)
    new = save_checkpoint(engine, tmp_path, step=2, client_state={"step": 2, "tau": 0.5}, keep_last=3)
    return old, new


def _files(ckpt, pattern):
    found = sorted(p for p in ckpt.rglob(pattern) if p.is_file())
    assert found, f"no {pattern} under {ckpt}"
    return found[0]


def _truncate(f):
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])


def _zero(f):
    f.write_bytes(b"\0" * f.stat().st_size)


def _delete(f):
    f.unlink()


@pytest.mark.parametrize("pattern,damage", [
    ("*optim_states.pt", _truncate),
    ("*model_states.pt", _zero),
    ("rng_rank0*", _delete),
], ids=["optim-truncated", "model-zeroed", "rng-deleted"])
def test_damaged_newest_checkpoint_falls_back(two_checkpoints, tmp_path, pattern, damage, caplog):
    old, new = two_checkpoints
    bad = _files(new, pattern)
    damage(bad)
    rel = bad.relative_to(new).as_posix()
    with caplog.at_level(logging.WARNING, logger="semgrpo.checkpoint"):
        assert resolve_resume("auto", tmp_path) == old
        assert find_latest_checkpoint(tmp_path) == old
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(new.name in w and rel in w and "\n" not in w for w in warnings), warnings
    # Named explicitly, the damaged checkpoint is a user error naming the file, not a traceback.
    with pytest.raises(CheckpointError, match=rel.replace(".", r"\.")):
        resolve_resume(str(new), tmp_path)
    assert resolve_resume(str(old), tmp_path) == old


def test_manifest_lists_every_file(two_checkpoints):
    _, new = two_checkpoints
    manifest = json.loads((new / MANIFEST_FILE).read_text())
    on_disk = sorted(p.relative_to(new).as_posix() for p in new.rglob("*") if p.is_file())
    assert sorted(manifest["files"]) == [n for n in on_disk if n not in (MANIFEST_FILE, "COMPLETE")]
    assert all(set(v) == {"size", "xxh3_64"} for v in manifest["files"].values())
    assert manifest["files"]["client_state.json"]["size"] == (new / "client_state.json").stat().st_size


def test_checkpoint_without_manifest_is_accepted(two_checkpoints, tmp_path, engine):
    old, new = two_checkpoints
    (new / MANIFEST_FILE).unlink(missing_ok=True)  # as saved by an older version
    assert resolve_resume("auto", tmp_path) == new
    assert load_checkpoint(engine, new)["step"] == 2


def test_damaged_checkpoint_without_manifest_is_a_checkpoint_error(two_checkpoints, tmp_path, engine):
    old, new = two_checkpoints
    (new / MANIFEST_FILE).unlink(missing_ok=True)
    _truncate(_files(new, "*optim_states.pt"))
    with pytest.raises(CheckpointError, match="step-00000002"):
        load_checkpoint(engine, new)
    load_checkpoint(engine, old)  # the engine is still usable


class _Planted:
    """Unpickling this writes a marker file: what an attacker's state file would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (shutil.copyfile, (__file__, self.marker))


def test_own_state_files_are_json_not_pickles(two_checkpoints):
    _, new = two_checkpoints
    rng = json.loads((new / "rng_rank0.json").read_text())
    assert set(rng) >= {"python", "numpy", "torch"}
    assert json.loads((new / "client_state.json").read_text()) == {"step": 2, "tau": 0.5}
    assert not list(new.glob("rng_rank*.pt"))
    # DeepSpeed's own files no longer carry our client state.
    ds = torch.load(_files(new, "*model_states.pt"), map_location="cpu", weights_only=False)
    assert "semgrpo_client_state" not in ds


@pytest.mark.parametrize("target", ["rng_rank0.json", "client_state.json", "*optim_states.pt"])
def test_planted_pickle_is_not_executed(two_checkpoints, tmp_path, engine, target):
    _, new = two_checkpoints
    marker = tmp_path / "PWNED"
    victim = _files(new, target) if "*" in target else new / target
    with open(victim, "wb") as f:
        if victim.suffix == ".pt":
            torch.save({"payload": _Planted(marker)}, f)
        else:
            pickle.dump(_Planted(marker), f)
    (new / MANIFEST_FILE).unlink(missing_ok=True)  # the attacker rewrites the manifest too: only the loader protects
    with pytest.raises(Exception) as raised:
        load_checkpoint(engine, new)
    assert not marker.exists(), "resume executed code planted in a checkpoint"
    assert raised.type is CheckpointError, raised.value


def test_clean_stale_tmp_removes_only_tmp_dirs(two_checkpoints, tmp_path):
    old, new = two_checkpoints
    (tmp_path / "checkpoints" / ".tmp-step-00000003" / "state").mkdir(parents=True)
    clean_stale_tmp(tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [old.name, new.name]
    clean_stale_tmp(tmp_path / "no-such-run")  # nothing to clean is fine
