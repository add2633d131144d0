#!/usr/bin/env python
"""Entry point: see `python bin/get_data.py --help` and the README's "Data" section."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from semgrpo.getdata.cli import main

if __name__ == "__main__":
    sys.exit(main())
