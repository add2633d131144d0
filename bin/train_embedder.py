#!/usr/bin/env python
"""Bilingual contrastive adaptation of the reward encoder (paper section 3.4).

Example:
    python bin/train_embedder.py --model /models/cino-st --data train.jsonl --dev dev.jsonl \\
        --src-field bo --tgt-field zh --output runs/encoder --epochs 1 --batch-size 32 --lr 2e-5

Prints progress and the graded diagnostic (true > partial > unrelated cosine) before and after.
User errors print one line on stderr and exit with code 2.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from semgrpo.cli import main_embedder

if __name__ == "__main__":
    sys.exit(main_embedder())
