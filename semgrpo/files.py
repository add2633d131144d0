"""Atomic file writes (a reader, or a killed process, sees the old file or the new one, never half of one),
and telling a Hugging Face hub id from a local path."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

TMP_PREFIX = ".tmp-"

# `owner/name`: each part starts with a letter or digit, then letters, digits, `_`, `.` or `-`.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def is_hub_id(name: str) -> bool:
    """True when `name` has the form of a Hugging Face hub id `owner/name` (callers check first that no
    local path of that name exists)."""
    return bool(_HUB_ID.fullmatch(name))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` through a fsynced sibling temporary file and `os.replace`.

    Raises:
        FileNotFoundError: `path`'s directory does not exist.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {str(path)!r}: directory {str(path.parent)!r} does not exist")
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
    fsync_dir(path.parent)
    return path


def write_json_atomic(path: str | os.PathLike, obj: Any, *, sort_keys: bool = True) -> Path:
    """`obj` as indented strict JSON (non-finite floats rejected), written atomically.

    Args:
        sort_keys: sorted keys (stable diffs); False keeps insertion order where it carries meaning.
    """
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=sort_keys, allow_nan=False) + "\n")


def write_jsonl_atomic(path: str | os.PathLike, rows) -> Path:
    """One JSON object per line (non-ASCII kept as is), written atomically."""
    return write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists (a staging folder named after a pid that is gone was left by a killed run)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def fsync_dir(directory: Path) -> None:
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
