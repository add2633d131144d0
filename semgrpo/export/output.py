"""OUT_DIR: checked before any work, written as a sibling `OUT_DIR.tmp-<pid>` and renamed into place at
the end, so a failed or killed export never leaves a half-written model folder under the name asked for.

With --overwrite an existing OUT_DIR is first renamed to `OUT_DIR.old-<pid>`, the new folder renamed in,
then the old one deleted: a crash between the two renames leaves the old export under `.old-`, never a mix.
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


def check_out_dir(out: Path, *, overwrite: bool, protected: Iterable[tuple[str, Path]],
                  off_limits: Iterable[tuple[str, Path]] = ()) -> None:
    """Refuse an OUT_DIR that is a file, would replace an input (`protected`: (what, path) pairs), lies
    inside a folder of `off_limits` or, without `overwrite`, is not empty. Reads only."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"OUT_DIR {str(out)!r} is a file; expected a new or empty directory")
    target = out.resolve()
    for what, path in protected:
        path = path.resolve()
        if target == path or target in path.parents:
            raise ConfigError(f"OUT_DIR {str(out)!r} would replace {what} {str(path)!r}; choose another folder")
    for what, path in off_limits:
        if path.resolve() in target.parents:
            raise ConfigError(f"OUT_DIR {str(out)!r} lies inside {what} {str(path)!r}; choose another folder")
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
    try:
        with torch.no_grad():
            write()
    except OSError as exc:  # disk full, quota, permissions: the user's to fix; the staging folder goes
        raise ConfigError(f"cannot write the export into {str(folder)!r}: {exc}") from None
