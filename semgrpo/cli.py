"""Command-line entry points behind bin/*.py: argument parsing, the two-stage flow, user errors.

A user error (bad config key or value, missing or malformed file, batch sizes that do not divide)
prints one line on stderr and exits with status 2: no traceback, nothing written to output_dir.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path

from semgrpo.config import Config, ConfigError, load_config, valid_keys

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO_ROOT / "configs" / "demo.yaml"


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description,
                                epilog="Config keys: " + ", ".join(valid_keys()))
    p.add_argument("--config", action="append",
                   help=f"run config YAML, repeatable: later files override earlier ones "
                        f"(default: the offline demo, configs/{DEMO_CONFIG.name})")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. grpo.beta=0.04")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return p


def _user_errors():
    from semgrpo.checkpoint import CheckpointError
    from semgrpo.data import DataError

    return (ConfigError, DataError, CheckpointError)


def _run(prog: str, description: str, job, argv=None) -> int:
    args = _parser(prog, description).parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        cfg = load_config(args.config or [DEMO_CONFIG], args.overrides)
        summary = job(cfg)
    except _user_errors() as exc:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=2, default=str))
    return 0


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
                "sft.before_grpo=true).", run_grpo_stages, argv)


def main_sft(argv=None) -> int:
    from semgrpo.sft import train_sft

    return _run("train_sft.py", "Supervised fine-tuning: cold start (sft.samples=N) or Strong SFT "
                "(sft.samples=0).", train_sft, argv)
