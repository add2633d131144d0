"""The files a RunTracker keeps under output_dir: their names, reading them back, cutting them to a resumed step, and
the tracker's state across sessions (tracker_state.json).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from semgrpo.files import write_text_atomic

METRICS_FILE = "metrics.jsonl"
STATE_FILE = "tracker_state.json"
SUMMARY_FILE = "summary.json"
TENSORBOARD_DIR = "tensorboard"
SAMPLES_FILE = "samples.jsonl"
REWARD_CURVE_FILE = "reward_curve.png"
# What a GRPO run's tracker leaves in output_dir whatever run.report_to names (report_to=[none]: these alone);
# each tracker adds its own (TENSORBOARD_DIR, wandb/, SAMPLES_FILE).
ALWAYS_WRITTEN = (METRICS_FILE, STATE_FILE, SUMMARY_FILE, REWARD_CURVE_FILE)
# What run.report_to may name ("none" alone = metrics.jsonl only); the wandb table's columns.


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not a JSON line ({e.msg})") from None
    return rows


def read_metrics(output_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The lines of `<output_dir>/metrics.jsonl` as dicts (an empty list when the file is absent)."""
    return _read_jsonl(Path(output_dir) / METRICS_FILE)


def read_samples(output_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The lines of `<output_dir>/samples.jsonl` ({"step", "rows"}) as dicts (empty when absent)."""
    return _read_jsonl(Path(output_dir) / SAMPLES_FILE)


def truncate_jsonl(path: Path, start_step: int) -> None:
    """Keep the lines with step <= start_step (a killed write's partial last line goes too)."""
    if not path.is_file():
        return
    kept = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= start_step:
                kept.append(line if line.endswith("\n") else line + "\n")
    write_text_atomic(path, "".join(kept))


def read_state(path: Path) -> dict[str, Any]:
    """tracker_state.json as saved; a damaged one (a full disk, an edit) is set aside with one warning line and the
    resume goes on without it: the wall time counts from this session, wandb starts a new run."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        problem = _state_problem(state)
    except (OSError, ValueError) as exc:  # ValueError: JSONDecodeError, UnicodeDecodeError
        problem = f"unreadable ({exc})"
    if problem is None:
        return state
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    with contextlib.suppress(OSError):  # it is rewritten at the first logged step anyway
        os.replace(path, aside)
    print(f"semgrpo: warning: {path} is {problem}; set aside as {aside.name}. The run resumes: its wall time counts "
          "from now and wandb, if used, starts a new run", file=sys.stderr, flush=True)
    return {}


def _state_problem(state: Any) -> str | None:
    if not isinstance(state, dict):
        return f"a JSON {type(state).__name__}, not an object"
    wall, step = state.get("wall_seconds", 0.0), state.get("wandb_step", 0)
    if isinstance(wall, bool) or not isinstance(wall, (int, float)) or not (math.isfinite(wall) and wall >= 0):
        return f"damaged (wall_seconds {wall!r})"
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return f"damaged (wandb_step {step!r})"
    if not isinstance(state.get("wandb_run_id", ""), str):
        return f"damaged (wandb_run_id {state['wandb_run_id']!r})"
    return None
