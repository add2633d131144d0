"""The experiment's numbers: per arm and seed from each seed's ``eval.json``, then mean ± 95% interval.

Outputs (``write_report``): ``results.json`` (everything), ``table.md`` (Table 3's layout with OOD drift in
place of CMRC, then Appendix C's NLL and KL panels) and ``tax_vs_quality.png`` (x = Δ OOD NLL vs the base,
the tax; y = dev similarity; one point per arm and seed).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

ARMS = ("cold_start", "cold_start_grpo", "strong_sft")
LABELS = {"base": "Base", "cold_start": "Cold start (SFT)", "cold_start_grpo": "Cold start + GRPO (ours)",
          "strong_sft": "Strong SFT"}
COLORS = {"cold_start": "tab:gray", "cold_start_grpo": "tab:blue", "strong_sft": "tab:red"}
# Two-sided 95% quantiles of Student's t by degrees of freedom (standard tables).
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def arm_metrics(eval_json: dict, name: str) -> dict:
    """The numbers of one model in one seed's eval.json; Δ are differences to that file's base row."""
    models = eval_json["models"]
    if name not in models or "base" not in models:
        raise KeyError(f"eval.json has no {name!r} or 'base' model (has {sorted(models)})")
    m, base = models[name], models["base"]
    out = {"bleu": m["task"]["bleu"], "chrf": m["task"]["chrf"], "similarity": m["task"]["similarity"]["mean"],
           "target_script": m["task"]["script_consistent"]}
    for kind in ("nll", "kl"):
        for stat in ("mean", "median", "p90"):
            out[f"{kind}_{stat}"] = m["ood"][kind][stat]
    for stat in ("mean", "median", "p90"):
        out[f"delta_nll_{stat}"] = m["ood"]["nll"][stat] - base["ood"]["nll"][stat]
    return out


def interval(values: list[float]) -> dict:
    """Mean and the half-width of its 95% t-interval (0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return {"mean": mean, "ci95": 0.0, "n": n}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return {"mean": mean, "ci95": _T975.get(n - 1, 1.96) * sd / math.sqrt(n), "n": n}


def aggregate(per_seed: dict[int, dict[str, dict]]) -> dict[str, dict[str, dict]]:
    """``{arm: {metric: interval}}`` over seeds."""
    arms = list(next(iter(per_seed.values())))
    return {arm: {k: interval([per_seed[s][arm][k] for s in per_seed]) for k in per_seed[next(iter(per_seed))][arm]}
            for arm in arms}


def _cell(iv: dict, digits: int, signed: bool = False) -> str:
    fmt = f"{{:{'+' if signed else ''}.{digits}f}}"
    return fmt.format(iv["mean"]) + (f" ± {iv['ci95']:.{digits}f}" if iv["n"] > 1 else "")


def markdown_table(agg: dict, base: dict) -> str:
    """Table 3's layout (task quality, then the alignment tax) and Appendix C's two panels."""
    n = next(iter(next(iter(agg.values())).values()))["n"]
    lines = [f"Mean ± 95% interval over {n} seed(s). Δ = change vs the base model (same OOD tokens).", "",
             "| Model | BLEU | chrF | Similarity | Target script | OOD NLL | Δ OOD NLL (tax) | KL to base |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |",
             f"| {LABELS['base']} | {base['bleu']:.2f} | {base['chrf']:.2f} | {base['similarity']:.4f} | "
             f"{base['target_script']:.3f} | {base['nll_mean']:.3f} | 0 | 0 |"]
    for arm, m in agg.items():
        lines.append(f"| {LABELS[arm]} | {_cell(m['bleu'], 2)} | {_cell(m['chrf'], 2)} | {_cell(m['similarity'], 4)}"
                     f" | {_cell(m['target_script'], 3)} | {_cell(m['nll_mean'], 3)} | "
                     f"{_cell(m['delta_nll_mean'], 3, True)} | {_cell(m['kl_mean'], 4)} |")
    lines += ["", "Appendix C (a): OOD token NLL (nats)", "",
              "| Model | mean | Δ mean | median | Δ median | p90 | Δ p90 |",
              "| --- | --- | --- | --- | --- | --- | --- |",
              f"| {LABELS['base']} | {base['nll_mean']:.3f} | | {base['nll_median']:.3f} | | {base['nll_p90']:.3f} | |"]
    for arm, m in agg.items():
        lines.append(f"| {LABELS[arm]} | " + " | ".join(
            f"{_cell(m[f'nll_{s}'], 3)} | {_cell(m[f'delta_nll_{s}'], 3, True)}" for s in ("mean", "median", "p90"))
            + " |")
    lines += ["", "Appendix C (b): KL(base ‖ model) per OOD token (nats)", "",
              "| Model | mean | median | p90 |", "| --- | --- | --- | --- |"]
    for arm, m in agg.items():
        cells = " | ".join(_cell(m[f"kl_{s}"], 4) for s in ("mean", "median", "p90"))
        lines.append(f"| {LABELS[arm]} | {cells} |")
    return "\n".join(lines) + "\n"


def plot_tax_vs_quality(per_seed: dict[int, dict[str, dict]], path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for arm in ARMS:
        xs = [per_seed[s][arm]["delta_nll_mean"] for s in per_seed]
        ys = [per_seed[s][arm]["similarity"] for s in per_seed]
        ax.scatter(xs, ys, s=50, color=COLORS[arm], label=LABELS[arm], alpha=0.85)
        for s, x, y in zip(per_seed, xs, ys):
            ax.annotate(f"s{s}", (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7, color=COLORS[arm])
    ax.axvline(0.0, color="black", lw=0.6, ls=":")
    ax.set_xlabel("Δ OOD NLL vs base (nats/token): the alignment tax →")
    ax.set_ylabel("dev semantic similarity ↑")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def write_report(results_dir: Path, *, evals: dict[int, dict], meta: dict) -> dict:
    """Read every seed's eval.json dict, write results.json, table.md and the plot; return results."""
    per_seed = {s: {arm: arm_metrics(ev, arm) for arm in ARMS} for s, ev in sorted(evals.items())}
    first = evals[min(evals)]
    base = arm_metrics(first, "base")
    agg = aggregate(per_seed)
    results_dir.mkdir(parents=True, exist_ok=True)
    results = {"schema": "semgrpo.reproduce/1", **meta, "base_model": base, "per_seed": per_seed, "aggregate": agg}
    (results_dir / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (results_dir / "table.md").write_text(markdown_table(agg, base), encoding="utf-8")
    plot_tax_vs_quality(per_seed, results_dir / "tax_vs_quality.png",
                        title=f"mt_zh_bo, {len(per_seed)} seed(s): task quality vs alignment tax")
    return results
