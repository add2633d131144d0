"""OUT_DIR: checked before any work, written as a sibling `OUT_DIR.tmp-<pid>` and renamed into place at
the end, so a failed or killed export never leaves a half-written model folder under the name asked for.

With --overwrite an existing OUT_DIR is first renamed to `OUT_DIR.old-<pid>`, the new folder renamed in,
then the old one deleted: a crash between the two renames leaves the old export under `.old-`, never a mix.
OUT_DIR can never be, hold or lie inside anything the export reads (`check_out_dir`), so --overwrite cannot
delete an input; a write that fails (a full disk) removes the staging folder and leaves OUT_DIR as it was.
"""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from semgrpo.config import ConfigError
from semgrpo.files import fsync_dir, process_alive
from semgrpo.modeling import TORCH_DTYPES, _Loading


def check_out_dir(out: Path, *, overwrite: bool, reads: Iterable[tuple[str, Path, bool]]) -> None:
    """Refuse an OUT_DIR that is a file, is or holds anything of `reads`, lies inside one of them (unless its
    third item allows that: the run folder may hold its export) or, without `overwrite`, is not empty.

    Args:
        reads: (what, path, may hold OUT_DIR) for everything the export reads. Reads only.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"OUT_DIR {str(out)!r} is a file; expected a new or empty directory")
    target = out.resolve()
    for what, path, may_hold_out in reads:
        path = path.resolve()
        if target == path:
            raise ConfigError(f"OUT_DIR {str(out)!r} is {what} {str(path)!r}, which the export reads; choose "
                              "another folder")
        if target in path.parents:
            raise ConfigError(f"OUT_DIR {str(out)!r} holds {what} {str(path)!r}, which the export reads "
                              "(replacing OUT_DIR would delete it); choose another folder")
        if path in target.parents and not may_hold_out:
            raise ConfigError(f"OUT_DIR {str(out)!r} lies inside {what} {str(path)!r}, which the export reads; "
                              "choose a folder outside it")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"OUT_DIR {str(out)!r} is not empty (pass --overwrite to replace it)")
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"OUT_DIR {str(out)!r} cannot be created: {str(existing)!r} is not a writable directory")


@contextlib.contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """Yield an empty staging folder beside `out`; on a clean exit it replaces `out`, else it is removed."""
    out = out.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(out)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        _usual_modes(tmp)
        _publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a publish


def _publish(tmp: Path, out: Path) -> None:
    if out.exists():
        old = out.with_name(f"{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
    fsync_dir(out.parent)


def _usual_modes(folder: Path) -> None:
    """Files as the user's umask makes them: some writers create theirs 0600 (a temporary file renamed),
    which a server running as another user could not read."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)


def _remove_stale(out: Path) -> None:
    """Staging folders of earlier exports to this OUT_DIR whose process is gone (killed mid-write)."""
    for sibling in out.parent.glob(f"{glob.escape(out.name)}.tmp-*"):
        pid = sibling.name.rsplit("-", 1)[-1]
        if sibling.is_dir() and pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(sibling, ignore_errors=True)


def save_model(model, folder: Path, *, dtype: str) -> None:
    """A full HF model (cast to `dtype`): config.json, safetensors weights, generation_config.json."""
    model.to(TORCH_DTYPES[dtype])
    model.config.use_cache = True
    _saving(folder, lambda: model.save_pretrained(str(folder)))


def save_adapter(peft_model, folder: Path, *, dtype: str) -> None:
    """The PEFT adapter alone (adapter_config.json, adapter_model.safetensors), its weights cast to `dtype`."""
    state = {name: p.detach().to(TORCH_DTYPES[dtype]) for name, p in peft_model.named_parameters()
             if "lora_" in name}
    _saving(folder, lambda: peft_model.save_pretrained(str(folder), state_dict=state))


def save_tokenizer(path: str, folder: Path) -> None:
    """The run's tokenizer files as they are (no padding side or pad token set for training)."""
    from transformers import AutoTokenizer

    with _Loading("model.tokenizer", path):
        tokenizer = AutoTokenizer.from_pretrained(path)
    _saving(folder, lambda: tokenizer.save_pretrained(str(folder)))


def _saving(folder: Path, write) -> None:
    from safetensors import SafetensorError  # how the weights' writer reports an I/O error

    try:
        with torch.no_grad():
            write()
    except (OSError, SafetensorError) as exc:  # disk full, quota, permissions: the user's to fix
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigError(f"writing the export failed ({detail}); its staging folder {folder.name} is removed and "
                          "OUT_DIR is as it was: free some space (or fix the permissions) and export again") from None
