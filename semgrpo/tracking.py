"""Run logging on rank 0: TensorBoard scalars and text, metrics.jsonl, a progress bar, summary.json.

Files under `output_dir` (only when the tracker is enabled):

    tensorboard/        SummaryWriter event files (scalars, text samples)
    metrics.jsonl       one line per `log()`: {"step": .., **scalars}; non-finite values are null
    tracker_state.json  wall seconds accumulated over every session of this run
    summary.json        `summary()`; reward_curve.png from `plot_reward_curve()`

On resume (`start_step > 0`) lines with step > start_step are dropped first and TensorBoard events
after start_step are purged, so the files equal those of an uninterrupted run. `start_step == 0` is a
fresh run: an existing metrics.jsonl and the stored wall time are cleared.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from semgrpo.files import write_json_atomic, write_text_atomic

METRICS_FILE = "metrics.jsonl"
STATE_FILE = "tracker_state.json"
SUMMARY_FILE = "summary.json"
TENSORBOARD_DIR = "tensorboard"
REWARD_KEY = "reward/mean"
LOSS_KEY = "loss"

_MD_SPECIAL = set("\\`*_{}[]()#+-.!|<>~")


def escape_markdown(text: str) -> str:
    """Escape `text` so TensorBoard's markdown renderer shows it verbatim, line breaks included.

    Markdown punctuation gets a backslash, `&` becomes `&amp;`, and every newline becomes a hard line
    break (two spaces before it).
    """
    if not isinstance(text, str):
        raise TypeError(f"text has type {type(text).__name__}; expected str")
    out = []
    for ch in text.replace("\r\n", "\n"):
        if ch == "&":
            out.append("&amp;")
        elif ch in _MD_SPECIAL:
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("  \n")
        else:
            out.append(ch)
    return "".join(out)


def _check_step(step: Any) -> int:
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step={step!r}; expected an int >= 0")
    return step


def _as_float(key: str, value: Any) -> float:
    if isinstance(value, bool):
        return float(value)
    try:
        return float(value)  # ints, floats, numpy scalars, one-element tensors
    except (TypeError, ValueError):
        raise ValueError(f"scalar {key!r}={value!r} is not a number") from None


def read_metrics(output_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The lines of `<output_dir>/metrics.jsonl` as dicts (an empty list when the file is absent)."""
    path = Path(output_dir) / METRICS_FILE
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


def _truncate_metrics(path: Path, start_step: int) -> None:
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
                kept.append(json.dumps(row, allow_nan=False) + "\n")
    write_text_atomic(path, "".join(kept))


class RunTracker:
    """Logs a training run on rank 0; a disabled tracker (other ranks) does nothing and writes nothing.

    Args:
        output_dir: the run's output directory (created when enabled).
        enabled: True on rank 0 only.
        total_steps: the number of training steps of the whole run (the progress bar's total).
        start_step: the step the run resumes after (0 for a fresh run).
        desc: the progress bar's label.
    """

    def __init__(self, output_dir: str | os.PathLike, *, enabled: bool, total_steps: int, start_step: int = 0,
                 desc: str = "grpo"):
        if not isinstance(enabled, bool):
            raise ValueError(f"enabled={enabled!r}; expected a bool")
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps={total_steps!r}; expected an int >= 1")
        _check_step(start_step)
        if start_step > total_steps:
            raise ValueError(f"start_step={start_step} is past total_steps={total_steps}")
        self.output_dir = Path(output_dir)
        self.enabled = enabled
        self.total_steps = total_steps
        self.start_step = start_step
        self._closed = False
        self._final_wall: float | None = None
        self._writer = None
        self._bar = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        self.output_dir.mkdir(parents=True, exist_ok=True)
        metrics = self.output_dir / METRICS_FILE
        state_file = self.output_dir / STATE_FILE
        self._prior_wall = 0.0
        if start_step == 0:
            metrics.unlink(missing_ok=True)
            state_file.unlink(missing_ok=True)
        else:
            _truncate_metrics(metrics, start_step)
            if state_file.is_file():
                self._prior_wall = float(json.loads(state_file.read_text(encoding="utf-8"))["wall_seconds"])
        self._t0 = time.monotonic()
        self._writer = SummaryWriter(
            log_dir=str(self.output_dir / TENSORBOARD_DIR), purge_step=start_step + 1 if start_step else None
        )
        self._metrics = open(metrics, "a", encoding="utf-8")  # noqa: SIM115 - open for the run, closed by close()
        self._bar = tqdm(total=total_steps, initial=start_step, desc=desc, file=sys.stderr, dynamic_ncols=True,
                         unit="step")

    # ------------------------------------------------------------------------------------------ logging

    def log(self, step: int, scalars: dict[str, float]) -> None:
        """Record `scalars` at `step`: TensorBoard, one metrics.jsonl line, the progress bar."""
        _check_step(step)
        if not isinstance(scalars, dict):
            raise ValueError(f"scalars has type {type(scalars).__name__}; expected a dict of str -> number")
        values = {}
        for key, value in scalars.items():
            if not isinstance(key, str) or key == "step":
                raise ValueError(f"scalar name {key!r} is not allowed; expected a str other than 'step'")
            values[key] = _as_float(key, value)
        if not self.enabled:
            return
        self._check_open()
        for key, value in values.items():
            self._writer.add_scalar(key, value, global_step=step)
        row = {"step": step, **{k: (v if math.isfinite(v) else None) for k, v in values.items()}}
        self._metrics.write(json.dumps(row, allow_nan=False) + "\n")
        self._metrics.flush()
        if step > self._bar.n:
            self._bar.update(step - self._bar.n)
        postfix = {}
        if REWARD_KEY in values:
            postfix["reward"] = f"{values[REWARD_KEY]:.3f}"
        if LOSS_KEY in values:
            postfix["loss"] = f"{values[LOSS_KEY]:.4g}"
        if postfix:
            self._bar.set_postfix(postfix, refresh=False)
        self._bar.refresh()
        self._save_state()

    def log_text(self, step: int, tag: str, text: str, *, escape: bool = True) -> None:
        """Write `text` (e.g. sample completions) to TensorBoard under `tag`.

        Args:
            step: the training step.
            tag: TensorBoard tag.
            text: shown verbatim: markdown-escaped with `escape_markdown`.
            escape: False passes `text` through as markdown (e.g. a table whose cells the caller
                escaped with `escape_markdown`).
        """
        _check_step(step)
        if not isinstance(tag, str) or not tag:
            raise ValueError(f"tag={tag!r}; expected a non-empty str")
        if not isinstance(escape, bool):
            raise ValueError(f"escape={escape!r}; expected a bool")
        if not isinstance(text, str):
            raise ValueError(f"text has type {type(text).__name__}; expected str")
        escaped = escape_markdown(text) if escape else text
        if not self.enabled:
            return
        self._check_open()
        self._writer.add_text(tag, escaped, global_step=step)

    def wall_seconds(self) -> float:
        """Wall-clock seconds of this run, summed over every session that logged into output_dir."""
        if not self.enabled:
            return 0.0
        if self._final_wall is not None:
            return self._final_wall
        return self._prior_wall + (time.monotonic() - self._t0)

    def _save_state(self) -> None:
        write_json_atomic(self.output_dir / STATE_FILE, {"wall_seconds": self.wall_seconds()})

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("RunTracker is closed")

    # ------------------------------------------------------------------------------------------ summary

    def summary(self, **extra: Any) -> dict[str, Any]:
        """Summarize the logged history and write it to `<output_dir>/summary.json`.

        Returns:
            `steps` (the last logged step), `logged_steps`, `reward_mean_first_20pct` and
            `reward_mean_last_20pct` (mean of `reward/mean` over the first and last 20% of the steps
            that logged it, at least one step each; None when none did), `wall_seconds`, plus `extra`.
            An empty dict on a disabled tracker.
        """
        if not self.enabled:
            return {}
        clash = sorted(set(extra) & {"steps", "logged_steps", "reward_mean_first_20pct", "reward_mean_last_20pct",
                                     "wall_seconds"})
        if clash:
            raise ValueError(f"extra keys {clash} clash with the summary's own keys")
        if not self._closed:
            self._metrics.flush()
        rows = read_metrics(self.output_dir)
        rewards = [r[REWARD_KEY] for r in sorted(rows, key=lambda r: r["step"]) if r.get(REWARD_KEY) is not None]
        k = max(1, len(rewards) // 5)
        out = {
            "steps": max((r["step"] for r in rows), default=0),
            "logged_steps": len(rows),
            "reward_mean_first_20pct": sum(rewards[:k]) / k if rewards else None,
            "reward_mean_last_20pct": sum(rewards[-k:]) / k if rewards else None,
            "wall_seconds": self.wall_seconds(),
            **extra,
        }
        write_json_atomic(self.output_dir / SUMMARY_FILE, out)
        return out

    def plot_reward_curve(self, path: str | os.PathLike | None = None, *, window: int | None = None) -> Path | None:
        """Draw `reward/mean` and its trailing moving average against the step to a PNG.

        Args:
            path: the PNG to write; default `<output_dir>/reward_curve.png`.
            window: moving-average width in logged steps; default max(1, n // 10).

        Returns:
            The PNG path, or None on a disabled tracker.
        """
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise ValueError(f"window={window!r}; expected an int >= 1")
        if not self.enabled:
            return None
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        path = Path(path) if path is not None else self.output_dir / "reward_curve.png"
        if not self._closed:
            self._metrics.flush()
        pts = sorted((r["step"], r[REWARD_KEY]) for r in read_metrics(self.output_dir) if r.get(REWARD_KEY) is not None)
        fig = Figure(figsize=(7, 4), dpi=100)
        FigureCanvasAgg(fig)  # Agg canvas without pyplot: no global backend state
        ax = fig.add_subplot(1, 1, 1)
        if pts:
            steps, rewards = zip(*pts)
            w = window or max(1, len(pts) // 10)
            avg = [sum(rewards[max(0, i - w + 1):i + 1]) / (i + 1 - max(0, i - w + 1)) for i in range(len(rewards))]
            ax.plot(steps, rewards, alpha=0.4, label=REWARD_KEY)
            ax.plot(steps, avg, label=f"moving average ({w})")
            ax.legend(loc="best")
        else:
            ax.text(0.5, 0.5, f"no {REWARD_KEY} logged", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("step")
        ax.set_ylabel("reward")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(str(path), format="png")
        return path

    # ---------------------------------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Flush and close the files and the progress bar (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if not self.enabled:
            return
        self._save_state()
        self._final_wall = self.wall_seconds()
        self._metrics.close()
        self._writer.flush()
        self._writer.close()
        self._bar.close()

    def __enter__(self) -> RunTracker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
