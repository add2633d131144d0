#!/usr/bin/env python
"""Entry point: see `python bin/export.py --help` and the README."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from semgrpo.export.cli import main

if __name__ == "__main__":
    sys.exit(main())
