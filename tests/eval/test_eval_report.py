"""semgrpo.eval.report: exact cells of the paper-style tables, PNG plots, token arrays, validation."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from semgrpo.eval.report import (
    appendix_c_markdown,
    plot_alignment_tax,
    plot_ood_distributions,
    reference_metrics_markdown,
    table3_markdown,
    table4_markdown,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load_token_arrays(path) -> dict[str, dict[str, np.ndarray]]:
    """Read ood_tokens.npz (keys "<model>/nll", "<model>/kl") into {model: {"nll": [N], "kl": [N]}}."""
    out: dict[str, dict[str, np.ndarray]] = {}
    with np.load(path, allow_pickle=False) as z:
        for key in z.files:
            name, sep, kind = key.rpartition("/")
            if not sep or not name or kind not in ("nll", "kl"):
                raise ValueError(f"{path}: key {key!r} is not '<model>/nll' or '<model>/kl'")
            out.setdefault(name, {})[kind] = z[key]
    return out


def _task(bleu, sim):
    return {"n": 100, "bleu": bleu, "chrf": 40.0, "chrf_pp": 37.5, "rouge_l": bleu / 2, "script_consistent": 0.95,
            "similarity": {"mean": sim, "median": sim, "p10": sim - 0.2, "p90": sim + 0.1}}


def _ood(mean, median, p90, delta, kl):
    return {"tokens": 5000, "nll": {"mean": mean, "median": median, "p90": p90},
            "kl": dict(zip(("mean", "median", "p90"), kl)), "delta_nll": dict(zip(("mean", "median", "p90"), delta))}


def _result():
    """Table 3's MT numbers for strong_sft / rl, plus a base model and a model with no results at all."""
    return {
        "schema": "semgrpo.eval/1", "task": "mt_bo_zh", "task_metric": "bleu", "baseline": "base",
        "models": {
            "base": {"source": "Qwen/base", "task": _task(30.0, 0.6), "cmrc": {"em": 29.0, "f1": 66.0, "avg": 47.5,
                                                                                "total": 50, "skipped": 0},
                     "ood": _ood(2.1, 1.5, 4.2, (0.0, -0.0, 0.0), (0.0, 0.0, 0.0))},
            "strong_sft": {"source": "runs/sft", "task": _task(60.06, 0.8282),
                           "cmrc": {"em": 20.65, "f1": 62.99, "avg": 41.82, "total": 50, "skipped": 0},
                           "ood": _ood(2.74, 1.8, 5.63, (0.64, 0.3, 1.43), (0.0412, 0.0101, 0.0932))},
            "rl": {"source": "runs/grpo", "task": _task(45.19, 0.7164),
                   "cmrc": {"em": 29.5, "f1": 65.79, "avg": 46.97, "total": 50, "skipped": 0},
                   "ood": _ood(2.34, 1.6, 4.82, (0.24, 0.1, 0.62), (0.0398, 0.0088, 0.0839))},
            "ext": {"source": "elsewhere", "task": None, "cmrc": None, "ood": None},
        },
        "judge": {"model": "judge-llm", "url": "http://localhost:8000", "pairs": [
            {"a": "rl", "b": "strong_sft", "n": 1000, "wins": 335, "ties": 73, "losses": 592, "errors": 0,
             "win_rate": 0.335, "tie_rate": 0.073, "loss_rate": 0.592, "ci95": [0.30, 0.37]},
            {"a": "rl", "b": "base", "n": 10, "wins": 6, "ties": 1, "losses": 3, "errors": 0,
             "win_rate": 0.6, "tie_rate": 0.1, "loss_rate": 0.3, "ci95": [0.3, 0.85]}]},
        "settings": {"max_new_tokens": 256, "seed": 0, "datasets": {"task": "data/test.jsonl"}},
    }


def _row(md: str, label: str) -> list[str]:
    """Cells after the label of the (first) markdown row whose first cell is `label`."""
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == label:
            return cells[1:]
    raise AssertionError(f"no row {label!r} in\n{md}")


def _section(md: str, start: str, end: str | None = None) -> str:
    md = md[md.index(start):]
    return md if end is None else md[:md.index(end)]


def _tokens(rng):
    return {"base": {"nll": rng.gamma(2.0, 1.0, 3000), "kl": np.zeros(3000)},
            "strong_sft": {"nll": rng.gamma(2.4, 1.0, 3000), "kl": np.r_[np.zeros(100), rng.lognormal(-4, 2, 2900)]},
            "rl": {"nll": rng.gamma(2.2, 1.0, 3000), "kl": rng.lognormal(-4.5, 1.5, 3000)}}


def _check_png(path, min_bytes=5000):
    import matplotlib.image as mpimg

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > min_bytes
    return mpimg.imread(str(path)).shape


# ---------------------------------------------------------------- tables


def test_table3_cells_gap_rows_and_alignment_tax():
    md = table3_markdown(_result())
    assert md.splitlines()[0] == "| Model | BLEU | Similarity | CMRC Avg | CMRC F1 | LLM-Judge Win (%) |"
    assert _row(md, "strong_sft") == ["60.06", "0.8282", "41.82", "62.99", "59.2"]  # b of pair 0: its loss_rate
    assert _row(md, "rl") == ["45.19", "0.7164", "46.97", "65.79", "33.5"]  # first pair only, not 60.0
    assert _row(md, "base") == ["30.00", "0.6000", "47.50", "66.00", "30.0"]
    assert _row(md, "ext") == ["–"] * 5
    assert _row(md, "Gap (rl vs strong_sft)") == ["-14.87", "-0.1118", "+5.15", "+2.80", "-25.7"]
    assert _row(md, "Gap (rl vs base)") == ["+15.19", "+0.1164", "-0.53", "-0.21", "+30.0"]
    tax = _section(md, "Alignment tax vs base")
    assert _row(tax, "Model") == ["Δ CMRC Avg", "Δ CMRC F1", "Δ CMRC EM"]
    assert _row(tax, "strong_sft") == ["-5.68", "-3.01", "-8.35"]
    assert _row(tax, "rl") == ["-0.53", "-0.21", "+0.50"]
    assert _row(tax, "ext") == ["–"] * 3
    assert "| base |" not in tax


def test_every_table_prints_a_metric_on_the_scale_of_eval_json(tmp_path):
    """BLEU, chrF, chrF++ and ROUGE-L are 0-100 in eval.json (sacrebleu's scale) and in the README: eval.md's
    Table 3, Table 4 and reference-metric cells of one value are that value, not its hundredth."""
    r = _result()
    write_report(r, tmp_path)
    md = (tmp_path / "eval.md").read_text(encoding="utf-8")
    table3 = _section(md, "## Task performance", "## Reference metrics")
    reference = _section(md, "## Reference metrics")
    for name in ("base", "strong_sft", "rl"):
        bleu = f"{r['models'][name]['task']['bleu']:.2f}"
        assert _row(table3, name)[0] == _row(reference, name)[0] == bleu, (name, _row(table3, name))
    assert _row(table4_markdown(r), "strong_sft")[0] == "60.06"


def test_table3_rouge_metric_without_judge_or_baseline():
    r = _result()
    r.update(task="hg_bo", task_metric="rouge_l", judge=None, baseline=None)
    md = table3_markdown(r)
    assert "| Model | ROUGE-L |" in md and "Gap" not in md and "Alignment tax" not in md
    assert _row(md, "strong_sft") == ["30.03", "0.8282", "41.82", "62.99", "–"]  # rouge_l


def test_pipe_in_model_name_is_escaped():
    r = _result()
    r["models"] = {"a|b" if k == "ext" else k: v for k, v in r["models"].items()}
    assert "| a\\|b | – | – |" in table3_markdown(r)


def test_reference_metrics_table():
    r = _result()
    del r["models"]["base"]["task"]["chrf_pp"]  # an eval.json from before chrF++: a dash, no error
    md = reference_metrics_markdown(r)
    assert md.splitlines()[0] == "| Model | BLEU | chrF | chrF++ | ROUGE-L | Target script |"
    assert _row(md, "strong_sft") == ["60.06", "40.00", "37.50", "30.03", "0.950"]
    assert _row(md, "base") == ["30.00", "40.00", "–", "15.00", "0.950"]
    assert _row(md, "ext") == ["–"] * 5


def test_chrf_pp_as_the_task_metric():
    r = _result()
    r["task_metric"] = "chrf_pp"
    md = table3_markdown(r)
    assert md.splitlines()[0].startswith("| Model | chrF++ | Similarity |")
    assert _row(md, "rl")[0] == "37.50"


def test_table4_transfer_layout():
    r = _result()
    r.update(task="hg_bo", task_metric="rouge_l")
    r["models"]["rl"]["task"].update(rouge_l=19.18, similarity={"mean": 0.569})
    md = table4_markdown(r)
    assert md.splitlines()[0] == "| Model | ROUGE-L | Similarity |"
    assert [line.split("|")[1].strip() for line in md.splitlines()[2:]] == ["base", "strong_sft", "rl", "ext"]
    assert _row(md, "rl") == ["19.18", "0.5690"]
    assert _row(md, "ext") == ["–", "–"]


def test_appendix_c_panels():
    md = appendix_c_markdown(_result())
    nll = _section(md, "(a)", "(b)")
    assert _row(nll, "Model") == ["Mean", "Median", "P90", "Δ Mean", "Δ Median", "Δ P90"]
    assert _row(nll, "strong_sft") == ["2.7400", "1.8000", "5.6300", "+0.64", "+0.30", "+1.43"]
    assert _row(nll, "rl") == ["2.3400", "1.6000", "4.8200", "+0.24", "+0.10", "+0.62"]
    assert _row(nll, "base") == ["2.1000", "1.5000", "4.2000", "+0.00", "+0.00", "+0.00"]  # no "-0.00"
    assert "ext" not in md  # ood null: skipped
    kl = _section(md, "(b) KL to base")
    assert _row(kl, "strong_sft") == ["0.0412", "0.0101", "0.0932"]
    assert _row(kl, "rl") == ["0.0398", "0.0088", "0.0839"]
    assert "| base |" not in kl


def test_appendix_c_empty_without_ood():
    r = _result()
    for m in r["models"].values():
        m["ood"] = None
    assert appendix_c_markdown(r) == ""


# ---------------------------------------------------------------- plots


def test_plot_alignment_tax_png(tmp_path):
    path = plot_alignment_tax(_result(), tmp_path / "sub" / "tax.png")
    assert path == tmp_path / "sub" / "tax.png"
    h, w, _ = _check_png(path)
    assert h == round(4.2 * 120) and w > 2 * h  # two panels side by side at dpi 120


def test_plot_alignment_tax_none_without_data(tmp_path):
    r = _result()
    assert plot_alignment_tax(dict(r, baseline=None), tmp_path / "a.png") is None
    only_base = dict(r, models={"base": r["models"]["base"]}, judge=None)
    assert plot_alignment_tax(only_base, tmp_path / "b.png") is None
    for m in r["models"].values():
        m["cmrc"] = m["ood"] = None
    assert plot_alignment_tax(r, tmp_path / "c.png") is None
    assert list(tmp_path.iterdir()) == []


def test_plot_alignment_tax_single_panel(tmp_path):
    r = _result()
    r["models"]["rl"]["cmrc"]["f1"] = None  # a gap within a group: drawn as n/a, not an error
    for m in r["models"].values():
        m["ood"] = None
    h, w, _ = _check_png(plot_alignment_tax(r, tmp_path / "tax.png"))
    assert w < 2 * h  # CMRC panel only


def test_plot_ood_distributions(tmp_path):
    path = plot_ood_distributions(_tokens(np.random.default_rng(0)), tmp_path / "ood.png", baseline="base")
    h, w, _ = _check_png(path)
    assert (h, w) == (round(4.2 * 120), round(2 * 5.5 * 120))


def test_plot_ood_distributions_none_and_nll_only(tmp_path):
    assert plot_ood_distributions({}, tmp_path / "a.png") is None
    assert plot_ood_distributions(None, tmp_path / "a.png") is None
    assert plot_ood_distributions({"base": {"kl": np.zeros(5)}}, tmp_path / "a.png", baseline="base") is None
    assert not (tmp_path / "a.png").exists()
    h, w, _ = _check_png(plot_ood_distributions({"base": {"nll": np.arange(50.0), "kl": np.zeros(50)}},
                                                tmp_path / "b.png", baseline="base"))
    assert w == round(5.5 * 120)  # the baseline's KL is skipped: NLL panel only


def test_load_token_arrays_round_trip(tmp_path):
    tokens = _tokens(np.random.default_rng(1))
    np.savez(tmp_path / "ood_tokens.npz", **{f"{n}/{k}": v for n, d in tokens.items() for k, v in d.items()})
    loaded = load_token_arrays(tmp_path / "ood_tokens.npz")
    assert list(loaded) == list(tokens)
    for n, d in tokens.items():
        assert set(loaded[n]) == {"nll", "kl"}
        for k, v in d.items():
            np.testing.assert_array_equal(loaded[n][k], v)
    np.savez(tmp_path / "bad.npz", **{"base/logits": np.zeros(3)})
    with pytest.raises(ValueError, match="base/logits"):
        load_token_arrays(tmp_path / "bad.npz")


# ---------------------------------------------------------------- report


def test_write_report(tmp_path):
    out = tmp_path / "report"
    paths = write_report(_result(), out, tokens=_tokens(np.random.default_rng(2)))
    assert paths == {"alignment_tax": out / "alignment_tax.png", "ood_distributions": out / "ood_distributions.png",
                     "report": out / "eval.md"}
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["alignment_tax.png", "eval.md", "ood_distributions.png",
                                                            "report"]
    md = paths["report"].read_text(encoding="utf-8")
    assert md.startswith("# Evaluation: Tibetan–Chinese Machine Translation (MT)")
    for text in ("Table 3", "Alignment tax vs base", "## Reference metrics", "| BLEU | chrF | chrF++ | ROUGE-L |", "Table 6", "(b) KL to base", "![Alignment tax](alignment_tax.png)",
                 "![OOD distributions](ood_distributions.png)", "`rl`: runs/grpo (task n=100, CMRC 50 questions, "
                 "OOD 5000 tokens)", "- max_new_tokens: 256", "judge-llm", "`ext`: elsewhere (no results)"):
        assert text in md, text
    assert _row(md, "Gap (rl vs strong_sft)") == ["-14.87", "-0.1118", "+5.15", "+2.80", "-25.7"]
    assert "Table 4" not in md
    for p in paths.values():
        assert p.stat().st_size > 0


def test_write_report_transfer_without_tokens(tmp_path):
    paths = write_report(dict(_result(), kind="transfer"), tmp_path)
    assert set(paths) == {"report", "alignment_tax"}
    md = paths["report"].read_text(encoding="utf-8")
    assert "Table 4" in md and "ood_distributions" not in md


@pytest.mark.parametrize("mutate, match", [
    (lambda r: r.pop("schema"), "schema"),
    (lambda r: r.update(schema="semgrpo.eval/2"), "schema"),
    (lambda r: r.update(models={}), "models"),
    (lambda r: r.pop("models"), "models"),
    (lambda r: r.update(baseline="nope"), "baseline 'nope'"),
    (lambda r: r["judge"]["pairs"][1].update(b="ghost"), "judge pair 1 names b='ghost'"),
    (lambda r: r["judge"]["pairs"].append("rl>sft"), "judge pair 2 must be a dict"),
])
def test_validation_errors(tmp_path, mutate, match):
    r = copy.deepcopy(_result())
    mutate(r)
    fns = (table3_markdown, table4_markdown, appendix_c_markdown, lambda x: plot_alignment_tax(x, tmp_path / "t.png"))
    for fn in fns:
        with pytest.raises(ValueError, match=match):
            fn(r)
    with pytest.raises(ValueError, match=match):
        write_report(r, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # nothing written on a bad result
