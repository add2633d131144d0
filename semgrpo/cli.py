"""Command-line entry points behind bin/train_grpo.py, bin/train_sft.py and bin/train_embedder.py.

Every entry point follows semgrpo.errors: a user error (bad config key or value, missing or malformed file,
batch sizes that do not divide) prints one line on stderr and exits with status 2, nothing written to
output_dir; a bug keeps its traceback (status 1).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path

from semgrpo.config import Config, ConfigError, load_config, valid_keys
from semgrpo.data_root import resolve_data_path
from semgrpo.errors import run_entry_point

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO_ROOT / "configs" / "demo.yaml"


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description,
                                epilog=f"Config keys: {', '.join(valid_keys())}. --help-config says what each does.")
    p.add_argument("--help-config", nargs="?", const="text", choices=("text", "markdown"), metavar="FORMAT",
                   help="print every config key with its default and what it does, and exit; FORMAT markdown prints "
                        "the README's configuration table")
    p.add_argument("--config", action="append",
                   help=f"run config YAML, repeatable: later files override earlier ones "
                        f"(default: the offline demo, configs/{DEMO_CONFIG.name})")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. grpo.beta=0.04")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    plan = p.add_argument_group("memory plan (printed before the model loads; see semgrpo/memory_plan/)")
    plan.add_argument("--plan-only", action="store_true",
                      help="print the memory plan for the config and exit, without loading weights, tokenizer "
                           "or data, and without starting torch.distributed")
    plan.add_argument("--gpu-memory", type=float, metavar="GIB",
                      help="GPU memory per device to check the plan against (sets run.gpu_memory_gib; "
                           "default: the CUDA device's size)")
    plan.add_argument("--world-size", type=int, metavar="N",
                      help="with --plan-only: the number of GPUs to plan for (default: $WORLD_SIZE or 1)")
    plan.add_argument("--num-nodes", type=int, metavar="N",
                      help="with --plan-only: the nodes they are spread over (default: the launcher's, or 1)")
    return p


def _run(prog: str, description: str, job, argv=None, *, plan_stages=lambda cfg: ["grpo"]) -> int:
    """Parse the command line and run `job(cfg)`, or, with --plan-only, print the plan of `plan_stages(cfg)`."""
    args = _parser(prog, description).parse_args(argv)
    if args.help_config:  # before anything loads: no config file is read, no process group started
        from semgrpo.config.help import help_text, markdown_table

        try:
            print(markdown_table() if args.help_config == "markdown" else help_text(), flush=True)
        except BrokenPipeError:  # `| head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    def main() -> int:
        overrides = list(args.overrides)
        if args.gpu_memory is not None:  # the flag wins over a key=value override, and gets the same range check
            overrides.append(f"run.gpu_memory_gib={args.gpu_memory!r}")
        cfg = load_config(args.config or [DEMO_CONFIG], overrides)
        if args.plan_only:
            return _print_plans(cfg, plan_stages(cfg), world_size=args.world_size, num_nodes=args.num_nodes)
        if args.world_size is not None or args.num_nodes is not None:
            raise ConfigError("--world-size and --num-nodes only go with --plan-only; a run takes them from its "
                              "launcher (deepspeed --num_gpus N, --hostfile)")
        summary = job(cfg)
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(summary, indent=2, default=str))
        return 0

    return run_entry_point(prog, main)


def _print_plans(cfg: Config, stages: list[str], *, world_size: int | None, num_nodes: int | None) -> int:
    """--plan-only: the memory plan of each stage this command would run, from config.json alone."""
    from semgrpo.ds_config import load_ds_config
    from semgrpo.memory_plan import nodes_from_env, plan_lines
    from semgrpo.modeling import resolve_dtype
    from semgrpo.session import apply_demo

    if world_size is None:
        env = os.environ.get("WORLD_SIZE", "1")
        world_size = int(env) if env.isdigit() else 1
    if world_size < 1:
        raise ConfigError(f"--world-size must be >= 1, got {world_size}")
    if num_nodes is None:
        num_nodes = nodes_from_env(world_size)
    if num_nodes < 1:
        raise ConfigError(f"--num-nodes must be >= 1, got {num_nodes}")
    if world_size % num_nodes:
        raise ConfigError(f"--world-size {world_size} cannot be spread evenly over --num-nodes {num_nodes}")
    if int(os.environ.get("RANK", "0")) != 0:  # under a launcher, rank 0 alone plans (and builds demo assets)
        return 0
    if cfg.demo.enabled:
        apply_demo(cfg)  # fills model.path (building the demo's assets once, if they are not cached)
    if not cfg.model.path:
        raise ConfigError("model.path is not set; the plan reads its config.json")
    dtype = resolve_dtype(cfg.model.dtype)
    ds_config, _ = load_ds_config(cfg.run.deepspeed, dtype=dtype, world_size=world_size)
    plans = ["\n".join(plan_lines(cfg, world_size=world_size, ds_config=ds_config, dtype=dtype,
                                  num_nodes=num_nodes, stage=stage)) for stage in stages]
    print("\n\n".join(plans), flush=True)
    return 0


def _grpo_plan_stages(cfg: Config) -> list[str]:
    """train_grpo.py runs a cold start first when sft.before_grpo is set and model.init_from is not."""
    return ["sft", "grpo"] if cfg.sft.before_grpo and not cfg.model.init_from else ["grpo"]


def run_grpo_stages(cfg: Config) -> dict:
    """Stage 1 (when sft.before_grpo and no init_from), then stage 2 from its adapter."""
    from semgrpo.sft import train_sft
    from semgrpo.train import train_grpo

    if cfg.sft.before_grpo and not cfg.model.init_from:
        from semgrpo import run_folder
        from semgrpo.session import init_distributed

        sft_cfg = copy.deepcopy(cfg)
        sft_cfg.output_dir = str(Path(cfg.output_dir) / "cold_start")
        cfg.model.init_from = sft_cfg.output_dir
        # Both folders are checked before the cold start trains: a refused GRPO start costs nothing.
        init_distributed()
        grpo = run_folder.plan(cfg, stage="grpo")
        run_folder.plan(sft_cfg, stage="sft")
        # A fresh GRPO start (resume empty) redoes its cold start; otherwise a finished one is reused.
        fresh = grpo.mode != "resume" and run_folder.explicit_fresh(cfg.resume)
        if fresh or not (Path(sft_cfg.output_dir) / "summary.json").is_file():
            train_sft(sft_cfg)
    return train_grpo(cfg)


def main_grpo(argv=None) -> int:
    return _run("train_grpo.py", "Semantic-reward GRPO under DeepSpeed (stage 2; stage 1 too with "
                "sft.before_grpo=true).", run_grpo_stages, argv, plan_stages=_grpo_plan_stages)


def main_sft(argv=None) -> int:
    from semgrpo.sft import train_sft

    return _run("train_sft.py", "Supervised fine-tuning: cold start (sft.samples=N) or Strong SFT "
                "(sft.samples=0).", train_sft, argv, plan_stages=lambda cfg: ["sft"])


EMBEDDER_DOC = "Bilingual contrastive adaptation of the reward encoder (paper section 3.4)."


def _embedder_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train_embedder.py", description=EMBEDDER_DOC)
    p.add_argument("--model", required=True, help="sentence-transformers directory or plain HF encoder directory")
    p.add_argument("--data", required=True, help="training JSONL of parallel pairs (a path, or data:<path> in the "
                   "data root, e.g. data:bo_zh_openpecha/train.jsonl)")
    p.add_argument("--dev", help="JSONL for the graded diagnostic, a path or data:<path> (default: the training data)")
    p.add_argument("--src-field", default="bo", help="source-language field (default: bo)")
    p.add_argument("--tgt-field", default="zh", help="target-language field (default: zh)")
    p.add_argument("--mono-field", help="field of the monolingual diagnostic (default: --src-field)")
    p.add_argument("--output", required=True, help="output directory of the sentence-transformers model")
    p.add_argument("--overwrite", action="store_true", help="allow a non-empty --output")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--temperature", type=float, default=0.05)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="torch device (default: cuda when available)")
    p.add_argument("--threads", type=int,
                   help="torch CPU threads (default: torch's choice; 1 is fastest for tiny encoders on a busy CPU)")
    return p


def _embedder_precheck(args: argparse.Namespace) -> str | None:
    """The error of a path argument, or None. Needs no torch import, so a typo fails in milliseconds."""
    output = Path(args.output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not args.overwrite:
        return f"{output}: output exists and is not empty (pass --overwrite)"
    if not Path(args.model).is_dir():
        return f"{args.model}: --model must be a model directory"
    for flag in ("data", "dev"):
        value = getattr(args, flag)  # a data: path that the data root lacks raises, naming how to fetch it
        if value is not None and not resolve_data_path(value, what=f"--{flag}").is_file():
            return f"{value}: no such file"
    return None


def main_embedder(argv=None) -> int:
    args = _embedder_parser().parse_args(argv)
    return run_entry_point("train_embedder.py", lambda: _train_embedder(args))


def _train_embedder(args: argparse.Namespace) -> int:
    error = _embedder_precheck(args)  # no torch import before it: a typo fails in milliseconds
    if error:
        raise ConfigError(error)
    from semgrpo.embedder import read_pairs_jsonl, train_embedder

    output = Path(args.output)
    fields = (args.src_field, args.tgt_field)
    train = read_pairs_jsonl(args.data, fields=fields)
    dev = read_pairs_jsonl(args.dev, fields=fields) if args.dev else None
    print(f"train_embedder: {len(train)} training pairs" + (f", {len(dev)} dev pairs" if dev else ""))
    diag = train_embedder(
        args.model,
        train,
        src_field=args.src_field,
        tgt_field=args.tgt_field,
        output_dir=output,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        temperature=args.temperature,
        seed=args.seed,
        max_length=args.max_length,
        eval_pairs=dev,
        mono_field=args.mono_field or args.src_field,
        device=args.device,
        num_threads=args.threads,
    )
    graded = "yes" if diag["after"]["cross_graded"] else "NO"
    print(f"train_embedder: saved {output}; true > partial > unrelated after training: {graded}")
    return 0
