"""`bin/evaluate.py`: flags -> `EvalSettings`, with defaults read from the run being evaluated.

    python bin/evaluate.py --run runs/demo --cmrc data:cmrc2018/dev.json --cmrc-limit 50

`--run DIR` evaluates every stage of a run (base, the runs it started from, the run itself) with the
run's own base, tokenizer, task, dev data, reward encoder and completion length; `--model NAME=PATH`
adds (or, without --run, names) models explicitly. Data flags take a path, or `data:<path>` in the data
root that `bin/get_data.py` fills (`semgrpo.data_root`). User errors print one line and exit with status 2.
When the LLM judge fails (errors, timeouts, its circuit breaker opened), everything else is still
written, eval.json records the failure under "judge"."error", one warning line goes to stderr and the
exit status is 3.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from semgrpo.config import ConfigError
from semgrpo.data_root import check_data_paths
from semgrpo.errors import run_entry_point
from semgrpo.eval.models import checkpoint_specs, resolve_model, specs_from_run
from semgrpo.lineage import run_config

PROG = "evaluate.py"
JUDGE_FAILED = 3  # exit status: metrics and outputs written, the LLM judge failed


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Task quality, semantic quality and alignment tax of "
                                "a base model and its adapted checkpoints; writes eval.json, eval.md and plots.")
    m = p.add_argument_group("models")
    m.add_argument("--run", help="a training run's output_dir: evaluates base, its earlier stages and itself")
    m.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                   help="an adapter dir, run dir, checkpoint or full model dir; repeatable")
    m.add_argument("--checkpoints", choices=["last", "all"], default="last",
                   help="with --run: evaluate the run at its last checkpoint (default) or at every complete one, "
                        "named <stage>@<step> (a learning curve)")
    m.add_argument("--base", help="base model directory (default: the run's model.path)")
    m.add_argument("--tokenizer", help="tokenizer directory (default: the run's, else --base)")
    d = p.add_argument_group("task")
    d.add_argument("--task", help="mt_bo_zh | mt_zh_bo | hg_bo (default: the run's data.task)")
    d.add_argument("--data", help="test set JSONL/Parquet/folder, or data:<path> in the data root (default: the "
                   "run's data.dev)")
    d.add_argument("--limit", type=int, default=0, help="first N test samples (0 = all)")
    d.add_argument("--encoder", help="reward encoder for similarity (default: the run's reward.encoder)")
    d.add_argument("--independent-encoder", default="",
                   help="a second sentence encoder, trained apart from the reward's: similarity GRPO did not "
                        "optimise, each output cut to its reference's length in tokens")
    d.add_argument("--max-new-tokens", type=int, help="greedy decoding length (default: the run's "
                   "grpo.max_completion_length)")
    d.add_argument("--max-prompt-length", type=int, default=1024)
    d.add_argument("--batch-size", type=int, default=16)
    t = p.add_argument_group("alignment tax")
    t.add_argument("--cmrc", help="CMRC 2018 JSON, e.g. data:cmrc2018/dev.json (in the data root: $SEMGRPO_DATA, "
                   "else ~/.cache/semgrpo/data; python bin/get_data.py fetches it)")
    t.add_argument("--cmrc-limit", type=int, default=0, help="first N questions (0 = all)")
    t.add_argument("--cmrc-max-new-tokens", type=int, default=64)
    t.add_argument("--ood", help="OOD passages, a path or data:<path> (default: the CMRC contexts, else the run's "
                   "tax_meter.ood_passages)")
    t.add_argument("--ood-samples", type=int, default=200)
    t.add_argument("--ood-max-tokens", type=int, default=256)
    j = p.add_argument_group("LLM judge (OpenAI-compatible; key from SEMGRPO_JUDGE_API_KEY or OPENAI_API_KEY)")
    j.add_argument("--judge-url", help="API base, e.g. https://api.openai.com/v1")
    j.add_argument("--judge-model")
    j.add_argument("--judge-pair", action="append", default=[], metavar="A:B",
                   help="models to compare (default: the last model vs the one before it)")
    j.add_argument("--judge-samples", type=int, default=200)
    j.add_argument("--judge-timeout", type=float, default=60.0,
                   help="wall-clock seconds one judge request may take, reading included (default 60)")
    j.add_argument("--judge-max-failures", type=int, default=3,
                   help="failed judgements in a row after which the judge is not called again (default 3)")
    p.add_argument("--output", help="output folder (default: <run>/eval, else ./eval)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    return p


def settings_from_args(args):
    from semgrpo.eval.run import EvalSettings

    cfg, specs, base = {}, [], args.base
    if args.run:
        cfg = run_config(args.run) or {}
        run_base, specs = specs_from_run(args.run)
        if args.checkpoints == "all":
            specs = specs[:-1] + checkpoint_specs(args.run, specs[-1])
        base = base or run_base
        if args.base:
            specs[0].source = args.base
    for item in args.model:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--model {item!r} is not of the form NAME=PATH")
        specs.append(resolve_model(name, path))
    if args.checkpoints == "all" and not args.run:
        raise ConfigError("--checkpoints all needs --run DIR")
    if not base:
        raise ConfigError("no base model: pass --run DIR or --base PATH")
    if not args.run:
        from semgrpo.eval.models import ModelSpec
        specs.insert(0, ModelSpec(name="base", source=base))
    names = [sp.name for sp in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"model names must be unique, got {names}")
    get = lambda section, key, default="": (cfg.get(section) or {}).get(key) or default
    data = args.data or get("data", "dev") or get("data", "train")
    if not data:
        raise ConfigError("no test data: pass --data PATH (the run has no data.dev)")
    check_data_paths({"--data": data, "--cmrc": args.cmrc, "--ood": args.ood})
    pairs = [tuple(p.split(":", 1)) for p in args.judge_pair] or ([(names[-1], names[-2])] if len(names) > 1 else [])
    for pair in pairs:
        if len(pair) != 2 or not all(x in names for x in pair):
            raise ConfigError(f"--judge-pair {':'.join(pair)!r} must name two of the models {names}")
    if args.judge_url and not args.judge_model:
        raise ConfigError("--judge-url needs --judge-model")
    if not args.judge_timeout > 0:
        raise ConfigError(f"--judge-timeout must be > 0, got {args.judge_timeout}")
    for flag in ("limit", "cmrc_limit", "batch_size", "ood_samples", "max_prompt_length", "judge_samples",
                 "judge_max_failures"):
        if getattr(args, flag) < (0 if "limit" in flag else 1):
            raise ConfigError(f"--{flag.replace('_', '-')} must be {'>= 0' if 'limit' in flag else '>= 1'}")
    return EvalSettings(
        output=args.output or (str(Path(args.run) / "eval") if args.run else "eval"), base=base,
        tokenizer=args.tokenizer or get("model", "tokenizer") or base, models=specs,
        task=args.task or get("data", "task", "mt_zh_bo"), data=data, limit=args.limit,
        encoder=args.encoder if args.encoder is not None else get("reward", "encoder"),
        independent_encoder=args.independent_encoder,
        max_new_tokens=args.max_new_tokens or get("grpo", "max_completion_length", 256),
        max_prompt_length=args.max_prompt_length, batch_size=args.batch_size, cmrc=args.cmrc or "",
        cmrc_limit=args.cmrc_limit, cmrc_max_new_tokens=args.cmrc_max_new_tokens,
        ood=args.ood or ("" if args.cmrc else get("tax_meter", "ood_passages")),
        ood_samples=args.ood_samples, ood_max_tokens=args.ood_max_tokens, judge_url=args.judge_url or "",
        judge_model=args.judge_model or "", judge_pairs=pairs, judge_samples=args.judge_samples,
        judge_timeout=args.judge_timeout, judge_max_failures=args.judge_max_failures, seed=args.seed,
        dtype=args.dtype)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return run_entry_point(PROG, lambda: _evaluate(args))


def _evaluate(args: argparse.Namespace) -> int:
    from semgrpo.eval.run import run_evaluation

    settings = settings_from_args(args)
    result = run_evaluation(settings)
    out = Path(settings.output)
    print(json.dumps({name: m["task"] | {"cmrc": m["cmrc"]} for name, m in result["models"].items()},
                     indent=2, default=str))
    print(f"{PROG}: wrote {out / 'eval.json'}, {out / 'eval.md'}", file=sys.stderr)
    judge_error = (result.get("judge") or {}).get("error")
    if judge_error:
        # Every metric is written; only the judge's comparison is missing or partial. A status of its own
        # (not 0, which would hide it from scripts; not 2, which means nothing was evaluated).
        print(f"{PROG}: warning: LLM judge failed, its results are missing from eval.json: {judge_error}",
              file=sys.stderr)
        return JUDGE_FAILED
    return 0
