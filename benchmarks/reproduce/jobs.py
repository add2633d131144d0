"""Run the experiment's stages as subprocesses of the project's own commands, two at a time on two cores.

Every stage is a plain command line (``bin/train_sft.py``, ``bin/train_grpo.py``, ``bin/evaluate.py``),
so the experiment exercises exactly what users run; nothing is reimplemented here. A stage that finished
leaves ``jobs/<name>.done`` with a digest of its command, of the content of every file it reads and of the
stages it needs; started again, the experiment skips it only when that digest is unchanged. Otherwise its
output folder is cleared and it runs again, so an edited config or data file never reuses a stale stage.
One that was interrupted resumes from its newest checkpoint (the trainers' ``resume=auto``).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# Variables of an outer launcher that must not leak into a stage (each stage is its own 1-rank job).
_LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                  "CROSS_RANK", "CROSS_SIZE", "GROUP_RANK")


class StageFailed(RuntimeError):
    """A stage's command exited non-zero; the message names it, its log and the log's last lines."""


@dataclass
class Job:
    name: str
    argv: list[str]
    needs: list[str] = field(default_factory=list)
    reads: list[Path] = field(default_factory=list)  # files whose content decides the stage's result
    output: Path | None = None  # cleared before a rerun
    seconds: float | None = None


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _digests(jobs: list[Job]) -> dict[str, str]:
    """Each job's digest: its command, the content of the files it reads, the digests of the jobs it needs."""
    by_name, out = {j.name: j for j in jobs}, {}

    def digest(name: str) -> str:
        if name not in out:
            j = by_name[name]
            parts = [j.argv, [file_digest(p) for p in j.reads], [digest(n) for n in j.needs]]
            out[name] = hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()
        return out[name]

    for j in jobs:
        digest(j.name)
    return out


def stage_env(threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARS}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    return env


def run_jobs(jobs: list[Job], *, workdir: Path, slots: int, threads: int, cwd: Path, log,
             known: dict[str, float] | None = None) -> dict[str, float]:
    """Run `jobs` respecting `needs`, at most `slots` at once; returns each job's wall seconds. Jobs in `known`
    (finished earlier in this same experiment, with their seconds) are taken as done without a word.

    Raises:
        StageFailed: The first failing job (the others still running are stopped).
    """
    done_dir, log_dir = workdir / "jobs", workdir / "logs"
    done_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    names = {j.name for j in jobs}
    for j in jobs:
        unknown = [n for n in j.needs if n not in names]
        if unknown:
            raise ValueError(f"job {j.name} needs unknown job(s) {unknown}")
    seconds: dict[str, float] = {}
    digests = _digests(jobs)
    for j in jobs:
        marker = done_dir / f"{j.name}.done"
        if j.name in (known or {}):
            seconds[j.name] = known[j.name]
            continue
        if not marker.is_file():
            continue
        done = json.loads(marker.read_text())
        if done.get("digest") == digests[j.name]:
            seconds[j.name] = done["seconds"]
            log(f"{j.name}: done in an earlier run ({seconds[j.name]:.0f} s), skipped")
        else:
            log(f"{j.name}: its command, inputs or upstream stages changed since it ran: running it again")
            marker.unlink()
            if j.output is not None:
                shutil.rmtree(j.output, ignore_errors=True)
    pending = [j for j in jobs if j.name not in seconds]
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    total = len(jobs)
    try:
        while pending or running:
            for j in list(pending):
                if len(running) >= slots:
                    break
                if all(n in seconds for n in j.needs):
                    pending.remove(j)
                    with open(log_dir / f"{j.name}.log", "a", encoding="utf-8") as out:  # the child keeps its fd
                        out.write(f"$ {' '.join(j.argv)}\n")
                        out.flush()
                        proc = subprocess.Popen(j.argv, cwd=cwd, env=stage_env(threads), stdout=out,
                                                stderr=subprocess.STDOUT)
                    running[j.name] = (proc, time.perf_counter())
                    log(f"{j.name}: started ({len(seconds)}/{total} stages done; log {log_dir / (j.name + '.log')})")
            if not running and pending:
                raise ValueError(f"jobs {[j.name for j in pending]} wait on each other")
            time.sleep(0.5)
            for name, (proc, start) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[name]
                if proc.returncode != 0:
                    tail = (log_dir / f"{name}.log").read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
                    raise StageFailed(f"stage {name} failed (exit {proc.returncode}); log "
                                      f"{log_dir / (name + '.log')}, last lines:\n  " + "\n  ".join(tail))
                seconds[name] = round(time.perf_counter() - start, 1)
                (done_dir / f"{name}.done").write_text(json.dumps({"seconds": seconds[name],
                                                                    "digest": digests[name]}) + "\n")
                log(f"{name}: finished in {seconds[name]:.0f} s ({len(seconds)}/{total} stages done)")
    finally:
        for proc, _ in running.values():
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return seconds


def python_cmd(script: Path, *args: str) -> list[str]:
    return [sys.executable, str(script), *map(str, args)]
