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
from semgrpo.files import write_json_atomic, write_text_atomic
from semgrpo.tracking_wandb import SAMPLE_COLUMNS, WandbRun

METRICS_FILE = "metrics.jsonl"
STATE_FILE = "tracker_state.json"
SUMMARY_FILE = "summary.json"
TENSORBOARD_DIR = "tensorboard"
SAMPLES_FILE = "samples.jsonl"
REWARD_KEY = "reward/mean"
LOSS_KEY = "loss"
# What run.report_to may name ("none" alone = metrics.jsonl only); the wandb table's columns.

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


def _truncate_jsonl(path: Path, start_step: int) -> None:
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


def _read_state(path: Path) -> dict[str, Any]:
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


def _check_samples(samples: Any) -> list[dict[str, Any]]:
    """`samples` as rows of SAMPLE_COLUMNS (reward a float), or a ValueError naming the bad row."""
    if not isinstance(samples, (list, tuple)):
        raise ValueError(f"samples has type {type(samples).__name__}; expected a list of dicts")
    rows = []
    for i, s in enumerate(samples):
        if not isinstance(s, dict) or any(k not in s for k in SAMPLE_COLUMNS):
            raise ValueError(f"samples[{i}]={s!r}; expected a dict with keys {', '.join(SAMPLE_COLUMNS)}")
        bad = next((k for k in SAMPLE_COLUMNS[:3] if not isinstance(s[k], str)), None)
        if bad is not None:
            raise ValueError(f"samples[{i}][{bad!r}] has type {type(s[bad]).__name__}; expected str")
        rows.append({**{k: s[k] for k in SAMPLE_COLUMNS[:3]}, "reward": _as_float("reward", s["reward"])})
    return rows


def _samples_markdown(rows: list[dict[str, Any]]) -> str:
    """Completions as a Markdown table (TensorBoard renders text as Markdown), cells escaped.

    One prompt shared by every row (one group) is written once above the table; else it is a column.
    """
    cell = lambda text: escape_markdown(text.replace("\r\n", " ").replace("\n", " "))
    one_prompt = len({r["prompt"] for r in rows}) == 1
    keys = ("completion", "reference") if one_prompt else ("prompt", "completion", "reference")
    lines = ["| reward | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for r in rows:
        lines.append(f"| {r['reward']:.3f} | " + " | ".join(cell(r[k]) for k in keys) + " |")
    table = "\n".join(lines)
    return f"prompt: {escape_markdown(rows[0]['prompt'])}\n\n{table}" if one_prompt else table


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
                _truncate_jsonl(path, start_step)
            if state_file.is_file():
                self._state = _read_state(state_file)
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
            values[key] = _as_float(key, value)
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
        rows = _check_samples(samples)
        if not self.enabled or not rows:
            return
        self._check_open()
        if self._writer is not None:
            self._writer.add_text("samples", _samples_markdown(rows), global_step=step)
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
        if self._wandb is not None and not self._closed:
            self._wandb.run.summary.update({f"summary/{k}": v for k, v in out.items()
                                            if isinstance(v, (int, float, str))})
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
