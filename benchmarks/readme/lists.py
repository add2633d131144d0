"""README lists and names the code defines (and the data manifest it installs by), rendered from the constants
the code itself runs on: a key added to what a resume may change, or a file added to a run, shows in the README at
the next rendering."""
from __future__ import annotations

from semgrpo import __version__
from semgrpo.config.renames import DEPRECATED_UNTIL
from semgrpo.getdata.manifest import load_manifest
from semgrpo.run_folder import MAY_CHANGE, RUN_DIRS, RUN_FILES
from semgrpo.tracking.files import ALWAYS_WRITTEN


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _may_change(key: str) -> str:
    if key.endswith("."):  # a prefix: the whole section
        return f"every `{key}*` key"
    if key == "grpo.max_steps":  # compare_configs lets it grow only (a shorter run is another run)
        return f"`{key}` upwards"
    return f"`{key}`"


def resume_may_change() -> str:
    return ", ".join(_may_change(k) for k in MAY_CHANGE)


def overwrite_deletes() -> str:
    return _and([f"`{d}/`" for d in RUN_DIRS] + [f"`{f}`" for f in RUN_FILES])


def report_none_writes() -> str:
    return _and([f"`{f}`" for f in ALWAYS_WRITTEN])


def data_size(dataset: str) -> str:
    """A data-root folder's size in MB, from the bytes the committed manifest pins for its files."""
    return f"{sum(f.size for f in load_manifest().files if f.dataset == dataset) / 1e6:.1f} MB"


def data_commit(source: str) -> str:
    """The pinned commit of a dataset's source, as the README abbreviates it."""
    return f"`{load_manifest().sources[source].commit[:8]}`"


FIGURES = {
    **{f"data.size.{d}": (lambda d=d: data_size(d)) for d in load_manifest().datasets},
    **{f"data.commit.{s}": (lambda s=s: data_commit(s)) for s in load_manifest().sources},
    "code.resume_may_change": resume_may_change,
    "code.overwrite_deletes": overwrite_deletes,
    "code.report_none_writes": report_none_writes,
    "code.version": lambda: __version__,
    "code.deprecated_until": lambda: DEPRECATED_UNTIL,
}
