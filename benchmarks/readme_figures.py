#!/usr/bin/env python
"""Render the README's figures from the committed files they come from, or check that they agree.

    python benchmarks/readme_figures.py            # rewrite every <!-- fig:NAME -->...<!-- /fig --> span of README.md
    python benchmarks/readme_figures.py --check    # exit 1, one line per span whose value its file no longer gives
    python benchmarks/readme_figures.py --list     # every figure the catalogue knows, and how often README uses it

A figure is a function of benchmarks/readme/ (catalog.py lists them) that reads a committed result file
(benchmarks/results/**: the benchmark CSVs, the demo's summary and metrics, the demo evaluation, the
reproduction) or a constant of the code (what a resume may change, what overwrite=true deletes, the version).
To add one: write its function, wrap its place in README.md in a span, run this script. After a new result
is committed, run it again and review the diff of README.md. The test suite runs `--check`
(tests/test_readme_figures.py), so a README that disagrees with its files fails it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/: the readme package
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # the checkout's semgrpo (the lists come from it)

from readme.catalog import FIGURES
from readme.markers import FigureError, differences, render, span_names
from readme.sources import REPO

from semgrpo.files import write_text_atomic

README = REPO / "README.md"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="readme_figures.py", description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="change nothing; exit 1 when a figure differs")
    mode.add_argument("--list", action="store_true", help="the figures of the catalogue and their use")
    parser.add_argument("--readme", type=Path, default=README, help="default: the checkout's README.md")
    args = parser.parse_args(argv)
    text = args.readme.read_text(encoding="utf-8")
    try:
        if args.list:
            used = span_names(text)
            for name in sorted(FIGURES):
                print(f"{name}: {used.count(name)} span(s)")
            return 0
        diffs = differences(text, FIGURES)
        if args.check:
            for d in diffs:
                print(f"{args.readme.name}:{d.line}: fig:{d.name} reads {d.readme!r}, its source gives {d.source!r}")
            print(f"readme_figures.py: {len(span_names(text))} spans, {len(diffs)} differ from their files"
                  + ("; run python benchmarks/readme_figures.py" if diffs else ""))
            return 1 if diffs else 0
        if diffs:
            write_text_atomic(args.readme, render(text, FIGURES))
        for d in diffs:
            print(f"{args.readme.name}:{d.line}: fig:{d.name}: {d.readme!r} -> {d.source!r}")
        print(f"readme_figures.py: {len(span_names(text))} spans, {len(diffs)} rewritten")
        return 0
    except FigureError as err:
        print(f"readme_figures.py: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
