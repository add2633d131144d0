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
    "reproduce.date": lambda: str(load_json(f"{REPRODUCE}/results.json")["date"])[:10],
}
