"""Every figure the README may quote, by name: the span `<!-- fig:NAME -->` renders FIGURES[NAME]()."""
from __future__ import annotations

from readme import demo, lists, perf
from readme.sources import RESULTS, load_json, path_text

REPRODUCE = f"{RESULTS}/reproduce"

FIGURES = {
    **demo.FIGURES,
    **perf.FIGURES,
    **lists.FIGURES,
    # "Does it reproduce the paper?": the committed table.md is the README's table, word for word
    "reproduce.table": lambda: path_text(f"{REPRODUCE}/table.md").strip(),
    "reproduce.date": lambda: str(_reproduce()["date"])[:10],
    "reproduce.base_gap": lambda: f"{_reproduce()['gate']['base_gap']:.2f}",
    "reproduce.chrf_over_floor": lambda: f"{_gate_over():+.2f}",
    "reproduce.base_minutes": lambda: f"{_reproduce()['wall_seconds']['base'] / 60:.1f}",
    "reproduce.stages_minutes": lambda: f"{_stage_span() / 60:.1f}",
    "reproduce.strong_sft.delta_nll": lambda: f"{_strong_sft()['delta_nll']:+.2f}",
    "reproduce.strong_sft.script_shift": lambda: f"{_strong_sft()['script_shift']:+.2f}",
    "reproduce.strong_sft.nll_renormalised": lambda: f"{_strong_sft()['nll_renormalised']:+.2f}",
}


def _reproduce() -> dict:
    return load_json(f"{REPRODUCE}/results.json")


def _gate_over() -> float:
    gate = _reproduce()["gate"]
    return gate["strong_sft_chrf"] - gate["floor_random_line"]


def _stage_span() -> float:
    """The stages after the base ran two at a time: their wall time is the longer of the two chains."""
    stages = _reproduce()["wall_seconds"]["stages"]
    chain = lambda run: sum(v for k, v in stages.items() if k.startswith(f"seed0.{run}"))
    return max(chain("cold_start"), chain("strong_sft"))


def _strong_sft() -> dict:
    return _reproduce()["curves"]["0"]["strong_sft"]["test"][-1]
