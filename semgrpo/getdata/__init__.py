"""`python bin/get_data.py`: the public datasets at pinned versions, built and checked into the data root.

- `manifest.py`: what the data root holds (`manifest.json`: sources at full commit shas, every file's sha256;
  `openpecha_ids.json`: the OpenPecha texts of each split, in order).
- `openpecha.py`: the rules that turn OpenPecha's line-aligned texts into the pair and title files.
- `download.py`: one file over HTTP (urllib, with a timeout, retries and a check for partial downloads).
- `install.py`: fetch or copy, build, check every sha256, then move into the root (all or nothing).
- `cli.py`: the command line. `derive.py`: re-derive the committed lists from a data folder (maintainers).

The root itself, and the `data:` paths into it, are `semgrpo.data_root`.
"""
