"""Atomic save and resume of a DeepSpeed engine, its LoRA adapter, per-rank RNG state and client state.

Layout under `<output_dir>/checkpoints/`:

    step-00000010/            a complete checkpoint (it holds COMPLETE)
        state/                engine.save_checkpoint(tag="state"): ZeRO shards, optimizer, scheduler
        rng_rank{r}.json      python `random`, numpy, torch CPU (and CUDA) RNG state of rank r (JSON)
        client_state.json     the trainer's state (step, tau, ...), JSON
        adapter/              PEFT adapter (PeftModel.from_pretrained) when the module is a PeftModel
        config.json           the run's configuration this checkpoint was trained with (when given)
        MANIFEST.json         every file above: {"files": {relpath: {"size", "xxh3_64"}}}
        COMPLETE              json {"step", "time", "world_size"}; written last
    .tmp-step-00000020/       a save in progress, or one that was killed: ignored, removed at the next
                              start (`resolve_resume`) and by the next save

A checkpoint becomes visible only through an atomic `os.replace` of its finished `.tmp-` directory, so
a killed save never leaves a `step-*` directory behind. The filesystem must be shared by all ranks.

Integrity. `resolve_resume` checks the newest checkpoint against its manifest: every listed file must
exist with its size and its xxh3-64 checksum. xxh3 runs at several GB/s per core (memory bandwidth), so
hashing costs about what reading the files back costs, and a resume reads them anyway: every file is
checksummed, always, by every rank that resolves the resume (the same deterministic check on the same
shared files, so all ranks pick the same checkpoint; a verdict is cached for unchanged files). A
damaged newest checkpoint is skipped with a one-line warning (resume=auto) or is a CheckpointError
(resume=<path>). Checkpoints from before manifests are accepted unchecked.

Trust. Our own files (RNG, client state, manifest) are JSON and are read without unpickling. The
engine's files under state/ are DeepSpeed's torch pickles; `load_checkpoint` reads them with
`torch.load(weights_only=True)` and a short allow-list of the plain types DeepSpeed stores, so a planted
pickle fails to load instead of running. Still, resume only from folders you trust.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import time
from pathlib import Path

import torch

from semgrpo import dist
from semgrpo.checkpoint.integrity import MANIFEST_FILE as MANIFEST_FILE  # re-exported
from semgrpo.checkpoint.integrity import verify_checkpoint, write_manifest
from semgrpo.checkpoint.state_files import (
    CheckpointError,
    read_json,
    read_rng_state,
    rng_state,
    set_rng_state,
    weights_only_load,
)
from semgrpo.files import fsync_dir, write_json_atomic

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
ENGINE_TAG = "state"
ADAPTER_DIR = "adapter"
COMPLETE_FILE = "COMPLETE"
CONFIG_FILE = "config.json"
CLIENT_STATE_FILE = "client_state.json"
TMP_PREFIX = ".tmp-"
_CLIENT_KEY = "semgrpo_client_state"  # our state under one key: DeepSpeed mixes its own keys in
_STEP_RE = re.compile(r"^step-(\d+)$")
_WARNED: set[tuple[str, str]] = set()  # damaged checkpoints already reported in this process


def _step_name(step: int) -> str:
    return f"step-{step:08d}"


def _checkpoints_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """True when `path` is a `step-*` directory holding a COMPLETE marker."""
    p = Path(path)
    return p.is_dir() and _STEP_RE.match(p.name) is not None and (p / COMPLETE_FILE).is_file()


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints under `<output_dir>/checkpoints` as (step, path), oldest step first."""
    root = _checkpoints_root(output_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _STEP_RE.match(child.name)
        if m and is_complete_checkpoint(child):
            found.append((int(m.group(1)), child))
    return sorted(found)


def find_latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest intact complete checkpoint under `<output_dir>/checkpoints`, or None.

    `.tmp-*` directories (killed saves) and `step-*` directories without COMPLETE are ignored. A
    checkpoint whose files do not match its manifest is skipped with a one-line warning naming it and
    its bad file, and the next older one is tried. Not collective: every rank that calls it checks the
    same files the same way (`verify_checkpoint`), so all ranks pick the same checkpoint.
    """
    for _, path in reversed(list_checkpoints(output_dir)):
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        if dist.is_main() and (str(path), problem) not in _WARNED:  # once, though a start resolves twice
            _WARNED.add((str(path), problem))
            log.warning("checkpoint %s is damaged (%s): skipped, falling back to an older one", path, problem)
    return None


def clean_stale_tmp(output_dir: str | os.PathLike) -> None:
    """Rank 0: remove `.tmp-*` leftovers of killed saves under `<output_dir>/checkpoints`."""
    root = _checkpoints_root(output_dir)
    if dist.is_main() and root.is_dir():
        _clean_tmp_dirs(root)


def resolve_resume(resume: str | os.PathLike | None, output_dir: str | os.PathLike) -> Path | None:
    """Turn the `resume` config value into a checkpoint path.

    Args:
        resume: None, "" or "none" (case-insensitive): start fresh; "auto": the latest complete
            checkpoint in `output_dir`, or None when there is none; anything else: the path of a
            complete checkpoint.
        output_dir: the run's output directory.

    Returns:
        The checkpoint directory, or None to start from scratch.

    Raises:
        CheckpointError: `resume` names a path that is not a complete checkpoint, or one whose files do
            not match its manifest.

    Not collective (callers may run it on rank 0 alone): every rank that calls it verifies the same
    files the same way, so all reach the same verdict; a verdict is cached for unchanged files.
    """
    if resume is None:
        return None
    if not isinstance(resume, (str, os.PathLike)):
        raise CheckpointError(f"resume={resume!r} has type {type(resume).__name__}; "
                              "expected a str path, 'auto' or 'none'")
    text = os.fspath(resume).strip()
    if text == "" or text.lower() == "none":
        return None
    if text.lower() == "auto":
        return find_latest_checkpoint(output_dir)
    path = Path(text)
    if not path.exists():
        raise CheckpointError(f"resume={text!r} does not exist; expected a checkpoint directory, 'auto' or 'none'")
    if not path.is_dir() or _STEP_RE.match(path.name) is None:
        raise CheckpointError(
            f"resume={text!r} is not a checkpoint directory; expected <output_dir>/checkpoints/step-NNNNNNNN"
        )
    if not (path / COMPLETE_FILE).is_file():
        raise CheckpointError(f"resume={text!r} is incomplete (no {COMPLETE_FILE} file: its save did not finish)")
    problem = verify_checkpoint(path)
    if problem is not None:
        raise CheckpointError(f"resume={text!r} is damaged: {problem}; resume from an older checkpoint or "
                              f"resume=auto (the newest intact one)")
    return path


# --------------------------------------------------------------------------------------------- adapter


def _save_adapter(module: torch.nn.Module, directory: Path) -> None:
    """Collective: gather the trainable (LoRA) parameters and let rank 0 write a PEFT adapter dir."""
    try:
        from peft import PeftModel
    except ImportError:  # peft is a requirement, but the engine may wrap a plain module
        return
    if not isinstance(module, PeftModel):
        return
    import deepspeed

    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    state_dict: dict[str, torch.Tensor] = {}
    # Under ZeRO-3 each rank holds a shard; GatheredParameters is a no-op for unpartitioned params.
    with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
        if dist.is_main():
            state_dict = {n: p.detach().to("cpu", copy=True).contiguous() for n, p in named}
    if dist.is_main():
        selected = [a for a in module.peft_config if any(f".{a}." in n for n in state_dict)] or None
        module.save_pretrained(str(directory), state_dict=state_dict, selected_adapters=selected,
                               is_main_process=True)


# ------------------------------------------------------------------------------------------- save/load


def _clean_tmp_dirs(root: Path) -> None:
    for child in root.iterdir():
        if child.name.startswith(TMP_PREFIX) and child.is_dir():
            shutil.rmtree(child, ignore_errors=True)


def _remove_checkpoint(path: Path) -> None:
    """Rename out of sight first, so a crash mid-delete never leaves a half-deleted `step-*` dir."""
    doomed = path.with_name(f"{TMP_PREFIX}delete-{path.name}")
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def save_checkpoint(engine, output_dir: str | os.PathLike, *, step: int, client_state: dict,
                    keep_last: int, config: dict | None = None) -> Path:
    """Collective (every rank calls it): save the engine, RNG, adapter and `client_state` atomically.

    Writes `<output_dir>/checkpoints/.tmp-step-NNNNNNNN`, then rank 0 writes COMPLETE into it and
    renames it to `step-NNNNNNNN`. Stale `.tmp-*` dirs from killed saves are removed first, and
    complete checkpoints beyond the newest `keep_last` (by step) are deleted last; the checkpoint just
    written is never deleted. Saving a step that already exists replaces it.

    Args:
        engine: a `deepspeed.DeepSpeedEngine`.
        output_dir: the run's output directory.
        step: the number of finished training steps; names the checkpoint.
        client_state: trainer state (data position, counters, tau...) made of JSON values, stored as
            client_state.json (not a pickle) and returned by `load_checkpoint`.
        keep_last: how many complete checkpoints to keep (>= 1).
        config: the run's resolved configuration (`config.to_dict`), stored as the checkpoint's
            `config.json`: resume and evaluation read the settings of the checkpoint itself.

    Returns:
        The path of the complete checkpoint.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step={step!r}; expected an int >= 0")
    if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
        raise ValueError(f"keep_last={keep_last!r}; expected an int >= 1")
    if not isinstance(client_state, dict):
        raise ValueError(f"client_state has type {type(client_state).__name__}; expected a dict")
    try:
        json.dumps(client_state, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"client_state is not plain JSON data ({exc})") from None

    root = _checkpoints_root(output_dir)
    final = root / _step_name(step)
    tmp = root / f"{TMP_PREFIX}{_step_name(step)}"
    if dist.is_main():
        root.mkdir(parents=True, exist_ok=True)
        _clean_tmp_dirs(root)
        tmp.mkdir()
    dist.barrier()

    engine.save_checkpoint(str(tmp), tag=ENGINE_TAG, client_state={})
    write_json_atomic(tmp / f"rng_rank{dist.rank()}.json", rng_state())
    _save_adapter(engine.module, tmp / ADAPTER_DIR)
    if dist.is_main():
        write_json_atomic(tmp / CLIENT_STATE_FILE, client_state)
        if config is not None:
            write_json_atomic(tmp / CONFIG_FILE, config)
    dist.barrier()
    write_manifest(tmp, skip=(COMPLETE_FILE,))
    dist.barrier()

    if dist.is_main():
        write_json_atomic(tmp / COMPLETE_FILE, {"step": step, "time": time.time(), "world_size": dist.world_size()})
        if final.exists():
            _remove_checkpoint(final)
        os.replace(tmp, final)
        fsync_dir(root)
    dist.barrier()

    if dist.is_main():
        complete = list_checkpoints(output_dir)
        keep = {p for _, p in complete[-keep_last:]} | {final}
        for _, path in complete:
            if path not in keep:
                _remove_checkpoint(path)
    return final


def checkpoint_config(path: str | os.PathLike) -> dict | None:
    """The configuration a checkpoint was trained with, or None for checkpoints saved without one."""
    file = Path(path) / CONFIG_FILE
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{file}: unreadable checkpoint config ({exc})") from None


def load_checkpoint(engine, path: str | os.PathLike) -> dict:
    """Collective: restore engine weights, optimizer, LR scheduler and this rank's RNG state.

    Args:
        engine: a `deepspeed.DeepSpeedEngine` built like the one that saved (same ZeRO stage, world size).
        path: a complete checkpoint directory (as returned by `resolve_resume`).

    Returns:
        The `client_state` dict given to `save_checkpoint`.

    Raises:
        CheckpointError: `path` is not a complete checkpoint, or DeepSpeed found nothing to load.
    """
    path = Path(path)
    if not is_complete_checkpoint(path):
        raise CheckpointError(f"{str(path)!r} is not a complete checkpoint "
                              f"(a step-NNNNNNNN dir holding {COMPLETE_FILE})")
    client_file = path / CLIENT_STATE_FILE
    own_client = read_json(client_file, path) if client_file.is_file() else None
    if own_client is not None and not isinstance(own_client, dict):
        raise CheckpointError(f"{path}: {CLIENT_STATE_FILE} holds a {type(own_client).__name__}, expected an object")
    rng_state = read_rng_state(path)

    checkpoint_engine = getattr(engine, "checkpoint_engine", None)
    patched = checkpoint_engine is not None and hasattr(checkpoint_engine, "load")
    if patched:
        checkpoint_engine.load = weights_only_load  # instance attribute: shadows DeepSpeed's unpickling load
    try:
        load_path, ds_client = engine.load_checkpoint(
            str(path), tag=ENGINE_TAG, load_optimizer_states=True, load_lr_scheduler_states=True
        )
    except (RuntimeError, EOFError, AssertionError, OSError, KeyError, ValueError, pickle.UnpicklingError) as exc:
        detail = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"{path}: DeepSpeed state cannot be loaded ({type(exc).__name__}: {detail}); "
                              f"the checkpoint is damaged or untrusted: resume from another one") from None
    finally:
        if patched:
            del checkpoint_engine.load
    if load_path is None:
        raise CheckpointError(f"DeepSpeed found no engine state under {str(path / ENGINE_TAG)!r}")
    if rng_state is not None:
        set_rng_state(rng_state)
    if own_client is not None:
        return own_client
    if not ds_client or _CLIENT_KEY not in ds_client:  # checkpoints saved before client_state.json
        raise CheckpointError(f"{str(path)!r} holds no semgrpo client state (not written by save_checkpoint?)")
    return ds_client[_CLIENT_KEY]


