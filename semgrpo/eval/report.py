"""Markdown tables and PNG plots from an evaluation result (schema ``"semgrpo.eval/1"``, eval.json).

Layouts follow the paper: Table 3 (task metric, similarity, CMRC, LLM-judge win, gap rows), Table 4
(few-shot transfer) and Appendix C Table 6 (OOD token NLL and KL to the baseline); one more table lists every
reference metric (BLEU, chrF, chrF++, ROUGE-L on sacrebleu's 0-100 scale, the target-script share).
Input scales are those of `semgrpo.eval.metrics`: BLEU, chrF, chrF++, ROUGE-L and CMRC in [0, 100]. Every table
prints them on that scale, as eval.json holds them and the README quotes them (the paper prints BLEU / ROUGE-L
as fractions; a report whose tables disagree by a factor of 100 misleads more than it matches the paper).
Missing values print as "–".
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from semgrpo.files import write_text_atomic

__all__ = ["SCHEMA", "validate_result", "table3_markdown", "table4_markdown", "reference_metrics_markdown",
           "appendix_c_markdown",
           "plot_alignment_tax", "plot_ood_distributions", "write_report"]

SCHEMA = "semgrpo.eval/1"
DASH = "–"
_METRIC_NAMES = {"bleu": "BLEU", "rouge_l": "ROUGE-L", "chrf": "chrF", "chrf_pp": "chrF++"}
_TASK_NAMES = {"mt_bo_zh": "Tibetan–Chinese Machine Translation (MT)",
               "mt_zh_bo": "Chinese–Tibetan Machine Translation (MT)",
               "hg_bo": "Tibetan Headline Generation (HG)"}


def validate_result(result) -> None:
    """Raise ValueError naming the first problem in an eval result dict."""
    if not isinstance(result, dict):
        raise ValueError(f"result must be a dict, got {type(result).__name__}")
    if result.get("schema") != SCHEMA:
        raise ValueError(f"result schema must be {SCHEMA!r}, got {result.get('schema')!r}")
    models = result.get("models")
    if not isinstance(models, dict) or not models:
        raise ValueError("result models must be a non-empty dict of model name -> results")
    base = result.get("baseline")
    if base is not None and base not in models:
        raise ValueError(f"baseline {base!r} is not among the models {list(models)}")
    for i, pair in enumerate(_pairs(result)):
        if not isinstance(pair, dict):
            raise ValueError(f"judge pair {i} must be a dict, got {type(pair).__name__}")
        for side in ("a", "b"):
            if pair.get(side) not in models:
                raise ValueError(f"judge pair {i} names {side}={pair.get(side)!r}, not among the models {list(models)}")


def _pairs(result) -> list[dict]:
    return list(_get(result, "judge", "pairs") or [])


def _get(d, *keys):
    """Nested lookup; None when a level is missing or null."""
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _num(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _sub(a, b) -> float | None:
    return None if a is None or b is None else a - b


def _fmt(x, nd: int, sign: bool = False) -> str:
    if x is None:
        return DASH
    x = round(x, nd) or 0.0  # no "-0.00"
    return f"{x:+.{nd}f}" if sign else f"{x:.{nd}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    align = ["---"] + ["---:"] * (len(header) - 1)
    # a "|" inside a cell (a model name, say) would split it
    return "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in [header, align, *rows])


def _metric_key(result) -> str:
    return result.get("task_metric") or ("rouge_l" if result.get("task") == "hg_bo" else "bleu")


def _judge_win(result, name) -> float | None:
    """Win % of `name` in the first judge pair it appears in (as a: win_rate, as b: loss_rate)."""
    for p in _pairs(result):
        if name in (p.get("a"), p.get("b")):
            rate = _num(p.get("win_rate" if p.get("a") == name else "loss_rate"))
            return None if rate is None else 100.0 * rate
    return None


def _t3_values(result, name) -> list[float | None]:
    m = result["models"][name]
    return [_num(_get(m, "task", _metric_key(result))), _num(_get(m, "task", "similarity", "mean")),
            _num(_get(m, "cmrc", "avg")), _num(_get(m, "cmrc", "f1")), _judge_win(result, name)]


def table3_markdown(result) -> str:
    """Paper Table 3: per model metric / similarity / CMRC / judge win, gap rows, alignment tax vs baseline."""
    validate_result(result)
    metric = _METRIC_NAMES.get(_metric_key(result), _metric_key(result))
    header = ["Model", metric, "Similarity", "CMRC Avg", "CMRC F1", "LLM-Judge Win (%)"]
    digits = [2, 4, 2, 2, 1]  # the metric on 0-100 as eval.json, like the reference-metrics table
    rows = [[n] + [_fmt(v, d) for v, d in zip(_t3_values(result, n), digits)] for n in result["models"]]
    for p in _pairs(result):
        a, b = _t3_values(result, p["a"]), _t3_values(result, p["b"])
        win, loss = _num(p.get("win_rate")), _num(p.get("loss_rate"))
        # the judge gap is within this pair: A's wins minus B's wins (= A's losses)
        gaps = [_sub(x, y) for x, y in zip(a[:4], b[:4])] + [None if None in (win, loss) else 100 * (win - loss)]
        rows.append([f"Gap ({p['a']} vs {p['b']})"] + [_fmt(g, d, sign=True) for g, d in zip(gaps, digits)])
    out = _table(header, rows)
    base = result.get("baseline")
    others = [n for n in result["models"] if n != base]
    if base is not None and others:
        keys = [("avg", "Δ CMRC Avg"), ("f1", "Δ CMRC F1"), ("em", "Δ CMRC EM")]
        ref = result["models"][base]
        tax = [[n] + [_fmt(_sub(_num(_get(result["models"][n], "cmrc", k)), _num(_get(ref, "cmrc", k))), 2, sign=True)
                      for k, _ in keys] for n in others]
        out += f"\n\n**Alignment tax vs {base}** (CMRC points; negative = forgetting)\n\n"
        out += _table(["Model"] + [h for _, h in keys], tax)
    return out


def reference_metrics_markdown(result) -> str:
    """Model | BLEU | chrF | chrF++ | ROUGE-L (0-100) | Target script (share), rows in model order.

    A metric the result lacks (chrF++ in an eval.json written before it existed) prints as "–".
    """
    validate_result(result)
    keys = [("bleu", 2), ("chrf", 2), ("chrf_pp", 2), ("rouge_l", 2), ("script_consistent", 3)]
    rows = [[n] + [_fmt(_num(_get(m, "task", k)), d) for k, d in keys] for n, m in result["models"].items()]
    return _table(["Model", "BLEU", "chrF", "chrF++", "ROUGE-L", "Target script"], rows)


def table4_markdown(result) -> str:
    """Paper Table 4 (few-shot transfer): Model | task metric | Similarity, rows in model order."""
    validate_result(result)
    metric = _METRIC_NAMES.get(_metric_key(result), _metric_key(result))
    rows = [[n, _fmt(v[0], 2), _fmt(v[1], 4)] for n, v in ((n, _t3_values(result, n)) for n in result["models"])]
    return _table(["Model", metric, "Similarity"], rows)


def appendix_c_markdown(result) -> str:
    """Paper Table 6: (a) OOD token NLL and change vs baseline, (b) KL to baseline; "" without OOD data."""
    validate_result(result)
    ood = {n: m["ood"] for n, m in result["models"].items() if isinstance(m, dict) and m.get("ood")}
    if not ood:
        return ""
    base = result.get("baseline")
    stats = ("mean", "median", "p90")
    nll = [[n] + [_fmt(_num(_get(o, "nll", s)), 4) for s in stats]
           + [_fmt(_num(_get(o, "delta_nll", s)), 2, sign=True) for s in stats] for n, o in ood.items()]
    # the baseline's KL to itself is 0 by construction: leave it out of panel (b)
    kl = [[n] + [_fmt(_num(_get(o, "kl", s)), 4) for s in stats] for n, o in ood.items() if n != base]
    ref = base if base is not None else "the base model"
    out = ("**(a) OOD token NLL** (nats/token; lower is better)\n\n"
           + _table(["Model", "Mean", "Median", "P90", "Δ Mean", "Δ Median", "Δ P90"], nll))
    if kl:
        out += f"\n\n**(b) KL to {ref}** (per token)\n\n" + _table(["Model", "Mean", "Median", "P90"], kl)
    return out


def _figure(ncols: int, width: float = 5.5, height: float = 4.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), dpi=120)
    FigureCanvasAgg(fig)  # Agg canvas without pyplot: no global backend state, no display
    return fig, [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(str(path), format="png", dpi=120)
    return path


def plot_alignment_tax(result, path) -> Path | None:
    """Bars of the change vs baseline in CMRC Avg / F1 (points) and OOD mean NLL (nats) per model."""
    validate_result(result)
    base = result.get("baseline")
    names = [n for n in result["models"] if n != base]
    if base is None or not names:
        return None
    ref = result["models"][base]
    cmrc = {k: [_sub(_num(_get(result["models"][n], "cmrc", k)), _num(_get(ref, "cmrc", k))) for n in names]
            for k in ("avg", "f1")}
    nll = [_num(_get(result["models"][n], "ood", "delta_nll", "mean")) for n in names]
    # separate axes: CMRC points and NLL nats have different scales; series: label -> (values, color)
    panels = [(f"CMRC vs {base}", "Δ points (negative = forgetting)", 2,
               {"Δ CMRC Avg": (cmrc["avg"], "C0"), "Δ CMRC F1": (cmrc["f1"], "C1")}),
              (f"OOD NLL vs {base}", "Δ mean NLL, nats/token (positive = drift)", 3, {"Δ mean NLL": (nll, "C3")})]
    panels = [p for p in panels if any(v is not None for vals, _ in p[3].values() for v in vals)]
    if not panels:
        return None
    fig, axes = _figure(len(panels), width=max(4.5, 1.4 * len(names) + 2.5))
    for ax, (title, ylabel, nd, series) in zip(axes, panels):
        # per panel only the models with data; a missing value within a group is a zero bar labelled n/a
        keep = [j for j in range(len(names)) if any(vals[j] is not None for vals, _ in series.values())]
        x, w = np.arange(len(keep)), 0.8 / len(series)
        for i, (label, (vals, color)) in enumerate(series.items()):
            vals = [vals[j] for j in keep]
            bars = ax.bar(x + (i - (len(series) - 1) / 2) * w, [v or 0.0 for v in vals], w, label=label, color=color)
            ax.bar_label(bars, labels=["n/a" if v is None else f"{v:+.{nd}f}" for v in vals], padding=2, fontsize=8)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.margins(y=0.2)  # room for the value labels
        ax.set_xticks(x, [names[j] for j in keep], rotation=20 if len(keep) > 3 else 0)
        ax.set(title=title, ylabel=ylabel)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.suptitle(f"Alignment tax vs {base} ({result.get('task', '?')})")
    return _save(fig, path)


def _ecdf_panel(ax, arrays: dict, colors: dict, title: str, xlabel: str, nd: int, floor: float | None = None):
    """One ECDF per model, p90 as a dashed line; thinned to ~2000 steps so large token counts plot fast."""
    for n, v in arrays.items():
        p90 = float(np.percentile(v, 90))
        xs = np.sort(v if floor is None else np.maximum(v, floor))
        idx = np.unique(np.linspace(0, xs.size - 1, min(2000, xs.size)).astype(int))
        ax.step(xs[idx], (idx + 1) / xs.size, where="post", color=colors[n], label=f"{n} (p90 {p90:.{nd}f})")
        ax.axvline(p90 if floor is None else max(p90, floor), color=colors[n], linestyle="--", linewidth=0.8)
    ax.axhline(0.9, color="grey", linestyle=":", linewidth=0.8)
    ax.set(title=title, xlabel=xlabel, ylabel="fraction of tokens ≤ x")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)


def plot_ood_distributions(tokens, path, *, baseline: str | None = None) -> Path | None:
    """ECDFs of per-token OOD NLL (p90 marked) and of per-token KL to the baseline (baseline skipped)."""
    def arrays(key, skip=None):
        out = {}
        for n, d in (tokens or {}).items():
            v = np.asarray((d or {}).get(key, []), dtype=np.float64).ravel()
            if n != skip and v[np.isfinite(v)].size:
                out[n] = v[np.isfinite(v)]
        return out

    nll, kl = arrays("nll"), arrays("kl", skip=baseline)
    if not nll and not kl:
        return None
    colors = {n: f"C{i % 10}" for i, n in enumerate(tokens)}  # one color per model across both panels
    fig, axes = _figure(int(bool(nll)) + int(bool(kl)))
    if nll:
        _ecdf_panel(axes[0], nll, colors, "OOD per-token NLL", "NLL (nats/token)", 2)
    if kl:
        ax = axes[-1]
        pos = np.concatenate([v[v > 0] for v in kl.values()])
        # KL spans decades (most tokens near 0, a tail of large shifts): log-x, zeros drawn at a floor
        floor = pos.min() / 10 if pos.size and pos.max() / pos.min() >= 100 else None
        _ecdf_panel(ax, kl, colors, f"OOD per-token KL to {baseline or 'base'}",
                    "KL (nats)" + ("" if floor is None else f", log scale; zeros at {floor:.1e}"), 4, floor)
        if floor is not None:
            ax.set_xscale("log")
    return _save(fig, path)


def _settings_lines(result) -> list[str]:
    lines = [f"- Task: `{result.get('task')}`, metric: {_metric_key(result)}, baseline: "
             f"{'`' + result['baseline'] + '`' if result.get('baseline') else 'none'}"]
    for n, m in result["models"].items():
        m = m if isinstance(m, dict) else {}
        counts = [f"task n={_get(m, 'task', 'n')}" if m.get("task") else None,
                  f"CMRC {_get(m, 'cmrc', 'total')} questions" if m.get("cmrc") else None,
                  f"OOD {_get(m, 'ood', 'tokens')} tokens" if m.get("ood") else None]
        lines.append(f"- `{n}`: {m.get('source') or '?'} ({', '.join(c for c in counts if c) or 'no results'})")
    if isinstance(result.get("judge"), dict):
        lines.append(f"- LLM judge: {result['judge'].get('model')} at {result['judge'].get('url')}")
    for k, v in (result.get("settings") or {}).items():
        s = v if isinstance(v, (str, int, float, bool)) or v is None else json.dumps(v, ensure_ascii=False)
        s = " ".join(str(s).split())  # one line per setting, long ones cut
        lines.append(f"- {k}: {s if len(s) <= 120 else s[:117] + '...'}")
    return lines


def write_report(result, out_dir, *, tokens=None) -> dict[str, Path]:
    """Write eval.md and the PNGs (when there is data) under `out_dir`.

    Returns:
        {"report": eval.md, "alignment_tax": PNG, "ood_distributions": PNG}, the PNGs only when written.
    """
    validate_result(result)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    tax = plot_alignment_tax(result, out_dir / "alignment_tax.png")
    if tax is not None:
        written["alignment_tax"] = tax
    ood = plot_ood_distributions(tokens, out_dir / "ood_distributions.png", baseline=result.get("baseline"))
    if ood is not None:
        written["ood_distributions"] = ood
    task = result.get("task")
    parts = [f"# Evaluation: {_TASK_NAMES.get(task, task or 'unknown task')}", "\n".join(_settings_lines(result)),
             "## Task performance vs alignment tax (Table 3)", table3_markdown(result)]
    if tax is not None:
        parts.append(f"![Alignment tax]({tax.name})")
    parts += ["## Reference metrics", reference_metrics_markdown(result)]
    appendix = appendix_c_markdown(result)
    if appendix:
        parts += ["## OOD log-likelihood and KL (Appendix C, Table 6)", appendix]
    if ood is not None:
        parts.append(f"![OOD distributions]({ood.name})")
    if result.get("kind") == "transfer":
        parts += ["## Few-shot transfer (Table 4)", table4_markdown(result)]
    md = write_text_atomic(out_dir / "eval.md", "\n\n".join(parts) + "\n")
    written["report"] = md
    return written
