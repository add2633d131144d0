#!/usr/bin/env python
"""Bilingual contrastive adaptation of the reward encoder (paper section 3.4).

Example:
    python bin/train_embedder.py --model /models/cino-st --data train.jsonl --dev dev.jsonl \
        --src-field bo --tgt-field zh --output runs/encoder --epochs 1 --batch-size 32 --lr 2e-5

Prints progress and the graded diagnostic (true > partial > unrelated cosine) before and after.
User errors print one line on stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="sentence-transformers directory or plain HF encoder directory")
    p.add_argument("--data", required=True, help="training JSONL of parallel pairs")
    p.add_argument("--dev", help="JSONL for the graded diagnostic (default: the training data)")
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
    return p.parse_args(argv)


def precheck(args: argparse.Namespace) -> str | None:
    """The error of a path argument, or None. Needs no torch import, so a typo fails in milliseconds."""
    output = Path(args.output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not args.overwrite:
        return f"{output}: output exists and is not empty (pass --overwrite)"
    if not Path(args.model).is_dir():
        return f"{args.model}: --model must be a model directory"
    for path in (args.data, args.dev):
        if path is not None and not Path(path).is_file():
            return f"{path}: no such file"
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    error = precheck(args)
    if error:
        print(f"train_embedder: error: {error}", file=sys.stderr)
        return 2
    from semgrpo.embedder import EmbedderInputError, read_pairs_jsonl, train_embedder

    output = Path(args.output)
    try:
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
    except EmbedderInputError as e:
        print(f"train_embedder: error: {e}", file=sys.stderr)
        return 2
    graded = "yes" if diag["after"]["cross_graded"] else "NO"
    print(f"train_embedder: saved {output}; true > partial > unrelated after training: {graded}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
