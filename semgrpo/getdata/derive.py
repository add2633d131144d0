"""For maintainers: re-derive the committed lists from a data folder laid out like the data root.

    python -m semgrpo.getdata.derive DIR           # prints what differs from the committed files
    python -m semgrpo.getdata.derive DIR --write   # rewrites openpecha_ids.json and manifest.json's sha256/bytes

The OpenPecha id lists are the `id` fields of DIR's pair and title files, in file order (for a pair
`<text id>:<line>`, its text id, once). The sources and their pinned commits in manifest.json are kept as they
are. After `--write`, check that `python bin/get_data.py` from the real sources reproduces DIR byte for byte.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from semgrpo.files import write_text_atomic
from semgrpo.getdata.manifest import MANIFEST, OPENPECHA_IDS


def text_ids(path: Path, build: str) -> list[str]:
    """The OpenPecha text ids of a pair or title file, in order of first appearance."""
    ids: dict[str, None] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            rid = json.loads(line)["id"]
            ids[rid.rsplit(":", 1)[0] if build == "pairs" else rid] = None
    return list(ids)


def derive(folder: Path) -> tuple[dict, dict]:
    """(manifest, id lists) as derived from `folder`: the committed manifest with each file's sha256 and size
    taken from the folder, and the OpenPecha id lists."""
    manifest = json.loads(MANIFEST.read_text(encoding="utf-8"))
    ids = {}
    for rel, entry in manifest["files"].items():
        data = (folder / rel).read_bytes()
        entry["sha256"], entry["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
        if entry.get("build"):
            ids[rel] = text_ids(folder / rel, entry["build"])
    return manifest, ids


def _dump(obj: dict, *, indent: int) -> str:
    return json.dumps(obj, indent=indent, ensure_ascii=False) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m semgrpo.getdata.derive", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="a data folder laid out like the data root")
    p.add_argument("--write", action="store_true", help="rewrite the committed files")
    args = p.parse_args(argv)
    manifest, ids = derive(args.folder)
    texts = {MANIFEST: _dump(manifest, indent=2), OPENPECHA_IDS: _dump(ids, indent=1)}
    changed = [path for path, text in texts.items() if path.read_text(encoding="utf-8") != text]
    for path in changed:
        if args.write:
            write_text_atomic(path, texts[path])
        print(f"{'rewrote' if args.write else 'differs'}: {path}")
    if not changed:
        print(f"the committed lists match {args.folder}")
    return 1 if changed and not args.write else 0


if __name__ == "__main__":
    sys.exit(main())
