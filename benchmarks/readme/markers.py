"""The README's figure spans, `<!-- fig:NAME -->VALUE<!-- /fig -->`, and rendering them from their sources.

A span is inline (`tau <!-- fig:demo.tau -->0.085<!-- /fig -->`) or a block (a whole table, the markers on
lines of their own). NAME is a key of the figure catalogue (`readme.catalog.FIGURES`), whose function reads
the committed file the figure comes from and returns the text. The markers are HTML comments, so they do not
show on GitHub; everything between them belongs to the script and is rewritten by it.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

SPAN = re.compile(r"<!-- fig:(?P<name>[A-Za-z0-9_.-]+) -->(?P<value>.*?)<!-- /fig -->", re.S)


class FigureError(Exception):
    """A span names no figure, or a figure's source is missing or lacks what the figure reads."""


@dataclass(frozen=True)
class Difference:
    name: str
    line: int  # 1-based line of the span's opening marker in the README
    readme: str
    source: str


def span_names(text: str) -> list[str]:
    """The figure names of `text`'s spans, in order (a name may appear more than once)."""
    return [m["name"] for m in SPAN.finditer(text)]


def _value(name: str, value: str, figures: dict[str, Callable[[], str]], cache: dict[str, str]) -> str:
    if name not in figures:
        raise FigureError(f"the README has a span fig:{name}, which names no figure of benchmarks/readme/catalog.py")
    if name not in cache:
        text = figures[name]()
        # a block span keeps its markers on lines of their own
        cache[name] = f"\n{text}\n" if value.startswith("\n") else text
    return cache[name]


def render(text: str, figures: dict[str, Callable[[], str]]) -> str:
    """`text` with every span's value replaced by its figure's current text."""
    cache: dict[str, str] = {}
    return SPAN.sub(lambda m: f"<!-- fig:{m['name']} -->{_value(m['name'], m['value'], figures, cache)}<!-- /fig -->",
                    text)


def differences(text: str, figures: dict[str, Callable[[], str]]) -> list[Difference]:
    """Every span whose value is not what its source gives now, in README order."""
    cache: dict[str, str] = {}
    out = []
    for m in SPAN.finditer(text):
        want = _value(m["name"], m["value"], figures, cache)
        if m["value"] != want:
            out.append(Difference(m["name"], text.count("\n", 0, m.start()) + 1, m["value"].strip(), want.strip()))
    return out
