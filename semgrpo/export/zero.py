"""Full-parameter runs: the ZeRO shards under a checkpoint's state/ consolidated into one model.

The consolidation is DeepSpeed's own (`deepspeed.utils.zero_to_fp32`), which reassembles the fp32 master
weights of ZeRO-1/2/3 checkpoints from every rank's optimizer file. That module unpickles with a full
`torch.load(weights_only=False)`; here it runs with its `torch.load` swapped for torch's restricted
weights-only unpickler and the allow-list semgrpo uses to resume (`checkpoint.state_files`), so a planted
pickle fails to load instead of running. A checkpoint saved without ZeRO (stage 0) has no optimizer
shards: its one model-states file holds the weights as trained.
"""
from __future__ import annotations

import contextlib
import pickle
import re
import sys
from pathlib import Path

import torch

from semgrpo.checkpoint.state_files import CheckpointError, _deepspeed_safe_globals


def _weights_only_load(f, map_location=None, *, mmap=None, **_ignored):
    """`torch.load` as zero_to_fp32 calls it, but always weights-only (its `weights_only=False` is dropped)."""
    try:
        with torch.serialization.safe_globals(_deepspeed_safe_globals()):
            return torch.load(f, map_location=map_location, mmap=bool(mmap), weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's text is a page of advice; keep the file and the refused name
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        what = f"it calls {found.group(1)}, which" if found else "it holds something"
        raise pickle.UnpicklingError(f"{Path(f).name}: {what} the weights-only unpickler refuses") from None


class _TorchWithSafeLoad:
    """Stands in for the `torch` module inside zero_to_fp32: everything is torch's, except `load`."""

    load = staticmethod(_weights_only_load)

    def __getattr__(self, name):
        return getattr(torch, name)


@contextlib.contextmanager
def _safe_unpickling(module):
    original = module.torch
    module.torch = _TorchWithSafeLoad()
    try:
        yield
    finally:
        module.torch = original


def consolidated_state_dict(state_dir: Path) -> dict[str, torch.Tensor]:
    """The full model's weights (fp32 for ZeRO checkpoints) from the engine files under `state_dir`.

    Raises:
        CheckpointError: the files are missing, damaged, or hold something the weights-only unpickler refuses.
    """
    from deepspeed.utils import zero_to_fp32

    optimizer_files = sorted(state_dir.glob("*_optim_states.pt"))
    try:
        # DeepSpeed prints its progress: stdout is for this command's own lines.
        with _safe_unpickling(zero_to_fp32), contextlib.redirect_stdout(sys.stderr):
            if optimizer_files:
                merged = zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint(str(state_dir.parent),
                                                                               tag=state_dir.name)
            else:
                merged = _stage0_weights(state_dir)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, KeyError, ValueError, AssertionError) as exc:
        detail = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"{state_dir}: the ZeRO shards cannot be consolidated ({type(exc).__name__}: "
                              f"{detail}); the checkpoint is damaged or untrusted") from None
    return dict(merged)


def _stage0_weights(state_dir: Path) -> dict[str, torch.Tensor]:
    files = sorted(state_dir.glob("*_model_states.pt"))
    if len(files) != 1:
        raise ValueError(f"expected one *_model_states.pt without ZeRO optimizer shards, found {len(files)}")
    state = _weights_only_load(str(files[0]), map_location="cpu")
    module = state.get("module") if isinstance(state, dict) else None
    if not isinstance(module, dict) or not module:
        raise ValueError(f"{files[0].name} holds no module weights")
    return {name: t.float() if t.is_floating_point() else t for name, t in module.items()}


def load_into(model, state_dict: dict[str, torch.Tensor], *, base: str) -> None:
    """Overwrite every weight of `model` (the base, loaded in fp32) with the consolidated `state_dict`.

    The consolidated keys are the trained module's own parameter names, so they must match the model's
    exactly: every weight must come from `state_dict` and every tensor of it must land in the model as
    stored. A tied alias (lm_head.weight of tied embeddings) may be absent when its partner is present; a
    tied pair stored with two different values would keep only one of them, so values are compared after
    loading.

    Raises:
        CheckpointError: keys missing, unexpected or of another shape: the checkpoint is not of this base.
    """
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as exc:  # a tensor of another shape
        raise CheckpointError(f"the consolidated weights do not fit model.path {base!r}: "
                              f"{' '.join(str(exc).split())[:300]}") from None
    loaded = model.state_dict()
    missing = sorted(k for k in result.missing_keys if not _aliased(k, loaded, state_dict))
    unexpected = sorted(result.unexpected_keys)
    changed = sorted(k for k in state_dict
                     if k in loaded and not torch.equal(loaded[k], state_dict[k].to(loaded[k].dtype)))
    for label, keys in (("missing", missing), ("unexpected", unexpected),
                        ("not loaded as stored (a tied pair saved with two values?)", changed)):
        if keys:
            raise CheckpointError(f"the consolidated weights do not fit model.path {base!r}: {len(keys)} "
                                  f"{label}, e.g. {', '.join(keys[:5])}")


def _aliased(key: str, loaded: dict[str, torch.Tensor], stored: dict[str, torch.Tensor]) -> bool:
    """True when `key` shares its storage with a key that `stored` holds (tied weights)."""
    ptr = loaded[key].data_ptr()
    return any(other in stored and loaded[other].data_ptr() == ptr for other in loaded if other != key)
