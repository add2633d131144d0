"""The data root, where `python bin/get_data.py` puts the project's datasets, and `data:` paths into it.

The root is `$SEMGRPO_DATA`, else `~/.cache/semgrpo/data`. Its layout (`semgrpo/getdata/manifest.json`):

    bo_zh_openpecha/{train,dev}.jsonl     bo_title_openpecha/{train,dev}.jsonl
    drcd/dev.json                         cmrc2018/{dev,trial}.json

Wherever a config key or a command-line flag names a data file or folder, `data:<path in the root>` (for
example `data:cmrc2018/dev.json`) means that path inside the root. It is resolved when the file is read, so a
config or a saved run stays valid on any machine whatever its root. Every other value is a plain path, used
as given (write `./data:x` for a local file whose name starts with `data:`).
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from semgrpo.errors import UserError

DATA_ENV = "SEMGRPO_DATA"
DEFAULT_ROOT = "~/.cache/semgrpo/data"
PREFIX = "data:"
GET_DATA = "python bin/get_data.py"


class DataRootError(UserError):
    """A `data:` path that is malformed, or names a file the data root does not hold."""


def data_root() -> Path:
    """`$SEMGRPO_DATA` when set (and not empty), else `~/.cache/semgrpo/data`: absolute, `~` expanded (a relative
    value is taken from the current folder, so the subprocesses of a command see the same root)."""
    return Path(os.environ.get(DATA_ENV, "").strip() or DEFAULT_ROOT).expanduser().absolute()


def is_data_path(value: object) -> bool:
    """True when `value` is a `data:` path (a string starting with `data:`)."""
    return isinstance(value, str) and value.startswith(PREFIX)


def resolve_data_path(value: str | os.PathLike, *, what: str = "") -> Path:
    """The file system path that `value` names: inside the data root for `data:...`, else `value` as given.

    Args:
        value: A `data:` path or a plain path.
        what: What the value is (a flag or a config key), named in errors: `--cmrc`, `data.train`.

    Raises:
        DataRootError: A `data:` path that is empty, absolute or climbs out of the root (`..`), or that names
            nothing in the root; the message names the missing file and the command that fetches it. A plain
            path is not checked here: its reader says what is wrong with it.
    """
    if not is_data_path(value):
        return Path(value)
    label = f"{what} {value}" if what else value
    rel = PurePosixPath(value[len(PREFIX):])
    if not str(rel) or str(rel) == "." or rel.is_absolute() or ".." in rel.parts:
        raise DataRootError(f"{label}: a data: path names a file or folder inside the data root, "
                            "e.g. data:cmrc2018/dev.json")
    path = data_root() / rel
    if not path.exists():
        raise DataRootError(f"{label}: {path} does not exist (data root ${DATA_ENV}, else {DEFAULT_ROOT}); "
                            f"{_fetch_hint(rel.parts[0])}")
    return path


def check_data_paths(named: dict[str, str]) -> None:
    """Resolve every `data:` value of `named` ({flag or key: value}) now, so that a missing dataset is named
    before anything slow starts; plain paths are left to their readers."""
    for what, value in named.items():
        if is_data_path(value):
            resolve_data_path(value, what=what)


def _fetch_hint(dataset: str) -> str:
    from semgrpo.getdata.manifest import load_manifest  # the manifest is read only when something is missing

    names = load_manifest().datasets
    if dataset in names:
        return f"fetch it with: {GET_DATA} --only {dataset}"
    return f"{GET_DATA} fetches only {', '.join(names)}"
