"""Throughput of the script checker: C extension vs `regex` path vs a plain Python loop.

Two operations: ``script_profile`` (counts in all 176 classes: one per Unicode script, then the neutral
ones) and ``script_consistent`` (R_lang's path: target, foreign and neutral counts for Tibetan).
MB/s counts the UTF-8 bytes of the input (what a tokenizer would decode), on mixed Tibetan /
Chinese text: the bo and zh fields of bo_zh_openpecha plus the Tibetan texts and the CMRC contexts of
the data root ($SEMGRPO_DATA, else ~/.cache/semgrpo/data; python bin/get_data.py) when it holds them,
else generated text of the same mix. Modes:
``1thread`` (one call on the whole list) and ``2threads`` (two threads, each calling on half).

    python benchmarks/bench_script.py [--seconds 1.0] [--csv out.csv]

Prints CSV rows (op,provider,mode,metric,unit,shape,p50,p20,p80,device,git_sha,timestamp) and
one summary line with the ratios.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import semgrpo.script as S  # noqa: E402
from semgrpo.data_root import data_root  # noqa: E402
from semgrpo.script.tables import SCRIPT_CLASSES, class_table  # noqa: E402

DATA = data_root()
HEADER = "op,provider,mode,metric,unit,shape,p50,p20,p80,device,git_sha,timestamp"


def load_texts() -> tuple[list[str], str]:
    """Mixed Tibetan/Chinese strings and where they came from."""
    texts: list[str] = []
    if all((DATA / rel).is_file() for rel in ("bo_zh_openpecha/train.jsonl", "bo_title_openpecha/train.jsonl",
                                              "cmrc2018/dev.json")):
        for path in sorted((DATA / "bo_zh_openpecha").glob("*.jsonl")):
            for line in path.open(encoding="utf-8"):
                rec = json.loads(line)
                texts += [rec["bo"], rec["zh"]]
        for path in sorted((DATA / "bo_title_openpecha").glob("*.jsonl")):
            texts += [json.loads(line)["text"] for line in path.open(encoding="utf-8")]
        cmrc = json.loads((DATA / "cmrc2018" / "dev.json").read_text(encoding="utf-8"))
        texts += [p["context"] for art in cmrc["data"] for p in art["paragraphs"]]
        random.Random(0).shuffle(texts)
        return texts, str(DATA)
    rng = random.Random(0)
    bo = [chr(c) for c in range(0xF40, 0xF6D)] + [chr(c) for c in range(0xF71, 0xF85)]
    zh = [chr(c) for c in range(0x4E00, 0x9FA6)]
    for i in range(20000):
        pool = bo if i % 2 else zh
        words = ["".join(rng.choices(pool, k=rng.randint(1, 5))) for _ in range(rng.randint(5, 80))]
        texts.append(("་" if i % 2 else "").join(words) + ("།" if i % 2 else "。"))
    return texts, "generated"


def python_loop(texts: list[str]) -> np.ndarray:
    """Plain Python: one table lookup per code point."""
    table = class_table().tolist()
    out = np.zeros((len(texts), len(SCRIPT_CLASSES)), dtype=np.int64)
    for i, text in enumerate(texts):
        row = [0] * len(SCRIPT_CLASSES)
        for ch in text:
            row[table[ord(ch)]] += 1
        out[i] = row
    return out


def provider_fn(name: str, op: str = "script_profile"):
    if op == "script_consistent":
        return lambda texts: S.script_consistent(texts, script="Tibt", backend=name)
    if name == "python":
        return python_loop
    return lambda texts: S.script_profile(texts, backend=name)


def time_mode(fn, texts: list[str], threads: int, seconds: float) -> list[float]:
    """Wall times of repeated runs; with threads > 1, persistent threads each call fn on one
    slice per run (started once, synchronized by barriers, so thread start-up is not timed)."""
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    if threads == 1:
        while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 200):
            t0 = time.perf_counter()
            fn(texts)
            times.append(time.perf_counter() - t0)
        return times
    parts = [texts[i::threads] for i in range(threads)]
    start, done = threading.Barrier(threads + 1), threading.Barrier(threads + 1)
    stop = False

    def worker(part):
        while True:
            start.wait()
            if stop:
                return
            fn(part)
            done.wait()

    workers = [threading.Thread(target=worker, args=(p,), daemon=True) for p in parts]
    for w in workers:
        w.start()
    while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 200):
        t0 = time.perf_counter()
        start.wait()
        done.wait()
        times.append(time.perf_counter() - t0)
    stop = True
    start.wait()
    for w in workers:
        w.join()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="time budget per provider and mode")
    ap.add_argument("--csv", type=Path, default=None, help="also write the CSV rows here")
    args = ap.parse_args()

    texts, source = load_texts()
    # The slow providers run on a prefix of about 1 MB; MB/s normalizes by size.
    small, size = [], 0
    for t in texts:
        small.append(t)
        size += len(t.encode("utf-8"))
        if size > 1_000_000:
            break
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                         text=True).stdout.strip()
    device = f"cpu:{platform.processor() or platform.machine()}"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    class_table()  # built once, outside the timings
    rows, mbps = [HEADER], {}
    runs = [("script_profile", p) for p in S.available_backends() + ("python",)]
    runs += [("script_consistent", p) for p in S.available_backends()]
    for op, provider in runs:
        batch = texts if provider == "c" else small
        nbytes = sum(len(t.encode("utf-8")) for t in batch)
        fn = provider_fn(provider, op)
        fn(batch[:100])  # warm up
        for threads in (1, 2):
            mode = f"{threads}thread" + ("s" if threads > 1 else "")
            rates = sorted(nbytes / t / 1e6 for t in time_mode(fn, batch, threads, args.seconds))
            p20, p50, p80 = (float(np.percentile(rates, q)) for q in (20, 50, 80))
            mbps[op, provider, threads] = p50
            shape = f"n={len(batch)};bytes={nbytes}"
            rows.append(f"{op},{provider},{mode},throughput,MB/s,{shape},{p50:.1f},{p20:.1f},{p80:.1f},{device},{sha},{stamp}")
    print("\n".join(rows))
    if args.csv:
        args.csv.write_text("\n".join(rows) + "\n", encoding="utf-8")
    c1 = mbps.get(("script_profile", "c", 1), float("nan"))
    c2 = mbps.get(("script_profile", "c", 2), float("nan"))
    r1, p1 = mbps[("script_profile", "regex", 1)], mbps[("script_profile", "python", 1)]
    print(
        f"script_profile [{source}]: C {c1:.0f} MB/s (1 thread), {c2:.0f} MB/s (2 threads, x{c2 / c1:.2f}); "
        f"regex {r1:.1f} MB/s; python loop {p1:.1f} MB/s; C/regex x{c1 / r1:.0f}, C/python x{c1 / p1:.0f}"
    )
    k1 = mbps.get(("script_consistent", "c", 1), float("nan"))
    k2 = mbps.get(("script_consistent", "c", 2), float("nan"))
    kr = mbps[("script_consistent", "regex", 1)]
    print(f"script_consistent [{source}]: C {k1:.0f} MB/s (1 thread), {k2:.0f} MB/s (2 threads); regex {kr:.1f} MB/s")


if __name__ == "__main__":
    main()
