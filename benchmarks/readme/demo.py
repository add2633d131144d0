"""The demo's figures: its committed run (benchmarks/results/demo/), its evaluation (demo_eval/) and the run with
dynamic sampling from the same cold start (demo_dynamic/)."""
from __future__ import annotations

from readme.markers import FigureError
from readme.sources import RESULTS, get, load_json, load_jsonl

DEMO = f"{RESULTS}/demo"
EVAL = f"{RESULTS}/demo_eval/eval.json"
DYNAMIC = f"{RESULTS}/demo_dynamic"


def duration(seconds: float) -> str:
    """'59 s', '3 min 22 s', '1 h 2 min' (how the README gives wall times)."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def _summary(run: str, *keys):
    rel = f"{run}/summary.json"
    return get(load_json(rel), rel, *keys)


def _run(run: str, *keys):
    rel = f"{run}/run.json"
    return get(load_json(rel), rel, *keys)


def _load(run: str) -> str:
    """'11.4 at the start, 5.8 at the end': the machine's 1-minute load average around the run (2 cores)."""
    return f"{_run(run, 'load_average', 'start'):.1f} at the start, {_run(run, 'load_average', 'end'):.1f} at the end"


def _eval(model: str, *keys) -> float:
    return get(load_json(EVAL), EVAL, "models", model, *keys)


def _metrics(run: str) -> list[dict]:
    return list(load_jsonl(f"{run}/metrics.jsonl"))


def _mean(values) -> float:
    values = [v for v in values if v is not None]
    return sum(values) / len(values)


# ------------------------------------------------------------------------------------ the demo run

def demo_figures() -> dict:
    return {
        "demo.date": lambda: _run(DEMO, "date"),
        "demo.commit": lambda: _run(DEMO, "commit")[:7],
        "demo.tau": lambda: f"{_summary(DEMO, 'tau'):.3f}",
        "demo.reward_first": lambda: f"{_summary(DEMO, 'reward_mean_first_20pct'):.3f}",
        "demo.reward_last": lambda: f"{_summary(DEMO, 'reward_mean_last_20pct'):.3f}",
        "demo.steps": lambda: str(_summary(DEMO, "total_steps")),
        "demo.grpo_time": lambda: duration(_summary(DEMO, "wall_seconds")),
        "demo.cold_start_time": lambda: duration(get(load_json(f"{DEMO}/cold_start_summary.json"),
                                                     f"{DEMO}/cold_start_summary.json", "wall_seconds")),
        "demo.command_time": lambda: duration(_run(DEMO, "wall_seconds", "demo")),
        "demo.load": lambda: _load(DEMO),
    }


# ------------------------------------------------------------------------------ its evaluation

def eval_figures() -> dict:
    out = {"demo_eval.dev_samples": lambda: str(_eval("base", "task", "n"))}
    for model in ("base", "cold_start", "grpo"):
        out |= {f"demo_eval.{model}.similarity": lambda m=model: f"{_eval(m, 'task', 'similarity', 'mean'):.3f}",
                f"demo_eval.{model}.bleu": lambda m=model: f"{_eval(m, 'task', 'bleu'):.2f}",
                f"demo_eval.{model}.chrf": lambda m=model: f"{_eval(m, 'task', 'chrf'):.2f}",
                f"demo_eval.{model}.cmrc_f1": lambda m=model: f"{_eval(m, 'cmrc', 'f1'):.2f}",
                f"demo_eval.{model}.ood_nll": lambda m=model: f"{_eval(m, 'ood', 'nll', 'mean'):.3f}"}
    return out


# ----------------------------------------------------- dynamic sampling against the plain demo run

FLAT = "reward/frac_zero_std_groups"


def _flat_share(run: str, last: int | None = None) -> str:
    rows = [r for r in _metrics(run) if r.get(FLAT) is not None]
    rows = rows[-last:] if last else rows
    return f"{100 * _mean(r[FLAT] for r in rows):.0f}%"


def dynamic_figures() -> dict:
    def rounds():
        return [r["sampling/rounds"] for r in _metrics(DYNAMIC) if r.get("sampling/rounds") is not None]

    def drawn():
        return [r["sampling/prompts_drawn"] for r in _metrics(DYNAMIC) if r.get("sampling/prompts_drawn") is not None]

    def drawn_without():
        """What the same steps draw without refills: a step of one round draws one batch of prompts."""
        one_round = {d for d, n in zip(drawn(), rounds()) if n == 1}
        if len(one_round) != 1:
            raise FigureError(f"{DYNAMIC}/metrics.jsonl: the one-round steps drew {sorted(one_round)} prompts")
        return one_round.pop() * len(drawn())

    return {
        "dynamic.flat_share": lambda: _flat_share(DEMO),
        "dynamic.flat_share_last50": lambda: _flat_share(DEMO, last=50),
        "dynamic.steps_with_flat_groups": lambda: str(sum(1 for r in _metrics(DYNAMIC) if (r.get(FLAT) or 0) > 0)),
        "dynamic.rounds_mean": lambda: f"{_mean(rounds()):.2f}",
        "dynamic.rounds_max": lambda: f"{max(rounds()):.0f}",
        "dynamic.prompts_drawn": lambda: f"{sum(drawn()):.0f}",
        "dynamic.prompts_without": lambda: f"{drawn_without():.0f}",
        "dynamic.date": lambda: _run(DYNAMIC, "date"),
        "dynamic.grpo_time": lambda: duration(_summary(DYNAMIC, "wall_seconds")),
    }


FIGURES = {**demo_figures(), **eval_figures(), **dynamic_figures()}
