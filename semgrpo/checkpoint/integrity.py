"""Checkpoint integrity: a manifest of every file's size and xxh3-64 checksum, written at save time and
checked before a resume trusts the checkpoint.

xxh3 runs at several GB/s per core (memory bandwidth), so hashing costs about what reading the files back
costs, and a resume reads them anyway. Every rank that checks reads the same shared files the same way, so
all ranks reach the same verdict without a collective; a verdict is cached for unchanged files.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import xxhash

from semgrpo import dist
from semgrpo.files import write_json_atomic

MANIFEST_FILE = "MANIFEST.json"
_HASH_CHUNK = 8 << 20


def _file_digest(path: Path) -> str:
    h = xxhash.xxh3_64()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _checkpoint_files(directory: Path, skip: tuple[str, ...]) -> list[str]:
    """Relative POSIX paths of the files a manifest covers (all but the manifest and `skip`)."""
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                  if p.is_file() and p.relative_to(directory).as_posix() not in (MANIFEST_FILE, *skip))


def write_manifest(directory: Path, *, skip: tuple[str, ...] = ()) -> None:
    """Collective: size and xxh3-64 of every file in `directory` but `skip`; ranks hash a share each, rank 0
    writes MANIFEST.json."""
    names = dist.broadcast_object(_checkpoint_files(directory, skip) if dist.is_main() else None)
    mine = {n: {"size": (directory / n).stat().st_size, "xxh3_64": _file_digest(directory / n)}
            for n in names[dist.rank()::dist.world_size()]}
    if dist.world_size() > 1:
        import torch.distributed as torch_dist

        parts: list = [None] * dist.world_size()
        torch_dist.all_gather_object(parts, mine)
        entries = {k: v for part in parts for k, v in part.items()}
    else:
        entries = mine
    if dist.is_main():
        write_json_atomic(directory / MANIFEST_FILE, {"version": 1, "hash": "xxh3_64", "files": entries})


def verify_checkpoint(path: str | os.PathLike) -> str | None:
    """None when `path` matches its manifest (or has none: older checkpoints), else what is wrong, in words.

    Checks every listed file: present, same size, same xxh3-64 checksum. The verdict is cached per
    process for files whose sizes and modification times have not changed, so the second check of a
    run start (after taking the run folder's lock) reads nothing again.
    """
    path = Path(path)
    manifest_file = path / MANIFEST_FILE
    if not manifest_file.is_file():
        return None
    try:
        key = (str(path.resolve()), tuple((p.relative_to(path).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
                                          for p in sorted(path.rglob("*")) if p.is_file()))
    except OSError:
        key = None
    if key is not None and key in _VERDICTS:
        return _VERDICTS[key]
    verdict = _verify(path, manifest_file)
    if key is not None:
        _VERDICTS[key] = verdict
    return verdict


_VERDICTS: dict[tuple, str | None] = {}


def _verify(path: Path, manifest_file: Path) -> str | None:
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        files = manifest["files"]
        items = [(str(name), int(meta["size"]), str(meta["xxh3_64"])) for name, meta in files.items()]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"{MANIFEST_FILE} is unreadable: {exc}"
    for name, size, _ in items:
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        actual = file.stat().st_size
        if actual != size:
            return f"{name} has {actual} bytes, expected {size}"
    for name, _, digest in items:
        if _file_digest(path / name) != digest:
            return f"{name} fails its checksum"
    return None
