"""Atomic save and resume of a DeepSpeed engine, its LoRA adapter, per-rank RNG state and client state.

Layout under `<output_dir>/checkpoints/`:

    step-00000010/            a complete checkpoint (it holds COMPLETE)
        state/                engine.save_checkpoint(tag="state"): ZeRO shards, optimizer, scheduler, client_state
        rng_rank{r}.pt        python `random`, numpy, torch CPU (and CUDA) RNG state of rank r
        adapter/              PEFT adapter (PeftModel.from_pretrained) when the module is a PeftModel
        config.json           the run's configuration this checkpoint was trained with (when given)
        COMPLETE              json {"step", "time", "world_size"}; written last
    .tmp-step-00000020/       a save in progress, or one that was killed: ignored, removed by the next save

A checkpoint becomes visible only through an atomic `os.replace` of its finished `.tmp-` directory, so
a killed save never leaves a `step-*` directory behind. The filesystem must be shared by all ranks.
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semgrpo import dist

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
ENGINE_TAG = "state"
ADAPTER_DIR = "adapter"
COMPLETE_FILE = "COMPLETE"
CONFIG_FILE = "config.json"
TMP_PREFIX = ".tmp-"
_CLIENT_KEY = "semgrpo_client_state"  # our state under one key: DeepSpeed mixes its own keys in
_STEP_RE = re.compile(r"^step-(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint path that does not exist, is not complete, or failed to load."""


# ----------------------------------------------------------------------------------------------- files


def write_json_atomic(path: str | os.PathLike, obj: Any, *, sort_keys: bool = True) -> Path:
    """Write `obj` as JSON to `path` so readers see the old file or the new one, never a partial one.

    Writes a sibling temporary file, fsyncs it, then `os.replace`s it over `path`. Non-finite floats
    are rejected (strict JSON).

    Args:
        path: destination file; its parent directory must exist.
        obj: anything `json.dumps` accepts.
        sort_keys: sorted keys (stable diffs); False keeps insertion order where it carries meaning.

    Returns:
        `path` as a Path.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {str(path)!r}: directory {str(path.parent)!r} does not exist")
    text = json.dumps(obj, indent=2, sort_keys=sort_keys, allow_nan=False) + "\n"
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    """Make a rename inside `directory` durable (best effort: not every platform allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
    """The complete checkpoint with the highest step under `<output_dir>/checkpoints`, or None.

    `.tmp-*` directories (killed saves) and `step-*` directories without COMPLETE are ignored.
    """
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


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
        CheckpointError: `resume` names a path that is not a complete checkpoint.
    """
    if resume is None:
        return None
    if not isinstance(resume, (str, os.PathLike)):
        raise CheckpointError(f"resume={resume!r} has type {type(resume).__name__}; expected a str path, 'auto' or 'none'")
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
    return path


# ------------------------------------------------------------------------------------------------- RNG


def _rng_state() -> dict[str, Any]:
    """This process's RNG states, as types `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            log.warning("checkpoint holds CUDA RNG state for %d devices, this process sees %d: not restored",
                        len(state["cuda"]), torch.cuda.device_count())


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
        client_state: picklable trainer state (data position, counters, tau...), returned as is
            by `load_checkpoint`.
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

    root = _checkpoints_root(output_dir)
    final = root / _step_name(step)
    tmp = root / f"{TMP_PREFIX}{_step_name(step)}"
    if dist.is_main():
        root.mkdir(parents=True, exist_ok=True)
        _clean_tmp_dirs(root)
        tmp.mkdir()
    dist.barrier()

    engine.save_checkpoint(str(tmp), tag=ENGINE_TAG, client_state={_CLIENT_KEY: client_state})
    torch.save(_rng_state(), tmp / f"rng_rank{dist.rank()}.pt")
    _save_adapter(engine.module, tmp / ADAPTER_DIR)
    dist.barrier()

    if dist.is_main():
        if config is not None:
            write_json_atomic(tmp / CONFIG_FILE, config)
        write_json_atomic(tmp / COMPLETE_FILE, {"step": step, "time": time.time(), "world_size": dist.world_size()})
        if final.exists():
            _remove_checkpoint(final)
        os.replace(tmp, final)
        _fsync_dir(root)
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
        raise CheckpointError(f"{str(path)!r} is not a complete checkpoint (a step-NNNNNNNN dir holding {COMPLETE_FILE})")
    load_path, client_state = engine.load_checkpoint(
        str(path), tag=ENGINE_TAG, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if load_path is None:
        raise CheckpointError(f"DeepSpeed found no engine state under {str(path / ENGINE_TAG)!r}")
    rng_file = path / f"rng_rank{dist.rank()}.pt"
    if rng_file.is_file():
        _set_rng_state(torch.load(rng_file, weights_only=True))
    else:
        log.warning("%s is missing (saved with another world size?): RNG state not restored", rng_file)
    if not client_state or _CLIENT_KEY not in client_state:
        raise CheckpointError(f"{str(path)!r} holds no semgrpo client state (not written by save_checkpoint?)")
    return client_state[_CLIENT_KEY]
