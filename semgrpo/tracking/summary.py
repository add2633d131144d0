"""What a run's logged history says when it ends: the summary's reward figures and the reward curve (PNG)."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def summarize(rows: list[dict[str, Any]], reward_key: str) -> dict[str, Any]:
    """`steps` (the last logged step), `logged_steps`, and the mean of `reward_key` over the first and last 20% of
    the steps that logged it (at least one step each; None when none did), from metrics.jsonl's rows."""
    rewards = [r[reward_key] for r in sorted(rows, key=lambda r: r["step"]) if r.get(reward_key) is not None]
    k = max(1, len(rewards) // 5)
    return {
        "steps": max((r["step"] for r in rows), default=0),
        "logged_steps": len(rows),
        "reward_mean_first_20pct": sum(rewards[:k]) / k if rewards else None,
        "reward_mean_last_20pct": sum(rewards[-k:]) / k if rewards else None,
    }


def draw_reward_curve(rows: list[dict[str, Any]], reward_key: str, path: Path, *, window: int | None) -> None:
    """`reward_key` of metrics.jsonl's rows and its trailing moving average (`window` logged steps; default a tenth
    of them) against the step, as a PNG at `path`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pts = sorted((r["step"], r[reward_key]) for r in rows if r.get(reward_key) is not None)
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)  # Agg canvas without pyplot: no global backend state
    ax = fig.add_subplot(1, 1, 1)
    if pts:
        steps, rewards = zip(*pts)
        w = window or max(1, len(pts) // 10)
        avg = [sum(rewards[max(0, i - w + 1):i + 1]) / (i + 1 - max(0, i - w + 1)) for i in range(len(rewards))]
        ax.plot(steps, rewards, alpha=0.4, label=reward_key)
        ax.plot(steps, avg, label=f"moving average ({w})")
        ax.legend(loc="best")
    else:
        ax.text(0.5, 0.5, f"no {reward_key} logged", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("step")
    ax.set_ylabel("reward")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), format="png")
