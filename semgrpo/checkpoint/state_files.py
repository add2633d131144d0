"""Our own checkpoint state files, read without unpickling, and DeepSpeed's files loaded with torch's
restricted unpickler.

RNG state and trainer state are JSON (torch byte states as lists of ints). DeepSpeed 0.19 loads its
optimizer files with a full unpickler; `weights_only_load` replaces that with `torch.load(weights_only=True)`
and an allow-list of the plain data classes DeepSpeed stores, so a planted pickle fails instead of running.
"""
from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semgrpo import dist
from semgrpo.errors import UserError

log = logging.getLogger("semgrpo.checkpoint")


class CheckpointError(UserError):
    """A checkpoint path that does not exist, is not complete, or failed to load."""


def rng_state() -> dict[str, Any]:
    """This process's RNG states as plain JSON values (torch byte states as lists of ints)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 - the global state is what we restore
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.astype(np.int64).tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _bytes_tensor(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.uint8) if not torch.is_tensor(values) else values


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    keys = keys.numpy() if torch.is_tensor(keys) else np.asarray(keys, dtype=np.int64)
    np.random.set_state((kind, keys.astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    torch.set_rng_state(_bytes_tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([_bytes_tensor(s) for s in state["cuda"]])
        else:
            log.warning("checkpoint holds CUDA RNG state for %d devices, this process sees %d: not restored",
                        len(state["cuda"]), torch.cuda.device_count())


def read_json(file: Path, checkpoint: Path) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{checkpoint}: {file.name} is not valid JSON ({type(exc).__name__}); "
                              f"the checkpoint is damaged or untrusted") from None


def read_rng_state(path: Path) -> dict | None:
    """This rank's RNG state: rng_rank{r}.json, or an older checkpoint's .pt (tensors only), or None."""
    json_file, legacy = path / f"rng_rank{dist.rank()}.json", path / f"rng_rank{dist.rank()}.pt"
    if json_file.is_file():
        state = read_json(json_file, path)
        if not isinstance(state, dict) or not {"python", "numpy", "torch"} <= set(state):
            raise CheckpointError(f"{path}: {json_file.name} is not an RNG state")
        return state
    if legacy.is_file():
        try:
            return torch.load(legacy, weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"{path}: {legacy.name} cannot be loaded ({type(exc).__name__})") from None
    log.warning("%s is missing (saved with another world size?): RNG state not restored", json_file)
    return None


def _deepspeed_safe_globals() -> list:
    """The non-tensor classes DeepSpeed 0.19 pickles into its optimizer files: plain data, no code."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    safe = [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]
    try:
        from deepspeed.runtime.zero.offload_config import OffloadDeviceEnum, OffloadStateTypeEnum
    except ImportError:
        pass
    else:
        safe += [OffloadDeviceEnum, OffloadStateTypeEnum]
    return safe


def weights_only_load(path: str, map_location=None):
    """DeepSpeed's checkpoint-engine `load`, with torch's restricted unpickler instead of a full one."""
    with torch.serialization.safe_globals(_deepspeed_safe_globals()):
        return torch.load(path, map_location=map_location, weights_only=True)
