"""What the data root holds: each file, the public source it comes from (a repository at a full commit sha)
and the sha256 that `bin/get_data.py` checks, read from the committed `manifest.json` and
`openpecha_ids.json`."""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "manifest.json"
OPENPECHA_IDS = HERE / "openpecha_ids.json"
RAW_BASE = "https://raw.githubusercontent.com"  # serves a file of a repository at a commit


@dataclass(frozen=True)
class Source:
    """A public repository at a pinned commit."""

    name: str
    repo: str  # owner/name on GitHub
    commit: str  # full 40-hex sha
    licence: str

    def url(self, path: str, base: str = RAW_BASE) -> str:
        """`base/<owner>/<repo>/<commit>/<path>`: the raw file at the pinned commit (or a mirror of that layout)."""
        return f"{base.rstrip('/')}/{self.repo}/{self.commit}/{quote(path)}"


@dataclass(frozen=True)
class DataFile:
    """One file of the data root: a copy of `path` in `source`, or built by the OpenPecha rule `build` from the
    texts `ids`."""

    rel: str  # path inside the data root, e.g. cmrc2018/dev.json
    source: Source
    sha256: str
    size: int
    path: str = ""  # the source file, for a copy
    build: str = ""  # "pairs" or "titles", for a built file
    ids: tuple[str, ...] = ()

    @property
    def dataset(self) -> str:
        return self.rel.split("/")[0]


@dataclass(frozen=True)
class Manifest:
    sources: dict[str, Source]
    files: tuple[DataFile, ...]

    @property
    def datasets(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f.dataset for f in self.files))


@functools.cache
def load_manifest() -> Manifest:
    """The committed manifest and id lists (read once)."""
    raw = json.loads(MANIFEST.read_text(encoding="utf-8"))
    ids = json.loads(OPENPECHA_IDS.read_text(encoding="utf-8"))
    sources = {name: Source(name=name, repo=s["repo"], commit=s["commit"], licence=s["licence"])
               for name, s in raw["sources"].items()}
    files = tuple(DataFile(rel=rel, source=sources[f["source"]], sha256=f["sha256"], size=f["bytes"],
                           path=f.get("path", ""), build=f.get("build", ""), ids=tuple(ids.get(rel, ())))
                  for rel, f in raw["files"].items())
    return Manifest(sources=sources, files=files)
