#!/usr/bin/env python
"""Does semantic GRPO reach a given quality at a lower alignment tax than SFT from the same start? The paper's
Experiment 2 (section 4.3, Table 3, Appendix C) as a pre-registered test, at a size a 2-core CPU trains.

    python benchmarks/reproduce_paper.py             # base once (cached), the gate, the grids, 3 seeds
    python benchmarks/reproduce_paper.py --seeds 0   # a single-seed look (no interval, so no verdict)
    python benchmarks/reproduce_paper.py --quick     # tiny sizes: the plumbing check the tests run

The design and the decision rule are in benchmarks/reproduce/PREREGISTRATION.md, their numbers in
reproduce/config.yaml. In order:
1. Data (`reproduce/splits.py`): the MT pairs de-duplicated and clustered, select / test / training splits, the
   OOD passages split, every file a stage reads written to <output>/data/ and checked for leaks.
2. Base (`reproduce/base_model.py`, cached): a small Qwen3 pretrained on Chinese and Tibetan text, the reward
   encoder and an independent one. Gate 1: its test OOD NLL against a unigram model's.
3. Seed 0: the cold start and Strong SFT. Gate 2: Strong SFT's test chrF against the random-training-line floor.
   Either gate failing ends the run with "not testable at this size", the numbers, and the figure and table of
   what ran (base, cold start, Strong SFT).
4. Seed 0's grids (`reproduce/grid.py`): GRPO at three learning rates, GRPO with a KL term, GRPO with a length
   reward, SFT continuation at three rates, every checkpoint evaluated on select and test. The learning rates
   and the matched quality q* are picked on select (`reproduce/frontier.py`).
5. Seeds 1 and 2: the cold start, Strong SFT and the picked GRPO and SFT continuation.
6. The verdict and the report (`reproduce/report.py`): results.json, table.md, frontier.png in --results.

Stages run as subprocesses of bin/train_sft.py, bin/train_grpo.py and bin/evaluate.py, two at a time; a
finished stage is skipped when the command is run again unless its config or data changed. Exit status: 0 done
(whatever the verdict, "not testable" included), 1 a stage failed (its log is named), 2 a bad argument or
missing data.
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]  # run from a checkout without installing

import yaml  # noqa: E402
from reproduce import frontier, grid  # noqa: E402
from reproduce.base_model import BaseInputs, BaseSettings, build_base  # noqa: E402
from reproduce.corpus import CorpusError, data_paths, load_corpus, mt_pairs  # noqa: E402
from reproduce.floors import line_floors  # noqa: E402
from reproduce.jobs import StageFailed, run_jobs  # noqa: E402
from reproduce.report import write_report  # noqa: E402
from reproduce.splits import HygieneError, check_hygiene, normalise, split_pairs, split_passages, write_jsonl  # noqa: E402

from semgrpo.data_root import data_root  # noqa: E402
from semgrpo.prompts import get_task  # noqa: E402

CONFIG = HERE / "reproduce" / "config.yaml"
SECTIONS = ("split", "seeds", "cold_fraction", "pretrain_pair_sides", "base", "trainer", "deepspeed", "checkpoints",
            "arms", "variants", "grids", "evaluation", "gate")


def _say(msg: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] reproduce: {msg}", flush=True)


def _merge(into: dict, extra: dict) -> dict:
    out = copy.deepcopy(into)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def load_settings(path: Path, *, quick: bool) -> dict:
    cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    quick_part = cfg.pop("quick", {})
    if quick:
        cfg = _merge(cfg, quick_part)
    missing = [k for k in SECTIONS if k not in cfg]
    if missing:
        raise ValueError(f"{path}: missing section(s) {missing}")
    if not 0.0 < float(cfg["cold_fraction"]) < 1.0:
        raise ValueError(f"{path}: cold_fraction must be in (0, 1), got {cfg['cold_fraction']!r}")
    return cfg


def prepare_data(cfg: dict, paths: dict, data: Path) -> tuple[dict, BaseInputs]:
    """Split and write every file a stage reads into `data`; check them for leaks. Returns the counts and the
    base's inputs."""
    sp, split = cfg["split"], None
    pairs = mt_pairs(paths)
    if cfg.get("pairs"):
        pairs = pairs[: cfg["pairs"]]
    split = split_pairs(pairs, select=sp["select"], test=sp["test"], seed=sp["seed"])
    held_bo = {normalise(p["bo"]) for p in split.select + split.test}
    corpus = load_corpus(paths, banned_lines=held_bo, max_chars=cfg.get("max_chars", 0))
    ood_select, ood_test = split_passages(corpus.ood, select=sp["ood_select"], test=sp["ood_test"], seed=sp["seed"])
    train = split.train
    n_cold = round(len(train) * float(cfg["cold_fraction"]))
    rest = train[n_cold:]
    pretraining = corpus.pretraining
    if cfg["pretrain_pair_sides"]:  # each side of every training pair as plain text, never the pair together
        pretraining = pretraining + [p["zh"] for p in train] + [p["bo"] for p in train]
    files = {"pretraining": [{"text": t} for t in pretraining],
             "reward_encoder": train[0::2], "independent_encoder": train[1::2],  # disjoint halves
             "cold_start": train[:n_cold], "grpo": rest, "sft_continuation": rest, "strong_sft": train,
             "tau": rest[: cfg["trainer"]["reward"]["tau_samples"]],  # prompts GRPO trains on anyway
             "select": split.select, "test": split.test,
             "ood_select": [{"text": t} for t in ood_select], "ood_test": [{"text": t} for t in ood_test]}
    for name, records in files.items():
        write_jsonl(data / f"{name}.jsonl", records)
    hygiene = check_hygiene(data, pretraining=pretraining)
    counts = {"pairs_read": split.pairs_read, "clusters": split.clusters, "train": len(train), "cold_start": n_cold,
              "continuation": len(rest), "select": len(split.select), "test": len(split.test),
              "ood_select": len(ood_select), "ood_test": len(ood_test), "ood_candidates": len(corpus.ood),
              "tibetan_lines_removed_from_pretraining": corpus.tibetan_lines_removed, "hygiene": hygiene}
    inputs = BaseInputs(pretraining=pretraining, reward_encoder_pairs=files["reward_encoder"],
                        independent_encoder_pairs=files["independent_encoder"], diagnostic_pairs=split.select,
                        ood={"select": ood_select, "test": ood_test})
    return counts, inputs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes and one seed: checks the plumbing in minutes")
    p.add_argument("--config", type=Path, default=CONFIG)
    p.add_argument("--data", type=Path, help="a folder laid out like the data root (default: the data root, "
                   "$SEMGRPO_DATA or ~/.cache/semgrpo/data, which python bin/get_data.py fills)")
    p.add_argument("--output", type=Path, help="work folder (default runs/reproduce_paper[_quick])")
    p.add_argument("--results", type=Path, help="where results.json, table.md and frontier.png go "
                                                "(default benchmarks/results/reproduce; --quick: <output>/results)")
    p.add_argument("--cache", type=Path, help="base model cache (default $SEMGRPO_CACHE/reproduce or "
                                              "~/.cache/semgrpo/reproduce)")
    p.add_argument("--seeds", help="comma-separated seeds instead of the config's; seed 0 must be among them")
    p.add_argument("--jobs", type=int, default=2, help="stages run at once, one CPU thread each (default 2)")
    args = p.parse_args(argv)
    try:
        if args.jobs < 1:
            raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
        cfg = load_settings(args.config, quick=args.quick)
        if args.seeds:
            try:
                cfg["seeds"] = [int(x) for x in args.seeds.split(",")]
            except ValueError:
                raise ValueError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
        if 0 not in cfg["seeds"]:
            raise ValueError("seed 0 runs the grids the other seeds repeat: --seeds must include 0")
        paths = data_paths(args.data or data_root())
    except (ValueError, CorpusError, OSError, yaml.YAMLError) as exc:
        print(f"reproduce: error: {exc}", file=sys.stderr)
        return 2
    out = (args.output or ROOT / "runs" / ("reproduce_paper_quick" if args.quick else "reproduce_paper")).resolve()
    results_dir = (args.results or (out / "results" if args.quick else HERE / "results" / "reproduce")).resolve()
    cache = args.cache or Path(os.environ.get("SEMGRPO_CACHE", Path.home() / ".cache" / "semgrpo")).expanduser() \
        / "reproduce"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.perf_counter()
    try:
        return _run(cfg, args, paths, out, results_dir, cache, started)
    except (StageFailed, HygieneError) as exc:
        print(f"reproduce: error: {exc}", file=sys.stderr)
        return 1


def _run(cfg: dict, args, paths: dict, out: Path, results_dir: Path, cache: Path, started: float) -> int:
    data = out / "data"
    _say(f"stage data: splits and leak checks into {data}")
    counts, inputs = prepare_data(cfg, paths, data)
    _say(f"data: {counts['pairs_read']} pairs in {counts['clusters']} clusters -> {counts['train']} training "
         f"({counts['cold_start']} cold start, {counts['continuation']} continuation), {counts['select']} select, "
         f"{counts['test']} test; OOD {counts['ood_select']} select, {counts['ood_test']} test; no held-out line "
         f"or passage in any training file or the pretraining text")
    _say(f"stage base: tokenizer, pretraining, OOD NLL, two encoders (cache {cache})")
    base = build_base(cache, BaseSettings(**cfg["base"]), inputs, log=_say)
    base_seconds = time.perf_counter() - started
    ood = base.summary["ood"]["test"]
    gate = {"base_nll": ood["base_nll"], "unigram_nll": ood["unigram_nll"], "base_gap": ood["gap"],
            "base_gap_needed": cfg["gate"]["base_gap_nats"]}
    _say(f"gate 1: base test OOD NLL {ood['base_nll']:.3f} vs unigram {ood['unigram_nll']:.3f}: "
         f"{ood['gap']:.2f} nats/token below (needs {_needs(gate['base_gap_needed'])})")

    trainer, ds_config = grid.trainer_config(cfg, out, policy=base.policy, encoder=base.encoder)
    files = grid.Files(data=data, trainer=trainer, ds_config=ds_config, policy=base.policy, encoder=base.encoder,
                       independent_encoder=base.independent_encoder)
    sizes = {"n_rest": counts["continuation"], "n_cold": counts["cold_start"], "n_all": counts["train"]}
    cores = os.cpu_count() or 1
    timings: dict[str, float] = {}

    def run(jobs):
        timings.update(run_jobs(jobs, workdir=out, slots=args.jobs, threads=max(1, cores // args.jobs), cwd=ROOT,
                                log=lambda m: _say(f"stage {m}"), known=timings))

    t_grids = time.perf_counter()
    seed0 = grid.jobs_for_seed(cfg, files, 0, picked=None, **sizes)
    first = [j for j in seed0 if j.name.startswith(("seed0.cold_start", "seed0.strong_sft"))]
    run(first)
    evals = lambda seed, run_name, which: json.loads((out / f"seed{seed}" / run_name / f"eval_{which}" /
                                                       "eval.json").read_text(encoding="utf-8"))
    task = get_task(cfg["trainer"]["data"]["task"])
    targets = lambda name: [json.loads(line)[task.target_field]
                            for line in (data / f"{name}.jsonl").read_text(encoding="utf-8").splitlines() if line]
    floors = line_floors(targets("strong_sft"), targets("test"), script=task.target_script,
                         draws=cfg["evaluation"]["floor_draws"])
    strong = frontier.curve(evals(0, "strong_sft", "test"), start=None)[-1]
    gate.update(strong_sft_chrf=strong.chrf, floor_random_line=floors["random_line"],
                floor_most_frequent_line=floors["most_frequent_line"],
                chrf_over_floor_needed=cfg["gate"]["chrf_over_floor"])
    gate["passed"] = (gate["base_gap"] >= gate["base_gap_needed"]
                      and strong.chrf >= floors["random_line"] + gate["chrf_over_floor_needed"])
    _say(f"gate 2: Strong SFT test chrF {strong.chrf:.2f} vs random-training-line floor {floors['random_line']:.2f} "
         f"(most frequent line {floors['most_frequent_line']:.2f}; "
         f"needs {_needs(gate['chrf_over_floor_needed'], '+')})")
    meta = {"quick": args.quick, "machine": f"{platform.processor() or platform.machine()}, {cores} CPU cores",
            "date": dt.date.today().isoformat(), "config": cfg, "data": counts, "base": base.summary, "gate": gate}
    if not gate["passed"]:
        _say("not testable at this size: a gate failed; no verdict (see the numbers above)")
        meta["wall_seconds"] = {"base": round(base_seconds, 1), "stages": timings}
        ran = {0: {name: {which: evals(0, name, which) for which in grid.SETS}
                   for name in ("cold_start", "strong_sft")}}
        write_report(results_dir, meta=meta, runs=ran, picked=None, matched=None)  # what ran is still drawn
        _say(f"done in {(time.perf_counter() - started) / 60:.1f} min; results in {results_dir}")
        print((results_dir / "table.md").read_text(encoding="utf-8"))
        return 0

    run(seed0)
    select_curves = {m: {lr: frontier.curve(evals(0, grid.run_name(m, lr), "select"), start="cold_start")
                         for lr in cfg["grids"][m]} for m in ("grpo", "sft_continuation")}
    picked = {m: frontier.pick_rate(c) for m, c in select_curves.items()}
    start_chrf = frontier.curve(evals(0, "cold_start", "select"), start=None)[-1].chrf
    q_star = frontier.matched_quality(start_chrf, select_curves["grpo"][picked["grpo"]],
                                      select_curves["sft_continuation"][picked["sft_continuation"]])
    _say(f"picked on select: GRPO lr x{picked['grpo']:g}, SFT continuation lr x{picked['sft_continuation']:g} "
         f"(of eta); q* = {'none' if q_star is None else f'{q_star:.2f}'} chrF")
    others = [s for s in cfg["seeds"] if s != 0]
    run(seed0 + [j for s in others for j in grid.jobs_for_seed(cfg, files, s, picked=picked, **sizes)])
    grids_seconds = time.perf_counter() - t_grids

    runs = {s: {name: {which: evals(s, name, which) for which in grid.SETS}
                for name in (grid.run_name(a, lr) for a, lr in grid.runs_of_seed(cfg, s, picked=None if s == 0
                                                                                 else picked))}
            for s in cfg["seeds"]}
    per_seed = []
    for s in cfg["seeds"]:
        taxes = {m: (frontier.tax_at(frontier.curve(runs[s][grid.run_name(m, picked[m])]["test"],
                                                    start="cold_start"), q_star) if q_star is not None else None)
                 for m in ("grpo", "sft_continuation")}
        per_seed.append({"seed": s, "grpo": taxes["grpo"], "sft": taxes["sft_continuation"]})
    matched = frontier.verdict(q_star, per_seed)
    meta["wall_seconds"] = {"base": round(base_seconds, 1), "grids_and_seeds": round(grids_seconds, 1),
                            "stages": timings}
    write_report(results_dir, meta=meta, runs=runs, picked=picked, matched=matched)
    _say(f"done in {(time.perf_counter() - started) / 60:.1f} min (base {base_seconds / 60:.1f}, grids and seeds "
         f"{grids_seconds / 60:.1f}); verdict: GRPO pays less tax = {matched['grpo_tax_lower']} ({matched['reason']});"
         f" results in {results_dir}")
    print((results_dir / "table.md").read_text(encoding="utf-8"))
    return 0


def _needs(value: float, sign: str = "") -> str:
    return "nothing: the gate is off with --quick" if value < -1e6 else f"{sign}{value:g}"


if __name__ == "__main__":
    sys.exit(main())
