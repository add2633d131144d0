"""benchmarks/reproduce_paper.py: the data hygiene, the pre-registered rule, the stage digests, and `--quick`
end to end (the data files, no leak, the gate reported, the matched section present), plus its errors."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from reproduce import frontier
from reproduce.jobs import Job, run_jobs
from reproduce.splits import HygieneError, check_hygiene, normalise, split_pairs, split_passages, write_jsonl

SCRIPT = ROOT / "benchmarks" / "reproduce_paper.py"


def _run(*args, data, cwd=ROOT):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SEMGRPO_DATA": str(data)}
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=900, env=env)


# ----------------------------------------------------------------------------------------------- data hygiene


def test_normalise_ignores_spacing_punctuation_and_tibetan_marks():
    assert normalise("གསོལ་བ་འདེབས་སོ།\xa0།") == normalise("གསོལབའདེབསསོ") == "གསོལབའདེབསསོ"
    assert normalise("祈請，悲心！") == normalise("祈請悲心")
    assert normalise("a b") != normalise("ab c")


def test_pairs_sharing_a_side_stay_in_one_split():
    pairs = ([{"id": f"a{i}", "bo": "ཀ", "zh": f"甲{i}"} for i in range(5)]  # one Tibetan line, five Chinese
             + [{"id": "b", "bo": "ཁ།", "zh": "甲0"}]  # linked to them through its Chinese side
             + [{"id": f"c{i}", "bo": f"ག{i}", "zh": f"乙{i}"} for i in range(20)])
    split = split_pairs(pairs, select=2, test=3, seed=0)
    assert split.clusters == 21
    where = {p["id"]: name for name in ("train", "select", "test") for p in getattr(split, name)}
    linked = {where[i] for i in ("a0", "a1", "a2", "a3", "a4", "b")}
    assert len(linked) == 1
    held = {normalise(p[s]) for p in split.select + split.test for s in ("bo", "zh")}
    assert not held & {normalise(p[s]) for p in split.train for s in ("bo", "zh")}
    with pytest.raises(HygieneError, match="too few"):
        split_pairs(pairs, select=15, test=15, seed=0)


def test_duplicates_are_kept_once_and_the_split_is_seeded():
    pairs = [{"id": str(i), "bo": f"ཀ{i % 10}", "zh": f"甲{i % 10}"} for i in range(40)]
    a, b = split_pairs(pairs, select=2, test=2, seed=1), split_pairs(list(reversed(pairs)), select=2, test=2, seed=1)
    assert len(a.train) + len(a.select) + len(a.test) == 10
    assert [normalise(p["bo"]) for p in a.test] == [normalise(p["bo"]) for p in b.test]  # not the input's order
    with pytest.raises(HygieneError):
        split_passages(["x", "y"], select=2, test=1, seed=0)


def test_hygiene_check_catches_a_planted_leak(tmp_path):
    held = [{"bo": "གསང་བ།", "zh": "秘密"}]
    write_jsonl(tmp_path / "select.jsonl", held)
    write_jsonl(tmp_path / "test.jsonl", [{"bo": "ཞི་བ།", "zh": "寂靜"}])
    write_jsonl(tmp_path / "ood_select.jsonl", [{"text": "一段測試文字"}])
    write_jsonl(tmp_path / "ood_test.jsonl", [{"text": "另一段文字"}])
    write_jsonl(tmp_path / "cold_start.jsonl", [{"bo": "བདེ་བ།", "zh": "安樂"}])
    assert check_hygiene(tmp_path, pretraining=["無關的文字"])["held_out_lines"] == 4
    with pytest.raises(HygieneError, match="test line"):
        check_hygiene(tmp_path, pretraining=["བདེ་བ།\nཞི་བ་"])  # a test line, written without its shad
    write_jsonl(tmp_path / "grpo.jsonl", [{"bo": "x", "zh": "秘密！"}])
    with pytest.raises(HygieneError, match="grpo.jsonl:1: a select line"):
        check_hygiene(tmp_path, pretraining=[])
    (tmp_path / "grpo.jsonl").unlink()
    with pytest.raises(HygieneError, match="ood_test passage"):
        check_hygiene(tmp_path, pretraining=["前文另一段文字後文"])


# ------------------------------------------------------------------------------------ the pre-registered rule


def _pts(*chrf_tax):
    return [frontier.Point(name=str(i), step=i, chrf=c, delta_nll=t, kl=0.0, similarity=None,
                           similarity_independent=None, mean_length=0.0, capped_share=0.0, script_shift=None,
                           nll_renormalised=None, bleu=0.0) for i, (c, t) in enumerate(chrf_tax)]


def test_rate_pick_and_matched_quality_by_hand():
    curves = {0.1: _pts((5, 0), (7, 1)), 0.25: _pts((5, 0), (9, 2), (8, 3)), 1.0: _pts((5, 0), (9, 4))}
    assert frontier.pick_rate(curves) == 0.25  # highest chrF reached; 1.0 ties it, the lower rate wins
    # q* = c0 + 3/4 (min(best GRPO, best SFT) - c0) = 5 + 0.75 * (7 - 5)
    assert frontier.matched_quality(5.0, curves[0.1], curves[1.0]) == pytest.approx(6.5)
    assert frontier.matched_quality(5.0, _pts((5, 0), (4, 1)), curves[1.0]) is None


def test_tax_at_interpolates_at_the_first_crossing():
    pts = _pts((5, 0.0), (6, 0.4), (8, 1.2), (6, 2.0), (9, 3.0))
    assert frontier.tax_at(pts, 7.0) == pytest.approx(0.8)  # halfway from (6, 0.4) to (8, 1.2)
    assert frontier.tax_at(pts, 4.0) == 0.0  # already there at the start
    assert frontier.tax_at(pts, 9.5) is None


def test_verdict_by_the_rule():
    iv = frontier.t_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, t(0.975, 2) = 4.303
    assert iv["high"] - iv["mean"] == pytest.approx(4.303 / math.sqrt(3))
    lower = [{"seed": s, "grpo": 0.1 + 0.01 * s, "sft": 0.5} for s in range(3)]
    out = frontier.verdict(6.5, lower)
    assert out["grpo_tax_lower"] is True and out["difference"]["high"] < 0
    noisy = [{"seed": 0, "grpo": 0.1, "sft": 0.5}, {"seed": 1, "grpo": 0.9, "sft": 0.5}, {"seed": 2, "grpo": 0.2,
                                                                                           "sft": 0.5}]
    assert frontier.verdict(6.5, noisy)["grpo_tax_lower"] is False
    missing = [{"seed": 0, "grpo": None, "sft": 0.5}] + lower[1:]
    assert frontier.verdict(6.5, missing)["grpo_tax_lower"] is False
    assert frontier.verdict(None, lower)["grpo_tax_lower"] is False
    assert frontier.verdict(6.5, lower[:1])["grpo_tax_lower"] is False  # one seed: no interval, no verdict


# --------------------------------------------------------------------------------------------- stage digests


def test_a_changed_input_reruns_the_stage_and_the_stages_after_it(tmp_path):
    data = tmp_path / "in.txt"
    data.write_text("one")
    out = tmp_path / "first_out"

    def jobs():
        write = f"import pathlib; pathlib.Path({str(out)!r}).mkdir(exist_ok=True); print('ran')"
        return [Job("first", [sys.executable, "-c", write], reads=[data], output=out),
                Job("second", [sys.executable, "-c", "print('ran')"], needs=["first"])]

    logs = []
    run_jobs(jobs(), workdir=tmp_path, slots=1, threads=1, cwd=tmp_path, log=logs.append)
    run_jobs(jobs(), workdir=tmp_path, slots=1, threads=1, cwd=tmp_path, log=logs.append)
    assert sum("skipped" in m for m in logs) == 2
    (out / "stale").write_text("from the earlier run")
    data.write_text("two")
    logs.clear()
    run_jobs(jobs(), workdir=tmp_path, slots=1, threads=1, cwd=tmp_path, log=logs.append)
    assert sum("running it again" in m for m in logs) == 2 and not (out / "stale").exists()


# ------------------------------------------------------------------------------------------------ end to end


def test_bad_arguments_exit_2_with_one_line(tmp_path):
    nowhere = tmp_path / "nowhere"
    r = _run("--jobs", "0", "--output", tmp_path / "o", data=nowhere)
    assert r.returncode == 2 and "--jobs must be >= 1" in r.stderr
    r = _run("--output", tmp_path / "o", data=nowhere)
    assert r.returncode == 2 and "missing data file" in r.stderr and "get_data.py" in r.stderr
    r = _run("--seeds", "1,2", "--output", tmp_path / "o", data=nowhere)
    assert r.returncode == 2 and "seed 0" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("seeds: [0]\n")
    r = _run("--config", bad, "--output", tmp_path / "o", data=nowhere)
    assert r.returncode == 2 and "missing section" in r.stderr


@pytest.fixture(scope="module")
def quick(tmp_path_factory, real_data_root):
    root = tmp_path_factory.mktemp("reproduce")
    r = _run("--quick", "--output", root / "out", "--cache", root / "cache", "--results", root / "results",
             data=real_data_root)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return root, r, real_data_root


def test_quick_run_writes_the_data_files_reports_the_gate_and_the_matched_section(quick):
    root, r, _ = quick
    data = root / "out" / "data"
    stages = ("pretraining", "reward_encoder", "independent_encoder", "cold_start", "grpo", "sft_continuation",
              "strong_sft", "tau")
    for name in (*stages, "select", "test", "ood_select", "ood_test"):
        assert (data / f"{name}.jsonl").stat().st_size > 0, name
    # No select/test line and no OOD passage in any training file: checked here again, independently of the run.
    read = lambda name: [json.loads(x) for x in (data / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]
    held = {normalise(p[s]) for name in ("select", "test") for p in read(name) for s in ("bo", "zh")}
    passages = [p["text"] for name in ("ood_select", "ood_test") for p in read(name)]
    for name in stages:
        for record in read(name):
            for field in ("bo", "zh", "text"):
                text = record.get(field, "")
                assert not any(normalise(line) in held for line in text.split("\n")), (name, text[:40])
                assert not any(p in text for p in passages), name
    results = json.loads((root / "results" / "results.json").read_text(encoding="utf-8"))
    gate = results["gate"]
    for key in ("base_nll", "unigram_nll", "base_gap", "strong_sft_chrf", "floor_random_line",
                "floor_most_frequent_line"):
        assert isinstance(gate[key], float) and math.isfinite(gate[key]), key
    assert "gate 1: base test OOD NLL" in r.stdout and "gate 2: Strong SFT test chrF" in r.stdout
    matched = results["matched"]
    assert {"per_seed", "q_star", "metric", "grpo_tax_lower"} <= set(matched) and matched["metric"] == "chrf"
    assert [row["seed"] for row in matched["per_seed"]] == [0]
    assert set(results["picked"]) == {"grpo", "sft_continuation"}
    curves = results["curves"]["0"]
    assert {"cold_start", "strong_sft", "grpo_lr0.1", "sft_continuation_lr0.25"} == set(curves)
    assert len(curves["grpo_lr0.1"]["test"]) == 1 + 2  # the cold start, then 2 checkpoints
    png = (root / "results" / "frontier.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    table = (root / "results" / "table.md").read_text(encoding="utf-8")
    for label in ("## Gate", "## Matched quality", "Verdict", "Strong SFT", "Cold start + SFT continuation"):
        assert label in table
    for stage in ("stage data", "stage base", "seed0.cold_start", "seed0.grpo_lr0.1", "seed0.strong_sft.eval_test"):
        assert stage in r.stdout  # a progress line per stage


def test_quick_rerun_skips_finished_stages_and_a_failing_stage_names_its_log(quick, tmp_path):
    root, first, data = quick
    stages = first.stdout.count("finished in")
    r = _run("--quick", "--output", root / "out", "--cache", root / "cache", "--results", root / "results2", data=data)
    assert r.returncode == 0 and r.stdout.count("skipped") == stages and "base: cached" in r.stdout
    assert (root / "results2" / "results.json").is_file()
    # A trainer that refuses its config: the stage fails, the command says which and where its log is.
    cfg = (ROOT / "benchmarks" / "reproduce" / "config.yaml").read_text(encoding="utf-8")
    bad = tmp_path / "bad.yaml"
    bad.write_text(cfg.replace("loss_type: grpo", "loss_type: nonsense"), encoding="utf-8")
    r = _run("--quick", "--config", bad, "--output", tmp_path / "o", "--cache", root / "cache", data=data)
    assert r.returncode == 1
    assert "stage seed0." in r.stderr and "failed (exit 2)" in r.stderr and "loss_type" in r.stderr


def test_a_failing_gate_says_not_testable_and_still_reports_what_ran(quick, tmp_path):
    root, _, data = quick
    cfg = (ROOT / "benchmarks" / "reproduce" / "config.yaml").read_text(encoding="utf-8")
    off = "gate: {base_gap_nats: -1.0e+9, chrf_over_floor: -1.0e+9}"
    assert off in cfg
    strict = tmp_path / "strict.yaml"
    strict.write_text(cfg.replace(off, "gate: {base_gap_nats: 1.0e+9, chrf_over_floor: -1.0e+9}"), encoding="utf-8")
    r = _run("--quick", "--config", strict, "--output", root / "out", "--cache", root / "cache",
             "--results", tmp_path / "results", data=data)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "not testable at this size" in r.stdout and "seed0.grpo" not in r.stdout  # nothing past the gate ran
    results = json.loads((tmp_path / "results" / "results.json").read_text(encoding="utf-8"))
    assert results["gate"]["passed"] is False and results["matched"]["grpo_tax_lower"] is False
    assert set(results["curves"]["0"]) == {"cold_start", "strong_sft"}
    table = (tmp_path / "results" / "table.md").read_text(encoding="utf-8")
    assert "FAILS" in table and "Not testable at this size" in table and "| Strong SFT |" in table
    assert (tmp_path / "results" / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
