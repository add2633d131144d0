"""`bin/get_data.py`: flags -> `install.Options`, one `error:` line and exit status 2 on any failure."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from semgrpo.data_root import DATA_ENV, DEFAULT_ROOT, data_root
from semgrpo.errors import UserError, run_entry_point
from semgrpo.getdata.download import FetchError
from semgrpo.getdata.install import Options, get_data
from semgrpo.getdata.manifest import RAW_BASE, load_manifest

PROG = "get_data.py"


def _parser() -> argparse.ArgumentParser:
    datasets = ", ".join(load_manifest().datasets)
    p = argparse.ArgumentParser(
        prog=PROG, description="Fetch the public datasets (OpenPecha Tibetan-Chinese pairs and titles, DRCD, CMRC "
        "2018) at pinned commits, build the project's files and check each against the committed sha256 "
        "manifest (semgrpo/getdata/manifest.json). Files already present and correct are kept; nothing is "
        "installed unless every file passes.")
    p.add_argument("--root", type=Path, metavar="DIR",
                   help=f"data root to fill (default: ${DATA_ENV}, else {DEFAULT_ROOT})")
    p.add_argument("--from", dest="from_dir", type=Path, metavar="DIR",
                   help="install from a local folder laid out like the data root instead of the network")
    p.add_argument("--only", action="append", default=[], metavar="NAME[,NAME]",
                   help=f"only these datasets (repeatable): {datasets}")
    p.add_argument("--mirror", default=RAW_BASE, metavar="URL",
                   help=f"fetch <URL>/<owner>/<repo>/<commit>/<path> instead of {RAW_BASE}/... (a mirror of GitHub's "
                   "raw files)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="seconds any one connect or read may wait (default 60)")
    p.add_argument("--retries", type=int, default=2, metavar="N",
                   help="further tries of a download after a timeout, a refused connection, a 5xx or a cut body "
                   "(default 2)")
    p.add_argument("--jobs", type=int, default=8, metavar="N", help="downloads at once (default 8)")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    return run_entry_point(PROG, lambda: _get_data(args))


def _get_data(args: argparse.Namespace) -> int:
    if args.timeout <= 0 or args.retries < 0 or args.jobs < 1:
        raise UserError(f"--timeout must be > 0, --retries >= 0 and --jobs >= 1; got {args.timeout:g}, "
                        f"{args.retries} and {args.jobs}")
    if args.from_dir is not None and not args.from_dir.is_dir():
        raise FetchError(f"--from {args.from_dir}: not a folder")
    only = tuple(name.strip() for item in args.only for name in item.split(",") if name.strip())
    root = (args.root or data_root()).expanduser()
    print(f"get_data: data root {root}" + (f", from {args.from_dir}" if args.from_dir else ""), flush=True)
    opts = Options(only=only, from_dir=args.from_dir, mirror=args.mirror, timeout=args.timeout, retries=args.retries,
                   jobs=args.jobs)
    get_data(root, opts, log=lambda msg: print(msg, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
