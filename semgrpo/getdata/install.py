"""Fill the data root, all or nothing.

Every file that is missing from the root, or differs from the manifest, is fetched (or copied with `--from`)
into a staging folder inside the root, the OpenPecha files are built there, and each is checked against the
manifest's sha256. Only when every one has passed are they renamed into place, so a failure of any kind
(unreachable source, partial download, checksum mismatch, Ctrl-C) leaves the root as it was: the staging
folder is removed, and so are the folders this run created. Files already present with the right sha256 are
kept and need no network.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from semgrpo.files import fsync_dir, process_alive
from semgrpo.getdata import openpecha
from semgrpo.getdata.download import FetchError, fetch
from semgrpo.getdata.manifest import RAW_BASE, DataFile, Source, load_manifest

STAGE_PREFIX = ".tmp-get-data-"
Log = Callable[[str], object]


@dataclass(frozen=True)
class Options:
    """How to get the files (the flags of `bin/get_data.py`)."""

    only: tuple[str, ...] = ()  # datasets (folders of the root); empty = all
    from_dir: Path | None = None  # a local folder laid out like the data root, instead of the network
    mirror: str = RAW_BASE  # serves <owner>/<repo>/<commit>/<path> like raw.githubusercontent.com
    timeout: float = 60.0
    retries: int = 2
    jobs: int = 8  # downloads at once (the OpenPecha texts are ~1,300 small files)


def get_data(root: Path, opts: Options = Options(), log: Log = print) -> list[str]:
    """Make `root` hold every selected file of the manifest, checked; returns the files written.

    Raises:
        FetchError: An unknown dataset, a missing `--from` file, an unreachable source, a partial download or
            a sha256 that is not the manifest's; the root is left as it was.
    """
    files = select(opts.only)
    todo = []
    for n, f in enumerate(files, 1):
        target = root / f.rel
        if target.is_file() and sha256_file(target) == f.sha256:
            log(f"[{n}/{len(files)}] {f.rel}: present, sha256 ok")
        else:
            todo.append((n, f))
            if target.exists():
                log(f"[{n}/{len(files)}] {f.rel}: present but not the manifest's file (sha256); getting it again")
    if not todo:
        log(f"get_data: all {len(files)} files present and checked in {root}")
        return []
    created = _make_root(root)
    _remove_stale_stages(root)
    stage = root / f"{STAGE_PREFIX}{os.getpid()}"
    done = False
    try:
        stage.mkdir()
        staged = _stage(todo, len(files), stage, opts, log)
        for f in staged:  # every file has passed its check: now, and only now, the root changes
            (root / f.rel).parent.mkdir(exist_ok=True)
            os.replace(stage / f.rel, root / f.rel)
            fsync_dir((root / f.rel).parent)
        done = True
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if not done:
            for folder in created:  # deepest first; only if nothing else appeared in them meanwhile
                with contextlib.suppress(OSError):
                    folder.rmdir()
    total = sum(f.size for f in staged)
    log(f"get_data: wrote {len(staged)} file(s), {_mb(total)}, into {root}")
    licences = {f.source.repo: f.source.licence for f in staged}
    log("get_data: licences: " + "; ".join(f"{repo}: {lic}" for repo, lic in licences.items()))
    return [f.rel for f in staged]


def select(only: tuple[str, ...] = ()) -> list[DataFile]:
    """The manifest's files of the datasets `only` (all when empty)."""
    manifest = load_manifest()
    unknown = [name for name in only if name not in manifest.datasets]
    if unknown:
        raise FetchError(f"--only {','.join(unknown)}: no such dataset; choose from {', '.join(manifest.datasets)}")
    return [f for f in manifest.files if not only or f.dataset in only]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _stage(todo: list[tuple[int, DataFile]], count: int, stage: Path, opts: Options, log: Log) -> list[DataFile]:
    """Fetch or copy, build and check every file of `todo` under `stage` (same relative paths)."""
    for f in {f.dataset for _, f in todo}:
        (stage / f).mkdir()
    builds = [f for _, f in todo if f.build]
    read = _fetch_openpecha_sources(builds, stage / "sources", opts, log) if builds and not opts.from_dir else None
    for n, f in todo:
        out = stage / f.rel
        if opts.from_dir is not None:
            src = opts.from_dir / f.rel
            if not src.is_file():
                raise FetchError(f"--from {opts.from_dir}: {src} not found (the folder must be laid out like the "
                                 f"data root: {', '.join(g.rel for g in load_manifest().files)})")
            shutil.copyfile(src, out)
            origin = f"copied from {src}"
        elif f.build:
            out.write_bytes(openpecha.build(f.build, f.ids, read))
            origin = f"built from {len(f.ids)} texts of {f.source.repo}@{f.source.commit[:8]}"
        else:
            url = f.source.url(f.path, opts.mirror)
            log(f"[{n}/{count}] {f.rel}: fetching {url}")
            fetch(url, out, timeout=opts.timeout, retries=opts.retries)
            origin = f"{f.path} of {f.source.repo}@{f.source.commit[:8]}"
        _check(f, out, origin)
        log(f"[{n}/{count}] {f.rel}: {_mb(f.size)}, {origin}, sha256 ok")
    return [f for _, f in todo]


def _check(f: DataFile, path: Path, origin: str) -> None:
    got = sha256_file(path)
    if got != f.sha256:
        raise FetchError(f"{f.rel}: sha256 {got[:16]}... is not the manifest's {f.sha256[:16]}... ({origin}, "
                         f"{path.stat().st_size} bytes, expected {f.size}): the source is not the pinned file "
                         "or arrived damaged; nothing was installed")


def _fetch_openpecha_sources(builds: list[DataFile], into: Path, opts: Options, log: Log) -> Callable[[str], str]:
    """Download the corpus files the builds read (each once, `opts.jobs` at a time); returns their reader."""
    source = builds[0].source
    paths = list(dict.fromkeys(p for f in builds for p in openpecha.source_paths(f.build, f.ids)))
    for folder in {into / p for p in paths}:
        folder.parent.mkdir(parents=True, exist_ok=True)
    log(f"get_data: fetching {len(paths)} OpenPecha texts from {source.url('text-pairs/', opts.mirror)} "
        f"({opts.jobs} at a time)")
    step = max(1, len(paths) // 10)
    with ThreadPoolExecutor(max_workers=opts.jobs) as pool:
        futures = [pool.submit(fetch, source.url(p, opts.mirror), into / p, timeout=opts.timeout,
                               retries=opts.retries) for p in paths]
        try:
            for done, future in enumerate(as_completed(futures), 1):
                future.result()
                if done % step == 0 or done == len(paths):
                    log(f"get_data:   {done}/{len(paths)} texts")
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return _reader(into, source)


def _reader(into: Path, source: Source) -> Callable[[str], str]:
    def read(path: str) -> str:
        try:
            return (into / path).read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FetchError(f"{path} of {source.repo}@{source.commit[:8]}: not valid UTF-8 (byte {exc.start}); "
                             "the source is not the pinned file or arrived damaged; nothing was installed") from None
    return read


def _make_root(root: Path) -> list[Path]:
    """Create `root` and its missing parents; returns the folders created, deepest first."""
    created = [p for p in (root, *root.parents) if not p.exists()]
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FetchError(f"cannot create the data root {root}: {exc.strerror or exc}") from None
    if not os.access(root, os.W_OK):
        raise FetchError(f"the data root {root} is not writable (set SEMGRPO_DATA or pass --root)")
    return created


def _remove_stale_stages(root: Path) -> None:
    """Staging folders of runs that were killed (their process is gone; a pid of ours is a reused one)."""
    for stage in root.glob(f"{STAGE_PREFIX}*"):
        pid = stage.name[len(STAGE_PREFIX):]
        if pid.isdigit() and (int(pid) == os.getpid() or not process_alive(int(pid))):
            shutil.rmtree(stage, ignore_errors=True)


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"
