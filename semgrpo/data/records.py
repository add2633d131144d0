"""Records: a data source read and every record checked against its task.

Sources: a local JSON-lines file (`.jsonl`, or `.json` holding JSON lines or one JSON array), a `.parquet` file, a
directory holding `{split}.jsonl` / `{split}.json` / `{split}.parquet`, any of these in the data root as
`data:<path>` (`semgrpo.data_root`), or a hub dataset id `owner/name` (only when no local path of that name exists).
JSON lines are parsed here, line by line, so that every error names the file and the 1-based line. Every record is
checked against its task (see `semgrpo.prompts.TASKS`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from semgrpo.data_root import is_data_path, resolve_data_path
from semgrpo.errors import UserError
from semgrpo.files import is_hub_id
from semgrpo.prompts import TaskSpec, get_task

_LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


class DataError(UserError):
    """A problem with the user's data; the one-line message names file, line and field."""


def task_spec(task: str | TaskSpec) -> TaskSpec:
    try:
        return get_task(task)
    except ValueError as err:
        raise DataError(str(err)) from None


def iter_json_lines(path: Path, name: str) -> Iterator[tuple[str, Any]]:
    """Yield (location, parsed value) per non-blank line; a JSON array file yields its items."""
    with path.open("rb") as fh:
        raw_lines = fh.read().split(b"\n")
    first = next((ln.strip() for ln in raw_lines if ln.strip()), b"")
    if first.lstrip(b"\xef\xbb\xbf").startswith(b"["):
        try:
            items = json.loads(b"\n".join(raw_lines).decode("utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DataError(f"{name}: not a valid JSON array ({_json_reason(err)})") from None
        if not isinstance(items, list):
            raise DataError(f"{name}: expected a JSON array or JSON lines, got {type(items).__name__}")
        for i, item in enumerate(items, 1):
            _check_unicode(item, f"{name}: record {i}")
            yield f"{name}: record {i}", item
        return
    for lineno, raw in enumerate(raw_lines, 1):
        where = f"{name}:{lineno}"
        try:
            text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{where}: not valid UTF-8 (byte {err.start + 1})") from None
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: not valid JSON ({_json_reason(err)})") from None
        _check_unicode(value, where)
        yield where, value


def _check_unicode(value: Any, where: str) -> None:
    """json.loads accepts escapes such as "\\ud800" (half a surrogate pair), which no text can hold."""
    bad = _lone_surrogate(value, "")
    if bad is not None:
        field, char = bad
        place = f'field "{field}"' if field else "the record"
        raise DataError(f"{where}: {place} holds a lone surrogate \\u{ord(char):04x}, not valid Unicode "
                        "(an escape of half a UTF-16 pair)")


def _lone_surrogate(value: Any, path: str) -> tuple[str, str] | None:
    """(field path, offending character) of the first string, or key, with a lone surrogate."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            return path, value[err.start]
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            sub = f"{path}.{key}" if path else str(key)
            found = _lone_surrogate(key, sub) or _lone_surrogate(item, sub)
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _lone_surrogate(item, f"{path}[{i}]")
            if found is not None:
                return found
    return None


def _json_reason(err: Exception) -> str:
    return f"{err.msg} at column {err.colno}" if isinstance(err, json.JSONDecodeError) else str(err)


def _iter_rows(rows: Iterable[Any], name: str) -> Iterator[tuple[str, Any]]:
    for i, row in enumerate(rows, 1):
        yield f"{name}: row {i}", row


def _read_parquet(path: Path, name: str) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as err:  # pyarrow raises several types for corrupt files
        raise DataError(f"{name}: not a readable parquet file ({err})") from None
    return _iter_rows(rows, name)


def _read_hub(source: str, split: str) -> Iterator[tuple[str, Any]]:
    import datasets

    try:
        ds = datasets.load_dataset(source, split=split)
    except Exception as err:  # offline mode, missing split, unknown id...
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(
            f"{source}: not a local path, and loading it as a hub dataset (split {split!r}) failed: {reason}"
        ) from None
    return _iter_rows(ds, f"{source}[{split}]")


def _open_source(source: str | Path, split: str) -> tuple[str, Iterator[tuple[str, Any]]]:
    """Resolve `source` to (name for messages, iterator of (location, raw record))."""
    path = resolve_data_path(source)  # a data: path must exist in the data root, or the error says how to fetch it
    name = str(path) if is_data_path(source) else str(source)
    if path.is_dir():
        for suffix in _LOCAL_SUFFIXES:
            candidate = path / f"{split}{suffix}"
            if candidate.is_file():
                path, name = candidate, str(candidate)
                break
        else:
            wanted = ", ".join(f"{split}{s}" for s in _LOCAL_SUFFIXES)
            raise DataError(f"{name}: directory holds none of {wanted}")
    elif not path.exists():
        if is_hub_id(name) and not name.endswith(_LOCAL_SUFFIXES):
            return name, _read_hub(name, split)
        raise DataError(f"{name}: file not found")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return name, iter_json_lines(path, name)
    if suffix == ".parquet":
        return name, _read_parquet(path, name)
    raise DataError(
        f"{name}: unsupported file type {suffix or '(none)'!r} (expected .jsonl, .json, .parquet or a directory)"
    )


def _validate(raw: Any, where: str, spec: TaskSpec) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected a JSON object with keys {_keys(spec)}, got {type(raw).__name__}")
    record: dict[str, str] = {}
    rid = raw.get("id")
    if rid is None:
        record["id"] = where.replace(": row ", ":").replace(": record ", ":")
    elif isinstance(rid, bool) or not isinstance(rid, (str, int)):
        raise DataError(f'{where}: field "id" must be a string or an integer, got {type(rid).__name__}')
    else:
        record["id"] = str(rid)
    for field in spec.required_fields:
        if field not in raw:
            raise DataError(f'{where}: field "{field}" missing (expected keys: {_keys(spec)})')
        value = raw[field]
        if not isinstance(value, str):
            raise DataError(f'{where}: field "{field}" must be a non-empty string, got {type(value).__name__}')
        if not value.strip():
            raise DataError(f'{where}: field "{field}" must be a non-empty string, got {value!r}')
        record[field] = value
    return record


def _keys(spec: TaskSpec) -> str:
    return ", ".join(("id",) + spec.required_fields)


def load_records(source: str | Path, *, task: str | TaskSpec, split: str = "train") -> list[dict[str, str]]:
    """Load and validate the records of one split.

    Args:
        source: A `.jsonl`/`.json` file (JSON lines, or one JSON array), a `.parquet` file, a
            directory holding `{split}.jsonl` (or `.json`, `.parquet`), a `data:<path>` in the data
            root, or, when no such local path exists and it looks like `owner/name`, a hub dataset id.
        task: Task name (a key of `TASKS`) or a `TaskSpec`; decides the required fields.
        split: Split to read from a directory or hub dataset; ignored for a file.

    Returns:
        One dict per record, in file order, holding "id" (a string; `"<file>:<line>"` when the
        record has none) and the task's required fields. Blank lines are skipped.

    Raises:
        DataError: Missing file, unreadable line, missing or mistyped field, or no records; the
            message names the file, the 1-based line (or row) and the field.
        DataRootError: A `data:` path that the data root does not hold.
    """
    spec = task_spec(task)
    if not isinstance(source, (str, Path)) or not str(source):
        raise DataError(f"source must be a non-empty path or dataset id, got {source!r}")
    if not isinstance(split, str) or not split:
        raise DataError(f"split must be a non-empty string, got {split!r}")
    name, rows = _open_source(source, split)
    records = [_validate(raw, where, spec) for where, raw in rows]
    if not records:
        raise DataError(f"{name}: no records found")
    return records
