#!/usr/bin/env python
"""Does semgrpo reproduce the paper? Experiment 2 (section 4.3, Table 3, Appendix C) at small scale, offline.

    python benchmarks/reproduce_paper.py            # base once (<= 15 min), then 3 seeds (<= 60 min), 2 cores
    python benchmarks/reproduce_paper.py --quick    # tiny sizes, one seed: the plumbing check (tests)

1. Base: a small Qwen3 pretrained from scratch on real Chinese and Tibetan text, and a reward encoder
   adapted on the MT train pairs (`reproduce/base_model.py`; cached).
2. Per seed, three arms from that base, with the project's own commands and one shared config
   (`reproduce/config.yaml`): cold start (SFT on the first 25% of the pairs, 2 epochs); cold start + GRPO
   (the other pairs, 1 epoch, R = 1.5 R_sim + 1.0 R_lang, tau=auto); Strong SFT (all pairs, 3 epochs).
   Then `bin/evaluate.py` on the dev pairs and the OOD passages.
3. Report: `table.md`, `tax_vs_quality.png`, `results.json` in --results (default
   benchmarks/results/reproduce; with --quick, <output>/results).

Stages run as subprocesses, two at a time (--jobs); a finished stage is not rerun when the command is
started again, an interrupted one resumes from its checkpoint. Exit status: 0 done, 1 a stage failed
(its log is named), 2 a bad argument or missing data.
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
from reproduce.base_model import BaseSettings, build_base  # noqa: E402
from reproduce.corpus import CorpusError, data_paths  # noqa: E402
from reproduce.jobs import Job, StageFailed, python_cmd, run_jobs  # noqa: E402
from reproduce.report import write_report  # noqa: E402

from semgrpo.data_root import data_root  # noqa: E402

CONFIG = HERE / "reproduce" / "config.yaml"


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
    for key in ("seeds", "cold_fraction", "base", "trainer", "deepspeed", "arms", "evaluation"):
        if key not in cfg:
            raise ValueError(f"{path}: missing section {key!r}")
    if not 0.0 < float(cfg["cold_fraction"]) < 1.0:
        raise ValueError(f"{path}: cold_fraction must be in (0, 1), got {cfg['cold_fraction']!r}")
    return cfg


def _write_pairs(src: Path, out_dir: Path, *, limit: int, cold_fraction: float) -> tuple[Path, Path, int, int]:
    """``all.jsonl`` (the train pairs, or the first `limit`) and ``rest.jsonl`` (all but the cold start's)."""
    lines = [line for line in src.read_text(encoding="utf-8").splitlines() if line.strip()]
    lines = lines[:limit] if limit else lines
    n_cold = round(len(lines) * cold_fraction)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "all.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out_dir / "rest.jsonl").write_text("\n".join(lines[n_cold:]) + "\n", encoding="utf-8")
    return out_dir / "all.jsonl", out_dir / "rest.jsonl", len(lines), n_cold


def _trainer_config(cfg: dict, out: Path, base, dev: Path) -> Path:
    ds = json.loads((ROOT / "ds_configs" / "zero3.json").read_text(encoding="utf-8")) | cfg["deepspeed"]
    (out / "ds_config.json").write_text(json.dumps(ds, indent=2) + "\n", encoding="utf-8")
    trainer = _merge(cfg["trainer"], {"model": {"path": str(base.policy)}, "reward": {"encoder": str(base.encoder)},
                                      "data": {"dev": str(dev)}, "run": {"deepspeed": str(out / "ds_config.json")}})
    path = out / "trainer.yaml"
    path.write_text(yaml.safe_dump(trainer, sort_keys=False), encoding="utf-8")
    return path


def _jobs_for_seed(seed: int, cfg: dict, *, out: Path, trainer: Path, all_pairs: Path, rest: Path, n_cold: int,
                   base, dev: Path) -> list[Job]:
    d = out / f"seed{seed}"
    sft, grpo, evaluate = ROOT / "bin" / "train_sft.py", ROOT / "bin" / "train_grpo.py", ROOT / "bin" / "evaluate.py"
    arm = lambda name: [f"{k}={v}" for k, v in (cfg["arms"].get(name) or {}).items()]
    common = ["--config", trainer, f"seed={seed}"]
    ev = cfg["evaluation"]
    return [  # cold_start, strong_sft, cold_start_grpo, evaluate
        Job(f"seed{seed}.cold_start", python_cmd(sft, *common, f"output_dir={d / 'cold_start'}",
                                                 f"data.train={all_pairs}", f"sft.samples={n_cold}",
                                                 *arm("cold_start"))),
        Job(f"seed{seed}.strong_sft", python_cmd(sft, *common, f"output_dir={d / 'strong_sft'}",
                                                 f"data.train={all_pairs}", *arm("strong_sft"))),
        Job(f"seed{seed}.cold_start_grpo",
            python_cmd(grpo, *common, f"output_dir={d / 'cold_start_grpo'}", f"data.train={rest}",
                       f"model.init_from={d / 'cold_start'}", *arm("cold_start_grpo")),
            needs=[f"seed{seed}.cold_start"]),
        Job(f"seed{seed}.evaluate",
            python_cmd(evaluate, "--base", base.policy, *(f"--model={a}={d / a}" for a in
                                                          ("cold_start", "cold_start_grpo", "strong_sft")),
                       "--task", cfg["trainer"]["data"]["task"], "--data", dev, "--encoder", base.encoder,
                       "--ood", base.ood, "--ood-samples", ev["ood_samples"],
                       "--ood-max-tokens", cfg["base"].get("ood_max_tokens", 256),
                       "--max-new-tokens", ev["max_new_tokens"], "--batch-size", ev["batch_size"],
                       "--limit", cfg.get("dev_limit", 0), "--seed", seed, "--output", d / "eval"),
            needs=[f"seed{seed}.cold_start_grpo", f"seed{seed}.strong_sft"]),
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes and one seed: checks the plumbing in minutes")
    p.add_argument("--config", type=Path, default=CONFIG)
    p.add_argument("--data", type=Path, help="a folder laid out like the data root (default: the data root, "
                   "$SEMGRPO_DATA or ~/.cache/semgrpo/data, which python bin/get_data.py fills)")
    p.add_argument("--output", type=Path, help="work folder (default runs/reproduce_paper[_quick])")
    p.add_argument("--results", type=Path, help="where the table, plot and results.json go "
                                                "(default benchmarks/results/reproduce; --quick: <output>/results)")
    p.add_argument("--cache", type=Path, help="base model cache (default $SEMGRPO_CACHE/reproduce or "
                                              "~/.cache/semgrpo/reproduce)")
    p.add_argument("--seeds", help="comma-separated seeds instead of the config's (e.g. to try settings on one)")
    p.add_argument("--jobs", type=int, default=2, help="stages run at once, one CPU thread each (default 2)")
    args = p.parse_args(argv)
    args.data = args.data or data_root()
    try:
        if args.jobs < 1:
            raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
        cfg = load_settings(args.config, quick=args.quick)
        if args.seeds:
            try:
                cfg["seeds"] = [int(x) for x in args.seeds.split(",")]
            except ValueError:
                raise ValueError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
        paths = data_paths(args.data)
    except (ValueError, CorpusError, OSError, yaml.YAMLError) as exc:
        print(f"reproduce: error: {exc}", file=sys.stderr)
        return 2
    out = (args.output or ROOT / "runs" / ("reproduce_paper_quick" if args.quick else "reproduce_paper")).resolve()
    results_dir = (args.results or (out / "results" if args.quick else HERE / "results" / "reproduce")).resolve()
    cache = args.cache or Path(os.environ.get("SEMGRPO_CACHE", Path.home() / ".cache" / "semgrpo")).expanduser() \
        / "reproduce"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    _say(f"stage base: tokenizer, pretraining, OOD NLL, reward encoder (cache {cache})")
    base = build_base(cache, BaseSettings(**cfg["base"]), data_dir=args.data, log=_say)
    base_seconds = time.perf_counter() - started
    summary = base.summary
    ood = summary["ood"]
    _say(f"base: OOD NLL {ood['base_nll']:.3f} vs unigram {ood['unigram_nll']:.3f} nats/token; encoder after "
         f"adaptation: true {summary['encoder']['after']['cross_true']:.3f} > partial "
         f"{summary['encoder']['after']['cross_partial']:.3f} > unrelated "
         f"{summary['encoder']['after']['cross_unrelated']:.3f}")

    all_pairs, rest, n_pairs, n_cold = _write_pairs(paths["mt_train"], out / "pairs", limit=cfg.get("pairs", 0),
                                                    cold_fraction=float(cfg["cold_fraction"]))
    trainer = _trainer_config(cfg, out, base, paths["mt_dev"])
    _say(f"arms: {n_cold} cold-start pairs, {n_pairs - n_cold} GRPO prompts, {n_pairs} Strong SFT pairs; "
         f"seeds {cfg['seeds']}; config {trainer}")
    per_seed = [_jobs_for_seed(s, cfg, out=out, trainer=trainer, all_pairs=all_pairs, rest=rest, n_cold=n_cold,
                               base=base, dev=paths["mt_dev"]) for s in cfg["seeds"]]
    # Longest chains first: every cold start, then every GRPO run (the long stages), then Strong SFT, then
    # the evaluations; a free slot takes the first stage in this order whose inputs are ready.
    jobs = [seed_jobs[i] for i in (0, 2, 1, 3) for seed_jobs in per_seed]
    t_seeds = time.perf_counter()
    cores = os.cpu_count() or 1
    try:
        stage_seconds = run_jobs(jobs, workdir=out, slots=args.jobs, threads=max(1, cores // args.jobs), cwd=ROOT,
                                 log=lambda m: _say(f"stage {m}"))
    except StageFailed as exc:
        print(f"reproduce: error: {exc}", file=sys.stderr)
        return 1
    seeds_seconds = time.perf_counter() - t_seeds

    evals = {s: json.loads((out / f"seed{s}" / "eval" / "eval.json").read_text(encoding="utf-8")) for s in cfg["seeds"]}
    taus = {s: json.loads((out / f"seed{s}" / "cold_start_grpo" / "summary.json").read_text()).get("tau")
            for s in cfg["seeds"]}
    meta = {"quick": args.quick, "machine": f"{platform.processor() or platform.machine()}, {cores} CPU cores",
            "date": dt.date.today().isoformat(), "config": cfg, "base": summary, "tau": taus,
            "pairs": {"cold_start": n_cold, "grpo": n_pairs - n_cold, "strong_sft": n_pairs},
            "wall_seconds": {"base": round(base_seconds, 1), "seeds": round(seeds_seconds, 1),
                             "stages": stage_seconds}}
    write_report(results_dir, evals=evals, meta=meta)
    _say(f"done in {(time.perf_counter() - started) / 60:.1f} min (base {base_seconds / 60:.1f}, seeds "
         f"{seeds_seconds / 60:.1f}); results in {results_dir}")
    print((results_dir / "table.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
