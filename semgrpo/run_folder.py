"""The run folder (`output_dir`): who may write in it, and whether a start continues or replaces a run.

One small function per job, called by `train_grpo`, `train_sft` and `cli.run_grpo_stages`:

* `check_output_dir`: the folder is usable (set, a directory or creatable, writable); reads only.
* `check_run_parts`: what the run writes inside it (checkpoints/, the trackers' folders, its files) can be
  written, so that a tracker does not fail after the model loaded; reads only.
* `start_mode`: fresh, overwrite (fresh, replacing an old run) or resume; refuses a fresh start into a
  folder that holds checkpoints unless `overwrite=true`.
* `compare_configs` / `check_resume_config`: a resume may change only `MAY_CHANGE` keys; any other
  difference (including the DeepSpeed JSON's content or the world size) is a `ConfigError`.
* `RunLock`: `<output_dir>/.lock`, an `fcntl.flock` taken by global rank 0, so a second training into
  the same folder fails at once and a crashed one leaves no stale lock.
* `clear_run`: what `overwrite=true` deletes before the new run starts.

`plan()` does every check without writing anything; `RunFolder.start()` (after the model loaded and
the config validated) takes the lock, clears an overwritten run and records the config, once.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semgrpo import dist
from semgrpo.checkpoint import CHECKPOINTS_DIR, checkpoint_config, list_checkpoints, resolve_resume
from semgrpo.config import Config, ConfigError, to_dict, upgrade_saved_config
from semgrpo.files import write_json_atomic
from semgrpo.tracking.files import ALWAYS_WRITTEN, SAMPLES_FILE, TENSORBOARD_DIR
from semgrpo.tracking.wandb_run import WANDB_DIR

LOCK_FILE = ".lock"
CONFIG_FILE = "config.json"
# The DeepSpeed JSON's content (and the world size) as the run started: a resume must match it.
DEEPSPEED_RECORD = "deepspeed.json"
# What `overwrite=true` removes (never the sub-run `cold_start/`, which its own stage handles).
RUN_DIRS = (CHECKPOINTS_DIR, TENSORBOARD_DIR, WANDB_DIR)
RUN_FILES = (CONFIG_FILE, DEEPSPEED_RECORD, *ALWAYS_WRITTEN, SAMPLES_FILE)

# Keys a resume may change: logging/saving cadence and trackers, the memory budget, the live alignment-tax meter
# and a remote reward's patience and reply limit. grpo.max_steps may only grow (or stay); see `compare_configs`.
MAY_CHANGE = ("grpo.max_steps", "run.gpu_memory_gib", "run.log_every", "run.sample_every", "run.save_every",
              "run.keep_last", "run.report_to", "tax_meter.", "reward.remote_timeout", "reward.remote_retries",
              "reward.remote_max_bytes", "resume", "overwrite", "demo.enabled")
# Keys SFT never reads: a cold start resumed after a GRPO-only change is still the same cold start.
SFT_UNUSED = ("grpo.", "reward.", "tax_meter.", "run.sample_every", "sft.before_grpo")


def _matches(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in prefixes)


# ------------------------------------------------------------------------------------ output_dir


def check_output_dir(output_dir: str) -> Path:
    """The run folder as a Path, or a ConfigError when it cannot hold a run. Writes nothing."""
    text = "" if output_dir is None else str(output_dir).strip()
    if not text:
        raise ConfigError("output_dir is empty; name the run's folder, e.g. output_dir=runs/my_run")
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"output_dir {text!r} is a file, not a folder")
    existing = path
    while not existing.exists():
        parent = existing.parent
        if parent == existing:
            break
        existing = parent
    if not existing.is_dir():
        raise ConfigError(f"output_dir {text!r} lies under {str(existing)!r}, which is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is" if existing == path else f"would be created in {str(existing)!r}, which is"
        raise ConfigError(f"output_dir {text!r} {what} not writable")
    return path


def check_run_parts(output_dir: Path, report_to: list[str]) -> None:
    """A ConfigError when a folder the run writes into exists but is a file or not writable, or one of its
    files is a folder. Writes nothing."""
    folders = {CHECKPOINTS_DIR: "checkpoints", TENSORBOARD_DIR: "TensorBoard events", WANDB_DIR: "wandb runs"}
    for name, what in folders.items():
        path = output_dir / name
        unused = name != CHECKPOINTS_DIR and name not in report_to
        if unused or not (path.exists() or path.is_symlink()):
            continue
        if not path.is_dir():
            raise ConfigError(f"{str(path)!r} is a file, but the run writes its {what} into a folder of that name: "
                              "move it away")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{str(path)!r} is not writable, and the run writes its {what} there: fix its "
                              "permissions or use another output_dir")
    for name in RUN_FILES:
        if (output_dir / name).is_dir():
            raise ConfigError(f"{str(output_dir / name)!r} is a folder, but the run writes a file of that name: "
                              "move it away")


def holds_checkpoints(output_dir: str | os.PathLike) -> bool:
    """True when `<output_dir>/checkpoints` holds anything (complete or not)."""
    root = Path(output_dir) / "checkpoints"
    return root.is_dir() and any(root.iterdir())


def explicit_fresh(resume: Any) -> bool:
    return resume is None or (isinstance(resume, str) and resume.strip().lower() in ("", "none"))


def start_mode(cfg: Config, resume_from: Path | None) -> str:
    """'resume', 'fresh', or 'overwrite' (a fresh start that first clears an old run's files)."""
    if resume_from is not None:
        return "resume"
    if explicit_fresh(cfg.resume) and holds_checkpoints(cfg.output_dir):
        if not cfg.overwrite:
            raise ConfigError(
                f"output_dir {cfg.output_dir!r} holds another run's checkpoints and resume={cfg.resume!r} asks "
                "for a fresh start: resume=auto continues that run; overwrite=true deletes it and starts over")
        return "overwrite"
    return "fresh"


# ------------------------------------------------------------------------------ config comparison


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _normal(tree: dict) -> dict[str, Any]:
    return _flatten(json.loads(json.dumps(tree, default=str)))


def compare_configs(old: dict, new: dict, *, stage: str = "grpo") -> tuple[list, list]:
    """(applied, refused): lists of (key, old, new) for every key whose value differs.

    `output_dir` is not compared (a run folder may move, or resume another's checkpoint), and paths
    inside it compare relative to it. A key missing from `old` (a config saved by an older version) counts
    as unchanged when the new value is the default; keys saved under their old names (`train.*`, `eval.*`)
    compare under their new ones. `stage="sft"` ignores the keys SFT does not read.
    """
    old_flat, new_flat = _normal(upgrade_saved_config(old)), _normal(upgrade_saved_config(new))
    defaults = _normal(to_dict(Config()))
    applied, refused = [], []
    for key in sorted(set(old_flat) | set(new_flat)):
        if stage == "sft" and _matches(key, SFT_UNUSED):
            continue
        if key not in old_flat:
            if new_flat[key] == defaults.get(key, object()):
                continue
            refused.append((key, "(not recorded)", new_flat[key]))
            continue
        if key not in new_flat:
            continue  # a key this version no longer has
        a, b = old_flat[key], new_flat[key]
        if key == "output_dir" or a == b or \
                _inside(a, old_flat.get("output_dir")) == _inside(b, new_flat.get("output_dir")):
            continue
        if key == "grpo.max_steps":
            ok = isinstance(a, int) and isinstance(b, int) and 0 < a < b
        else:
            ok = _matches(key, MAY_CHANGE)
        (applied if ok else refused).append((key, a, b))
    return applied, refused


def _inside(value: Any, output_dir: Any) -> Any:
    """A path inside the run folder, relative to it (a moved run folder is the same run: its cold start
    `<output_dir>/cold_start` moved with it); anything else unchanged."""
    if isinstance(value, str) and isinstance(output_dir, str) and output_dir:
        root = output_dir.rstrip("/")
        if value == root or value.startswith(root + "/"):
            return ("<output_dir>", value[len(root):])
    return value


def _describe(changes: list) -> str:
    return ", ".join(f"{k} {a!r} -> {b!r}" if isinstance(a, str) or isinstance(b, str) else f"{k} {a} -> {b}"
                     for k, a, b in changes)


def deepspeed_record(cfg: Config) -> dict | None:
    """The DeepSpeed JSON's content and the world size, or None when the file is unreadable (the
    config checks in session.prepare then report it)."""
    try:
        content = json.loads(Path(cfg.run.deepspeed).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return {"file": str(cfg.run.deepspeed), "content": content, "world_size": dist.world_size()}


def recorded_config(resume_from: Path) -> tuple[dict | None, dict | None]:
    """(config, deepspeed record) the checkpoint's run started with: the checkpoint's own config.json,
    else (older checkpoints) its run folder's; the DeepSpeed record from the run folder. Old section names
    come back under the current ones (`config.upgrade_saved_config`)."""
    run_dir = Path(resume_from).parent.parent
    cfg = checkpoint_config(resume_from)
    if cfg is None and (run_dir / CONFIG_FILE).is_file():
        cfg = _read_json(run_dir / CONFIG_FILE)
    ds = _read_json(run_dir / DEEPSPEED_RECORD) if (run_dir / DEEPSPEED_RECORD).is_file() else None
    return upgrade_saved_config(cfg), ds


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def check_resume_config(cfg: Config, resume_from: Path, *, stage: str) -> str | None:
    """The one line that lists the changes a resume applies (None: nothing changed), or a ConfigError
    naming every key that may not change, with both values."""
    old, old_ds = recorded_config(resume_from)
    applied, refused = compare_configs(old, to_dict(cfg), stage=stage) if old is not None else ([], [])
    new_ds = deepspeed_record(cfg)
    if old_ds is not None and new_ds is not None:
        # The recorded content is what counts: the JSON may move, as long as it says the same.
        applied += [c for c in refused if c[0] == "run.deepspeed"]
        refused = [c for c in refused if c[0] != "run.deepspeed"]
        if old_ds.get("content") != new_ds["content"]:
            refused.append((f"content of run.deepspeed ({new_ds['file']})",
                            json.dumps(old_ds.get("content"), sort_keys=True),
                            json.dumps(new_ds["content"], sort_keys=True)))
        if old_ds.get("world_size") != new_ds["world_size"]:
            refused.append(("world size", old_ds.get("world_size"), new_ds["world_size"]))
    if refused:
        raise ConfigError(
            f"resume from {resume_from.name} ({resume_from}): these settings differ from the checkpoint's and "
            f"cannot change on resume: {_describe(refused)} (put them back, start a new run in another "
            "output_dir, or replace this run with resume='' overwrite=true)")
    if old is None:
        return f"semgrpo: resume from {resume_from.name}: no recorded config to compare with (old checkpoint)"
    return f"semgrpo: resume from {resume_from.name}: applying changed {_describe(applied)}" if applied else None


# ------------------------------------------------------------------------------------------- lock


class RunLock:
    """`<output_dir>/.lock` held with `fcntl.flock` by this process (global rank 0 only).

    The kernel drops a flock when its file closes: at `release()`, when the lock object is garbage
    collected (the training function returned), or when the process ends, however it ends. The file
    itself stays (it only says who held it last); a lock file nobody holds is no lock.
    """

    def __init__(self, output_dir: str | os.PathLike):
        self.path = Path(output_dir) / LOCK_FILE
        self._file = None

    def acquire(self) -> None:
        """Take the lock now or raise ConfigError naming the holder. Creates the folder if needed."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held open: the lock lives with the file
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read(200).strip() or "unknown process"
            f.close()
            raise ConfigError(f"output_dir {str(self.path.parent)!r} is in use by another training ({holder}); "
                              f"wait for it to end or use another output_dir") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on host {socket.gethostname()}\n")
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the flock
            self._file = None


def clear_run(output_dir: str | os.PathLike) -> None:
    """Delete an old run's checkpoints and logs (what `overwrite=true` replaces)."""
    root = Path(output_dir)
    for name in RUN_DIRS:
        shutil.rmtree(root / name, ignore_errors=True)
    for name in RUN_FILES:
        (root / name).unlink(missing_ok=True)


# -------------------------------------------------------------------------------- the two phases


@dataclass
class RunFolder:
    output_dir: Path
    mode: str  # fresh | overwrite | resume
    resume_from: Path | None
    note: str | None = None  # the resume's "applying changed ..." line
    seen: list[int] = field(default_factory=list)  # complete checkpoints when planned
    _lock: RunLock | None = field(default=None, repr=False)

    def start(self, cfg: Config) -> None:
        """Collective, after every check passed: lock the folder, clear an overwritten run, record the
        config (fresh starts only, or when the folder has none yet)."""
        error = None
        if dist.is_main():
            lock = RunLock(self.output_dir)
            try:
                lock.acquire()
                self._lock = lock
                if _complete_steps(self.output_dir) != self.seen:
                    raise ConfigError(f"output_dir {str(self.output_dir)!r} changed while this run was starting "
                                      f"(another training?): start it again")
            except ConfigError as exc:
                error = str(exc)
                lock.release()
                self._lock = None
        if dist.world_size() > 1:
            error = dist.broadcast_object(error)
        if error is not None:
            raise ConfigError(error)
        if dist.is_main():
            if self.mode == "overwrite":
                clear_run(self.output_dir)
                print(f"semgrpo: overwrite=true: deleted the previous run's checkpoints and logs in {self.output_dir}")
            if self.mode != "resume" or not (self.output_dir / CONFIG_FILE).is_file():
                write_json_atomic(self.output_dir / CONFIG_FILE, to_dict(cfg))
                ds = deepspeed_record(cfg)
                if ds is not None:
                    write_json_atomic(self.output_dir / DEEPSPEED_RECORD, ds)
            if self.note:
                print(self.note, flush=True)
        dist.barrier()

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def plan(cfg: Config, *, stage: str) -> RunFolder:
    """Every check of the run folder, before anything is written or loaded: the folder is usable,
    the start is fresh/overwrite/resume, and a resume's config matches its checkpoint's."""
    output_dir = check_output_dir(cfg.output_dir)
    check_run_parts(output_dir, cfg.run.report_to)
    if cfg.demo.enabled:
        from semgrpo.session import apply_demo

        apply_demo(cfg)  # compare resolved paths (prepare() fills only what is still empty)
    resume_from = resolve_resume(cfg.resume, cfg.output_dir)
    mode = start_mode(cfg, resume_from)
    note = check_resume_config(cfg, resume_from, stage=stage) if resume_from is not None else None
    return RunFolder(output_dir=output_dir, mode=mode, resume_from=resume_from, note=note,
                     seen=_complete_steps(output_dir))


def _complete_steps(output_dir: Path) -> list[int]:
    """Steps of the complete checkpoints (rank-local, no verification): what `start` re-checks under
    the lock, in case another training ran between `plan` and `start`."""
    return [step for step, _ in list_checkpoints(output_dir)]

