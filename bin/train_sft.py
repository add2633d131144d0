#!/usr/bin/env python
"""Entry point: see `python bin/train_sft.py --help` and the README."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from semgrpo.cli import main_sft

if __name__ == "__main__":
    sys.exit(main_sft())
