"""The experiment's report: results.json (everything), table.md (the gate, the matched-quality test, the paper's
table) and frontier.png (test chrF and independent similarity against the test alignment tax, one line per
method and learning rate through its checkpoints).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

from reproduce import frontier, grid

LABELS = {"base": "Base", "cold_start": "Cold start (SFT)", "grpo": "Cold start + GRPO (ours)",
          "grpo_beta": "GRPO, beta 0.04", "grpo_length": "GRPO + length reward",
          "sft_continuation": "Cold start + SFT continuation", "strong_sft": "Strong SFT"}
COLORS = {"cold_start": "tab:gray", "grpo": "tab:blue", "grpo_beta": "tab:cyan", "grpo_length": "tab:purple",
          "sft_continuation": "tab:orange", "strong_sft": "tab:red"}


def _arm(run: str) -> str:
    return run.split("_lr")[0]


def curves_of(runs: dict) -> dict:
    """{seed: {run: {set: [Point]}}} from the eval.json dicts."""
    return {s: {run: {which: frontier.curve(ev, start=None if _arm(run) in ("cold_start", "strong_sft")
                                            else "cold_start") for which, ev in sets.items()}
                for run, sets in by_run.items()} for s, by_run in runs.items()}


def base_points(runs: dict) -> dict:
    """The base model on the test set, per seed (every evaluation holds it; the first one is taken)."""
    out = {}
    for s, by_run in runs.items():
        ev = next(iter(by_run.values()))["test"]
        out[s] = frontier.point("base", ev["models"]["base"], ev["models"]["base"], 0)
    return out


def paper_rows(curves: dict, picked: dict) -> dict:
    """The last checkpoint of each of the paper's arms on test, per seed: {arm: {seed: Point}}."""
    rows = {"cold_start": "cold_start", "grpo": grid.run_name("grpo", picked["grpo"]),
            "sft_continuation": grid.run_name("sft_continuation", picked["sft_continuation"]),
            "strong_sft": "strong_sft"}
    return {arm: {s: curves[s][run]["test"][-1] for s in curves if run in curves[s]} for arm, run in rows.items()}


def write_report(results_dir: Path, *, meta: dict, runs: dict, picked: dict | None, matched: dict | None) -> dict:
    """Write results.json, table.md and frontier.png into `results_dir`; return the results dict."""
    results_dir.mkdir(parents=True, exist_ok=True)
    curves = curves_of(runs)
    results = {"schema": "semgrpo.reproduce/2", **meta, "picked": picked,
               "matched": matched or {"q_star": None, "metric": "chrf", "per_seed": [], "grpo_tax_lower": False,
                                      "reason": "not testable at this size: a gate failed"},
               "curves": {str(s): {run: {w: [asdict(p) for p in pts] for w, pts in sets.items()}
                                   for run, sets in by_run.items()} for s, by_run in curves.items()}}
    (results_dir / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True, default=_finite) + "\n",
                                              encoding="utf-8")
    base = base_points(runs)
    (results_dir / "table.md").write_text(markdown(results, curves, picked, base), encoding="utf-8")
    plot_frontier(curves, base, meta["gate"], results["matched"].get("q_star"), results_dir / "frontier.png")
    return results


def _finite(x):
    return None if isinstance(x, float) and not math.isfinite(x) else x


def _iv(values: list[float], digits: int, signed: bool = False) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "n/a"
    iv = frontier.t_interval(values)
    fmt = f"{{:{'+' if signed else ''}.{digits}f}}"
    if iv["low"] is None:
        return fmt.format(iv["mean"])
    return fmt.format(iv["mean"]) + f" ± {(iv['high'] - iv['mean']):.{digits}f}"


def _needed(value: float, signed: bool = False) -> str:
    return "off (--quick)" if value < -1e6 else f">= {'+' if signed else ''}{value:g}"


def markdown(results: dict, curves: dict, picked: dict | None, base: dict) -> str:
    g = results["gate"]
    lines = ["## Gate (test sets)", "",
             "| check | measured | needed | |", "| --- | --- | --- | --- |",
             f"| base OOD NLL below the unigram model's (nats/token) | {g['base_nll']:.3f} vs {g['unigram_nll']:.3f}:"
             f" {g['base_gap']:.2f} | {_needed(g['base_gap_needed'])} | "
             f"{'ok' if g['base_gap'] >= g['base_gap_needed'] else 'FAILS'} |"]
    if "strong_sft_chrf" in g:
        over = g["strong_sft_chrf"] - g["floor_random_line"]
        lines.append(f"| Strong SFT chrF above the random-training-line floor | {g['strong_sft_chrf']:.2f} vs "
                     f"{g['floor_random_line']:.2f}: {over:+.2f} | {_needed(g['chrf_over_floor_needed'], True)} | "
                     f"{'ok' if over >= g['chrf_over_floor_needed'] else 'FAILS'} |")
        lines.append(f"| (most frequent training line) | {g['floor_most_frequent_line']:.2f} | | |")
    m = results["matched"]
    lines += ["", "## Matched quality: Δ test OOD NLL at q* (the pre-registered test)", ""]
    if not g.get("passed"):
        lines += ["**Not testable at this size**: a gate failed, so no arm beyond the cold start and Strong SFT ran "
                  "and there is no verdict.", ""]
        rows = {arm: {s: curves[s][arm]["test"][-1] for s in curves if arm in curves[s]}
                for arm in ("cold_start", "strong_sft")}
        return "\n".join(lines + _paper_table(base, rows)) + "\n"
    q = m["q_star"]
    lines += [f"Picked on seed 0's select curves: GRPO lr x{picked['grpo']:g}, SFT continuation lr "
              f"x{picked['sft_continuation']:g} (of the SFT rate); q* = "
              + ("none" if q is None else f"{q:.2f} chrF") + ".", "",
              "| seed | GRPO | SFT continuation | GRPO - SFT |", "| --- | --- | --- | --- |"]
    fmt = lambda v: ("no q*" if q is None else "not reached") if v is None else f"{v:+.3f}"
    for r in m["per_seed"]:
        diff = None if r["grpo"] is None or r["sft"] is None else r["grpo"] - r["sft"]
        lines.append(f"| {r['seed']} | {fmt(r['grpo'])} | {fmt(r['sft'])} | {fmt(diff)} |")
    d = m.get("difference")
    if d:
        ci = "" if d["low"] is None else f", 95% interval [{d['low']:+.3f}, {d['high']:+.3f}]"
        lines.append(f"| mean | | | {d['mean']:+.3f}{ci} |")
    lines += ["", f"**Verdict: GRPO pays less tax = {m['grpo_tax_lower']}** ({m['reason']}).", ""]
    return "\n".join(lines + _paper_table(base, paper_rows(curves, picked))) + "\n"


def _paper_table(base: dict, rows: dict) -> list[str]:
    lines = ["## The paper's table (test sets, last checkpoint; mean ± 95% interval over seeds)", "",
             "| Model | BLEU | chrF | Similarity (reward) | Similarity (independent) | Length | At cap | "
             "Δ OOD NLL | of it: script shift | renormalised | KL to base |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for arm, by_seed in {"base": base, **rows}.items():
        pts = list(by_seed.values())
        col = lambda f, d, signed=False: _iv([getattr(p, f) for p in pts], d, signed)
        lines.append(f"| {LABELS[arm]} | {col('bleu', 2)} | {col('chrf', 2)} | {col('similarity', 3)} | "
                     f"{col('similarity_independent', 3)} | {col('mean_length', 1)} | {col('capped_share', 2)} | "
                     f"{col('delta_nll', 3, True)} | {col('script_shift', 3, True)} | "
                     f"{col('nll_renormalised', 3, True)} | {col('kl', 3)} |")
    return lines


def plot_frontier(curves: dict, base: dict, gate: dict, q_star: float | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.6))
    for ax, field, label in ((axes[0], "chrf", "test chrF ↑"),
                             (axes[1], "similarity_independent", "test similarity, independent encoder ↑")):
        seen = set()
        for s, by_run in sorted(curves.items()):
            for run, sets in sorted(by_run.items()):
                pts = sets["test"]
                ys = [getattr(p, field) for p in pts]
                if any(y is None for y in ys):
                    continue
                arm = _arm(run)
                name = LABELS[arm] + (f" (lr x{run.split('_lr')[1]})" if "_lr" in run else "")
                ax.plot([p.delta_nll for p in pts], ys, marker="o", ms=3, lw=1.6 if s == 0 else 0.8,
                        alpha=1.0 if s == 0 else 0.45, color=COLORS[arm],
                        ls={"0.025": ":", "0.1": "--"}.get(run.split("_lr")[-1], "-") if "_lr" in run else "-",
                        label=None if (s != 0 or name in seen) else name)
                seen.add(name)
        ax.scatter([0.0] * len(base), [getattr(p, field) for p in base.values()], color="black", s=30, zorder=5,
                   label="base (Δ = 0)")
        if field == "chrf":
            if "floor_random_line" in gate:
                ax.axhline(gate["floor_random_line"], color="black", lw=0.8, ls="--", label="random training line")
                ax.axhline(gate["floor_most_frequent_line"], color="gray", lw=0.8, ls=":",
                           label="most frequent training line")
            if q_star is not None:
                ax.axhline(q_star, color="tab:green", lw=1.0, ls="-.", label="q* (matched quality)")
        ax.axvline(0.0, color="black", lw=0.5, ls=":")
        ax.set_xlabel("Δ test OOD NLL vs base (nats/token): the alignment tax →")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=6.5, loc="best")
    fig.suptitle("Quality against alignment tax through each run's checkpoints (thick: seed 0; thin: seeds 1, 2)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
