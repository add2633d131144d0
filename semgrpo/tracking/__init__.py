"""Run logging on rank 0: metrics.jsonl, the trackers of `run.report_to`, a progress bar, summary.json.

Files under `output_dir` (only when the tracker is enabled):

    metrics.jsonl       always: one line per `log()`: {"step": .., **scalars}; non-finite values are null
    tracker_state.json  wall seconds over every session of this run; the wandb run id and last step sent
    summary.json        `summary()`; reward_curve.png from `plot_reward_curve()`
    tensorboard/        report_to tensorboard: SummaryWriter event files (scalars, text, sample tables)
    wandb/              report_to wandb: wandb's run folders (`offline-run-*` when offline, `run-*` online)
    samples.jsonl       report_to jsonl: one line per `log_samples()`: {"step": .., "rows": [..]}

The same scalars go to TensorBoard and wandb at the same step; non-finite values go to both as they are
(NaN, inf), metrics.jsonl writes null. wandb runs offline when WANDB_MODE is unset and its host does not
answer within 2 s (`wandb sync <output_dir>/wandb` uploads it later); a set WANDB_MODE is obeyed.

On resume (`start_step > 0`) lines with step > start_step are dropped from metrics.jsonl and samples.jsonl
first and TensorBoard events after start_step are purged, so the files equal those of an uninterrupted run.
wandb cannot take back what it was sent: the resumed session continues the same wandb run (its id is kept in
tracker_state.json) and sends only the steps after the last one it already holds. `start_step == 0` is a
fresh run: existing metrics.jsonl / samples.jsonl, the stored wall time and the wandb run id are cleared.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from semgrpo.config.choices import TRACKERS
from semgrpo.files import write_json_atomic
from semgrpo.tracking.files import (
    METRICS_FILE,
    REWARD_CURVE_FILE,
    SAMPLES_FILE,
    STATE_FILE,
    SUMMARY_FILE,
    TENSORBOARD_DIR,
    read_metrics,
    read_samples,
    read_state,
    truncate_jsonl,
)
from semgrpo.tracking.samples import as_float, check_samples, escape_markdown, samples_markdown
from semgrpo.tracking.summary import draw_reward_curve, summarize
from semgrpo.tracking.wandb_run import SAMPLE_COLUMNS, WandbRun

__all__ = [
    "METRICS_FILE", "SAMPLES_FILE", "SAMPLE_COLUMNS", "STATE_FILE", "SUMMARY_FILE", "TENSORBOARD_DIR", "TRACKERS",
    "RunTracker", "check_trackers", "escape_markdown", "read_metrics", "read_samples",
]

REWARD_KEY = "reward/mean"
LOSS_KEY = "loss"


def _check_step(step: Any) -> int:
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step={step!r}; expected an int >= 0")
    return step


def _trackers(report_to: Any) -> tuple[str, ...]:
    """The trackers `report_to` names, checked; ("none",) is the empty tuple."""
    if isinstance(report_to, str) or not isinstance(report_to, (list, tuple)):
        raise ValueError(f"report_to={report_to!r}; expected a list of {', '.join(TRACKERS)} or ['none']")
    names = tuple(report_to)
    if names == ("none",):
        return ()
    bad = [n for n in names if n not in TRACKERS]
    if not names or bad or len(set(names)) != len(names):
        raise ValueError(f"report_to={list(names)!r}; expected distinct names out of {', '.join(TRACKERS)}, "
                         f"or ['none'] alone")
    return names


def check_trackers(report_to: Any) -> None:
    """Fail early, with a `ConfigError`, when `run.report_to` names a tracker this environment lacks.

    Call it before the model loads. wandb is imported only when asked for (importing semgrpo never does).
    """
    from semgrpo.config import ConfigError

    if "wandb" not in _trackers(report_to):
        return
    try:
        import wandb  # noqa: F401
    except ImportError as e:
        missing = isinstance(e, ModuleNotFoundError) and e.name == "wandb"
        why = "is not installed" if missing else f"cannot be imported ({str(e).splitlines()[0] if str(e) else e!r})"
        raise ConfigError(f"run.report_to names wandb, but the wandb package {why}: pip install wandb (or "
                          f"pip install -e '.[wandb]'), or leave wandb out of run.report_to") from None


class RunTracker:
    """Logs a training run on rank 0; a disabled tracker (other ranks) does nothing and writes nothing.

    Args:
        output_dir: the run's output directory (created when enabled).
        enabled: True on rank 0 only.
        total_steps: the number of training steps of the whole run (the progress bar's total).
        start_step: the step the run resumes after (0 for a fresh run).
        desc: the progress bar's label (and the wandb job type).
        report_to: the trackers besides metrics.jsonl: any of `TRACKERS`, or ["none"] (`run.report_to`).
        config: the resolved configuration, recorded as the wandb run's config.
    """

    def __init__(self, output_dir: str | os.PathLike, *, enabled: bool, total_steps: int, start_step: int = 0,
                 desc: str = "grpo", report_to: list[str] | tuple[str, ...] = ("tensorboard",),
                 config: dict[str, Any] | None = None):
        self.report_to = _trackers(report_to)
        if config is not None and not isinstance(config, dict):
            raise ValueError(f"config has type {type(config).__name__}; expected a dict or None")
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
        self._writer = None  # TensorBoard
        self._wandb: WandbRun | None = None
        self._samples = None  # samples.jsonl
        self._bar = None
        if not enabled:
            return
        from tqdm import tqdm

        self.output_dir.mkdir(parents=True, exist_ok=True)
        metrics, samples = self.output_dir / METRICS_FILE, self.output_dir / SAMPLES_FILE
        state_file = self.output_dir / STATE_FILE
        self._state: dict[str, Any] = {}  # tracker_state.json: wall_seconds, wandb_run_id, wandb_step
        if start_step == 0:
            for path in (metrics, samples, state_file):
                path.unlink(missing_ok=True)
        else:
            for path in (metrics, samples):
                truncate_jsonl(path, start_step)
            if state_file.is_file():
                self._state = read_state(state_file)
        self._prior_wall = float(self._state.get("wall_seconds", 0.0))
        self._t0 = time.monotonic()
        if "tensorboard" in self.report_to:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.output_dir / TENSORBOARD_DIR),
                                         purge_step=start_step + 1 if start_step else None)
        if "wandb" in self.report_to:
            run_id = self._state.get("wandb_run_id") or secrets.token_hex(6)
            sent = int(self._state.get("wandb_step", 0)) if "wandb_run_id" in self._state else 0
            self._wandb = WandbRun(self.output_dir, run_id=run_id, sent_before=sent, config=config, job=desc)
        if "jsonl" in self.report_to:
            self._samples = open(samples, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self._metrics = open(metrics, "a", encoding="utf-8")  # noqa: SIM115 - open for the run, closed by close()
        self._bar = tqdm(total=total_steps, initial=start_step, desc=desc, file=sys.stderr, dynamic_ncols=True,
                         unit="step")

    # ------------------------------------------------------------------------------------------ logging

    def log(self, step: int, scalars: dict[str, float]) -> None:
        """Record `scalars` at `step`: one metrics.jsonl line, TensorBoard, wandb, the progress bar."""
        _check_step(step)
        if not isinstance(scalars, dict):
            raise ValueError(f"scalars has type {type(scalars).__name__}; expected a dict of str -> number")
        values = {}
        for key, value in scalars.items():
            if not isinstance(key, str) or key == "step":
                raise ValueError(f"scalar name {key!r} is not allowed; expected a str other than 'step'")
            values[key] = as_float(key, value)
        if not self.enabled:
            return
        self._check_open()
        if self._writer is not None:
            for key, value in values.items():
                self._writer.add_scalar(key, value, global_step=step)
        if self._wandb is not None:
            self._wandb.log(step, values)
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

    def log_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        """Record completion samples at `step` in each tracker (nothing when `samples` is empty).

        TensorBoard: a Markdown table under the text tag "samples"; wandb: a `wandb.Table` (columns
        `SAMPLE_COLUMNS`) under the key "samples"; jsonl: one samples.jsonl line {"step", "rows"}
        (a non-finite reward is null there).

        Args:
            step: the training step.
            samples: dicts with keys prompt, completion, reference (str) and reward (a number).
        """
        _check_step(step)
        rows = check_samples(samples)
        if not self.enabled or not rows:
            return
        self._check_open()
        if self._writer is not None:
            self._writer.add_text("samples", samples_markdown(rows), global_step=step)
        if self._wandb is not None:
            self._wandb.log_samples(step, rows)
        if self._samples is not None:
            clean = [{**r, "reward": r["reward"] if math.isfinite(r["reward"]) else None} for r in rows]
            self._samples.write(json.dumps({"step": step, "rows": clean}, ensure_ascii=False, allow_nan=False) + "\n")
            self._samples.flush()

    def log_text(self, step: int, tag: str, text: str, *, escape: bool = True) -> None:
        """Write `text` to TensorBoard under `tag` (no other tracker takes free text; a no-op without it).

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
        if self._writer is not None:
            self._writer.add_text(tag, escaped, global_step=step)

    def wall_seconds(self) -> float:
        """Wall-clock seconds of this run, summed over every session that logged into output_dir."""
        if not self.enabled:
            return 0.0
        if self._final_wall is not None:
            return self._final_wall
        return self._prior_wall + (time.monotonic() - self._t0)

    def _save_state(self) -> None:
        self._state["wall_seconds"] = self.wall_seconds()
        if self._wandb is not None:
            self._state.update(wandb_run_id=self._wandb.run_id, wandb_step=self._wandb.committed)
        write_json_atomic(self.output_dir / STATE_FILE, self._state)

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
            An empty dict on a disabled tracker. With wandb the values that are numbers or strings also
            go to the wandb run's summary as `summary/<key>`.
        """
        if not self.enabled:
            return {}
        clash = sorted(set(extra) & {"steps", "logged_steps", "reward_mean_first_20pct", "reward_mean_last_20pct",
                                     "wall_seconds"})
        if clash:
            raise ValueError(f"extra keys {clash} clash with the summary's own keys")
        if not self._closed:
            self._metrics.flush()
        out = {**summarize(read_metrics(self.output_dir), REWARD_KEY), "wall_seconds": self.wall_seconds(), **extra}
        write_json_atomic(self.output_dir / SUMMARY_FILE, out)
        if self._wandb is not None and not self._closed:
            self._wandb.run.summary.update({f"summary/{k}": v for k, v in out.items()
                                            if isinstance(v, (int, float, str))})
        return out

    def plot_reward_curve(self, path: str | os.PathLike | None = None, *, window: int | None = None) -> Path | None:
        """Draw `reward/mean` and its trailing moving average against the step to a PNG.

        Args:
            path: the PNG to write; default `<output_dir>/reward_curve.png` (REWARD_CURVE_FILE).
            window: moving-average width in logged steps; default max(1, n // 10).

        Returns:
            The PNG path, or None on a disabled tracker.
        """
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise ValueError(f"window={window!r}; expected an int >= 1")
        if not self.enabled:
            return None
        path = Path(path) if path is not None else self.output_dir / REWARD_CURVE_FILE
        if not self._closed:
            self._metrics.flush()
        draw_reward_curve(read_metrics(self.output_dir), REWARD_KEY, path, window=window)
        return path

    # ---------------------------------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Flush and close the files and the progress bar (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if not self.enabled:
            return
        self._final_wall = self.wall_seconds()
        self._metrics.close()
        if self._samples is not None:
            self._samples.close()
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
        if self._wandb is not None:
            self._wandb.finish()
        self._save_state()
        self._bar.close()

    @contextlib.contextmanager
    def closed_on_error(self):
        """A block that closes the tracker when it raises, so that the progress bar ends before the entry point
        prints the error line (otherwise both share one terminal line)."""
        try:
            yield self
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> RunTracker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
