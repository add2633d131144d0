"""The README's figures agree with the committed files they come from (benchmarks/readme_figures.py), and the
check has teeth: a planted wrong value, a changed source file and an unknown figure each fail it."""
from __future__ import annotations

import sys

import pytest
from _helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import readme_figures
from readme import sources
from readme.catalog import FIGURES
from readme.markers import SPAN, FigureError, differences, render, span_names

README = REPO / "README.md"


@pytest.fixture(autouse=True)
def _fresh_sources():
    sources.clear_caches()
    yield
    sources.clear_caches()


def test_the_readme_agrees_with_its_files(capsys):
    text = README.read_text(encoding="utf-8")
    diffs = differences(text, FIGURES)
    assert not diffs, "README figures that differ from their files (run python benchmarks/readme_figures.py):\n" + \
        "\n".join(f"line {d.line}: fig:{d.name} reads {d.readme!r}, the file gives {d.source!r}" for d in diffs)
    assert readme_figures.main(["--check"]) == 0
    assert "0 differ from their files" in capsys.readouterr().out


def test_every_figure_renders_from_what_is_committed():
    """Figures the README does not quote today (the reproduction's, for the sections others own) render too."""
    for name, figure in FIGURES.items():
        assert figure().strip(), name


def test_the_lists_and_figures_it_promises_are_spans():
    """The README quotes these from files or code; each must be a span, so that the check covers it."""
    used = set(span_names(README.read_text(encoding="utf-8")))
    wanted = {"demo.tau", "demo.reward_first", "demo.reward_last", "demo.grpo_time", "demo_eval.grpo.bleu",
              "demo_eval.cold_start.bleu", "demo_eval.grpo.similarity", "demo_eval.cold_start.similarity",
              "dynamic.flat_share", "dynamic.flat_share_last50", "code.resume_may_change", "code.overwrite_deletes", "code.report_none_writes", "code.version",
              "code.deprecated_until", "perf.kernels.table", "perf.fused_linear.table", "perf.script.table",
              "perf.train.table"}
    assert wanted <= used, sorted(wanted - used)


def _planted(text: str, name: str, value: str) -> str:
    match = next(m for m in SPAN.finditer(text) if m["name"] == name)
    return text[:match.start("value")] + value + text[match.end("value"):]


def test_a_planted_wrong_value_fails_the_check(tmp_path, capsys):
    text = README.read_text(encoding="utf-8")
    planted = _planted(text, "perf.script.c_over_regex", "232x")
    diffs = differences(planted, FIGURES)
    assert [(d.name, d.readme, d.source) for d in diffs] == [("perf.script.c_over_regex", "232x", "231x")]
    assert diffs[0].line == text[:text.index("<!-- fig:perf.script.c_over_regex")].count("\n") + 1
    copy = tmp_path / "README.md"
    copy.write_text(planted, encoding="utf-8")
    assert readme_figures.main(["--check", "--readme", str(copy)]) == 1
    out = capsys.readouterr().out
    assert "fig:perf.script.c_over_regex reads '232x', its source gives '231x'" in out and "1 differ" in out
    assert copy.read_text(encoding="utf-8") == planted  # --check changes nothing
    # Rendering puts the file's value back, and only there.
    assert readme_figures.main(["--readme", str(copy)]) == 0
    assert copy.read_text(encoding="utf-8") == text
    assert render(text, FIGURES) == text


def test_a_table_span_keeps_its_markers_on_their_own_lines():
    text = README.read_text(encoding="utf-8")
    planted = _planted(text, "perf.script.table", "\n| stale |\n")
    assert render(planted, FIGURES) == text


def test_a_changed_result_file_fails_the_check(tmp_path, monkeypatch):
    """A benchmark re-run (here: the C path's p50 edited in a copy of the CSV) makes the committed README stale."""
    rel = "benchmarks/results/bench_script_cpu_2core.csv"
    (tmp_path / rel).parent.mkdir(parents=True)
    rows = (REPO / rel).read_text(encoding="utf-8").replace(",2612.1,", ",2000.0,")
    (tmp_path / rel).write_text(rows, encoding="utf-8")
    monkeypatch.setattr(sources, "REPO", tmp_path)
    text = README.read_text(encoding="utf-8")
    names = {d.name for d in differences(_only(text, ["perf.script.table", "perf.script.c_over_regex"]), FIGURES)}
    assert names == {"perf.script.table", "perf.script.c_over_regex"}


def _only(text: str, names: list[str]) -> str:
    """The spans of `names` alone (the others read files the temporary root lacks)."""
    return "\n".join(m.group(0) for m in SPAN.finditer(text) if m["name"] in names)


def test_a_missing_file_or_unknown_figure_is_one_error(tmp_path, monkeypatch, capsys):
    copy = tmp_path / "README.md"
    copy.write_text("x <!-- fig:no.such.figure -->1<!-- /fig -->\n", encoding="utf-8")
    assert readme_figures.main(["--check", "--readme", str(copy)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["readme_figures.py: error: the README has a span fig:no.such.figure, which names no figure of "
                   "benchmarks/readme/catalog.py"]
    monkeypatch.setattr(sources, "REPO", tmp_path)  # no result files there
    with pytest.raises(FigureError, match=r"benchmarks/results/bench_script_cpu_2core.csv is missing"):
        FIGURES["perf.script.table"]()
    with pytest.raises(FigureError, match=r"benchmarks/results/demo/summary.json is missing"):
        FIGURES["demo.tau"]()

