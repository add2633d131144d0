"""`bin/export.py`: a finished run -> one Hugging Face model folder (or one PEFT adapter).

    python bin/export.py runs/mt_zh_bo runs/mt_zh_bo/export
    python bin/export.py runs/mt_zh_bo exports/mt_zh_bo-adapter --adapter-only

User errors print one `export.py: error: ...` line and exit with status 2, OUT_DIR untouched.
"""
from __future__ import annotations

import argparse
import os

from semgrpo.errors import run_entry_point

PROG = "export.py"

TRUST = ("Trust: a full-parameter export reads DeepSpeed's pickled shards under the checkpoint's state/. They are "
         "unpickled with torch's weights-only loader and the short allow-list semgrpo resumes with, so a planted "
         "payload is refused rather than run; still, export only runs you produced or can vouch for.")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Export a finished run as one Hugging Face model folder: the base (model.path) with the "
                    "adapters of its model.init_from chain and its own trained adapter merged in (LoRA runs), or "
                    "the consolidated ZeRO shards (full-parameter runs); plus the tokenizer and generation "
                    "config, as safetensors. transformers' AutoModelForCausalLM and vLLM load it as it is.",
        epilog=TRUST)
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run's output_dir")
    p.add_argument("out_dir", metavar="OUT_DIR", help="the folder to write (new or empty, else --overwrite)")
    p.add_argument("--checkpoint", metavar="STEP_DIR",
                   help="the checkpoint to export, RUN_DIR/checkpoints/step-NNNNNNNN or just its name "
                        "(default: the newest complete, intact one)")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"),
                   help="dtype of the written weights (default: the run's model.dtype; auto = the dtype the "
                        "base's config.json records, else fp32). Merging is done in fp32 either way")
    p.add_argument("--adapter-only", action="store_true",
                   help="LoRA runs: write one PEFT adapter over the original base instead of a merged model; "
                        "an init_from chain is folded into it exactly (its ranks add up)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    def job() -> int:
        from semgrpo.export import export_run

        export_run(args.run_dir, args.out_dir, checkpoint=args.checkpoint, dtype=args.dtype,
                   adapter_only=args.adapter_only, overwrite=args.overwrite)
        return 0

    return run_entry_point(PROG, job)
