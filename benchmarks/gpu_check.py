"""GPU check: one command that proves semgrpo's CUDA path inside a short GPU window (~15 min with start-up).

    python benchmarks/gpu_check.py --out runs/gpu_check                   # one CUDA GPU; <= 8 min on an H100
    python benchmarks/gpu_check.py --out runs/gpu_check --wheels wheels/  # install missing packages first
    python benchmarks/gpu_check.py --dry-run                              # the steps and budgets; runs nothing
    python benchmarks/gpu_check.py --smoke --out /tmp/gpu_check           # CPU rehearsal (tiny, interpreted)

Steps (``STEPS``), each in a process of its own under a hard timeout: SIGINT at its budget (pytest then writes
its XML, the trainer stops at a step boundary, the benchmarks have written their rows so far), SIGKILL of its
whole process group ``GRACE_S`` later. A step whose packages are missing is skipped with one line; the
benchmark's peers (Liger, TRL) are optional and their rows then say "not installed".

Written to ``--out``: ``report.md`` (rewritten after every step, so a run stopped from outside keeps what
finished), ``steps.csv`` (step, status, seconds, budget, summary), ``ops_tests.csv`` and ``fp16_underflow.csv``
(one row per test case: outcome, seconds, CUDA allocations, message), ``bench_kernels_<device>.csv`` and
``bench_kernels_fused_linear_<device>.csv`` (the benchmarks' own rows), ``demo_metrics.csv`` (the demo's
metrics per step). ``work/`` holds the logs, JUnit XML, the fresh Triton cache, the demo's run folder and the
installed wheels. Exit status: 0 when no step failed or timed out, 1 otherwise, 2 with one ``error:`` line when
there is nothing to run (no CUDA device, bad ``--wheels``, ``--out`` holding something else).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import importlib.metadata
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from semgrpo.errors import UserError  # noqa: E402

GRACE_S = 8  # after SIGINT, before SIGKILL
STATUS_OK = ("pass", "skipped")
OUTPUTS = ("report.md", "steps.csv", "ops_tests.csv", "fp16_underflow.csv", "demo_metrics.csv", "work")
PACKAGES = ("torch", "triton", "transformers", "peft", "deepspeed", "trl", "liger-kernel", "sentence-transformers",
            "pytest", "pytest-xdist")


@dataclass(frozen=True)
class Step:
    number: int
    key: str
    title: str
    budget_s: int  # on one CUDA GPU (an H100): the four add up to 440 s
    smoke_budget_s: int  # the CPU rehearsal on a shared 2-core machine
    needs: tuple[str, ...]  # importable modules; without one the step is skipped
    what: str
    optional: tuple[str, ...] = ()  # modules of peers: without one, its rows say "not installed"


STEPS = (
    Step(1, "ops", "tests/ops on CUDA", 150, 180, ("torch", "triton", "pytest"),
         "every Triton kernel of semgrpo/ops compiled into a fresh cache and checked against its reference, "
         "fp32/bf16/fp16"),
    Step(2, "bench", "fused-linear and logits-level benchmarks", 100, 240, ("torch", "triton"),
         "GRPO loss from hidden states at N=16384, H=2560, V=151936 bf16: ours, Liger, TRL chunked, eager "
         "(time, peak extra memory, % of measured bf16 matmul peak); grpo_loss and token_logprobs vs Liger",
         optional=("liger_kernel", "trl")),
    Step(3, "demo", "bf16 demo, collectives through NCCL", 160, 300,
         ("torch", "deepspeed", "transformers", "peft", "sentence_transformers"),
         "50 GRPO steps of the demo in bf16 with SEMGRPO_FORCE_COLLECTIVES=1: semgrpo's collectives on CUDA "
         "tensors through NCCL; demo assets from --demo-cache, $SEMGRPO_CACHE or ~/.cache/semgrpo/demo (built "
         "there when absent, which needs babel)"),
    Step(4, "fp16", "fp16 underflow of the GRPO backward", 30, 120, ("torch", "triton", "pytest"),
         "tests/ops/test_grpo_kernel.py::test_fp16_grad_survives_loss_scale on the device"),
)


class CheckError(UserError):
    """Nothing can be run as asked."""


def budget(step: Step, smoke: bool) -> int:
    return step.smoke_budget_s if smoke else step.budget_s


def missing_modules(step: Step) -> list[str]:
    return [m for m in step.needs if importlib.util.find_spec(m) is None]


def pick_steps(spec: str | None) -> list[Step]:
    if not spec:
        return list(STEPS)
    chosen = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        found = [s for s in STEPS if part in (str(s.number), s.key)]
        if not found:
            raise CheckError(f"--steps: unknown step {part!r} (choose from "
                             f"{', '.join(f'{s.number}/{s.key}' for s in STEPS)})")
        chosen += [s for s in found if s not in chosen]
    return sorted(chosen, key=lambda s: s.number)


def plan_lines(steps: list[Step], smoke: bool) -> list[str]:
    total = sum(budget(s, smoke) for s in steps)
    mode = "CPU rehearsal (--smoke)" if smoke else "one CUDA GPU"
    lines = [f"gpu_check plan, {mode}: {len(steps)} steps, budgets add up to {total} s ({total / 60:.1f} min); "
             f"each budget is a hard timeout (then SIGINT, SIGKILL {GRACE_S} s later)"]
    for s in steps:
        missing = missing_modules(s)
        state = f"would be skipped: {', '.join(missing)} not installed" if missing else "packages found"
        if s.optional:
            state += "; optional: " + ", ".join(
                f"{m} {'found' if importlib.util.find_spec(m) else 'not installed'}" for m in s.optional)
        lines.append(f"  {s.number}. {s.key:5s} {budget(s, smoke):4d} s  {s.title}: {s.what} [{state}]")
    return lines


# ---- set-up --------------------------------------------------------------------------------------------------------


def prepare_out(out: Path, overwrite: bool) -> None:
    """An empty or new folder; a previous check's folder only with --overwrite (its outputs are removed)."""
    if out.exists() and not out.is_dir():
        raise CheckError(f"--out {out} is a file")
    if out.is_dir() and any(out.iterdir()):
        if not (out / "report.md").is_file():
            raise CheckError(f"--out {out} is not empty and holds no gpu_check report: give a new folder")
        if not overwrite:
            raise CheckError(f"--out {out} holds an earlier report: pass --overwrite to replace it, or give a new "
                             "folder")
        for name in [*OUTPUTS, *(p.name for p in out.glob("bench_kernels_*.csv"))]:
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    (out / "work").mkdir(parents=True, exist_ok=True)


def install_wheels(folder: Path, site: Path) -> list[str]:
    """pip-install every wheel of ``folder`` (no index, no dependencies) into ``site``; returns notes to print."""
    wheels = sorted(folder.glob("*.whl")) if folder.is_dir() else []
    if not wheels:
        raise CheckError(f"--wheels {folder}: no .whl files there")
    notes = []
    for w in wheels:
        name, version = w.name.split("-")[:2]
        try:
            have = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if have != version:
            notes.append(f"note: {w.name} shadows the installed {name} {have}")
    shutil.rmtree(site, ignore_errors=True)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
           "--no-cache-dir", "--disable-pip-version-check", "--target", str(site), *map(str, wheels)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
        raise CheckError(f"--wheels {folder}: pip install failed: {last}")
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    return [f"installed {len(wheels)} wheels into {site}", *notes]


def step_env(out: Path, smoke: bool, site: Path | None) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", TRITON_CACHE_DIR=str(out / "work" / "triton_cache"))
    paths = [str(site)] if site else []
    env["PYTHONPATH"] = os.pathsep.join([*paths, str(ROOT), str(BENCH), *filter(None, [env.get("PYTHONPATH")])])
    if smoke:  # CPU only, kernels interpreted
        env.update(TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    else:  # compiled kernels even where the caller's shell asked for the interpreter
        env["TRITON_INTERPRET"] = "0"
    return env


def header_lines(smoke: bool, argv: list[str]) -> list[str]:
    from common import device_name, git_sha

    versions = []
    for name in PACKAGES:
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{name} not installed")
    import torch

    device = "CPU (smoke: CUDA hidden, Triton interpreted)" if smoke else device_name()
    if not smoke:
        props = torch.cuda.get_device_properties(0)
        device += (f", {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs, "
                   f"CUDA {torch.version.cuda}")
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=20).stdout.split()
        except (OSError, subprocess.TimeoutExpired):
            driver = []
        device += f", driver {driver[0]}" if driver else ""
    return [f"- Device: {device}", f"- git {git_sha()}, Python {sys.version.split()[0]}",
            f"- Packages: {', '.join(versions)}", f"- Command: `python benchmarks/gpu_check.py {' '.join(argv)}`"]


# ---- running the steps ---------------------------------------------------------------------------------------------


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


class Report:
    """report.md and steps.csv, rewritten (atomically) whenever a step starts or ends."""

    def __init__(self, out: Path, steps: list[Step], smoke: bool, header: list[str]):
        self.out, self.steps, self.smoke, self.header = out, steps, smoke, header
        self.started = _now()
        self.rows = {s.key: dict(status="pending", seconds=None, summary="", body="") for s in steps}

    def update(self, step: Step, **fields) -> None:
        self.rows[step.key].update(fields)
        self.write()

    def write(self) -> None:
        mode = "smoke: a CPU rehearsal of every step at tiny sizes" if self.smoke else "one CUDA GPU"
        lines = ["# semgrpo GPU check", "", f"Mode: {mode}. Started {self.started}, updated {_now()}.",
                 *self.header, "", "| step | status | seconds / budget | summary |", "| --- | --- | --- | --- |"]
        for s in self.steps:
            r = self.rows[s.key]
            secs = "" if r["seconds"] is None else f"{r['seconds']:.0f}"
            lines.append(f"| {s.number}. {s.title} | {r['status']} | {secs} / {budget(s, self.smoke)} "
                         f"| {r['summary'].replace('|', '/')} |")
        for s in self.steps:
            r = self.rows[s.key]
            lines += ["", f"## {s.number}. {s.title}", "", f"{s.what}. Status: **{r['status']}**.", ""]
            if r["body"]:
                lines.append(r["body"])
        _atomic_write(self.out / "report.md", "\n".join(lines) + "\n")
        with open(self.out / "steps.csv.tmp", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "key", "status", "seconds", "budget_s", "summary"])
            for s in self.steps:
                r = self.rows[s.key]
                w.writerow([s.number, s.key, r["status"], "" if r["seconds"] is None else f"{r['seconds']:.1f}",
                            budget(s, self.smoke), r["summary"]])
        os.replace(self.out / "steps.csv.tmp", self.out / "steps.csv")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT to the step's process group, SIGKILL to it GRACE_S later if it is still there."""
    for sig, wait in ((signal.SIGINT, GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_step(step: Step, cmd: list[str], env: dict, out: Path, limit: int) -> dict:
    """Run one step's process under its budget; its result, with status timeout/interrupted when it was stopped."""
    import json

    log_path = out / "work" / f"{step.number}_{step.key}.log"
    result_path = out / "work" / f"{step.key}.json"
    start, stopped = time.monotonic(), None
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            stopped = "timeout"
            _stop(proc)
        except KeyboardInterrupt:
            stopped = "interrupted"
            _stop(proc)
    seconds = time.monotonic() - start
    res = json.loads(result_path.read_text()) if result_path.is_file() else None
    if stopped == "timeout":
        partial = f"; what it had: {res['summary']}" if res and res.get("summary") else ""
        res = dict(status="timeout", summary=f"stopped at its {limit} s budget{partial}",
                   body=(res or {}).get("body", ""))
    elif stopped:
        res = dict(status="interrupted", summary="interrupted (Ctrl-C)", body=(res or {}).get("body", ""))
    elif res is None:
        res = dict(status="fail", summary=f"its process exited with status {proc.returncode} and no result", body="")
    if res["status"] not in STATUS_OK:
        tail = log_path.read_text(errors="replace").splitlines()[-40:]
        res["body"] += (f"\nEnd of the step's log (`work/{log_path.name}`):\n\n```\n" + "\n".join(tail) + "\n```\n")
    return dict(res, seconds=seconds, stopped=stopped)


def run(args, steps: list[Step], argv: list[str]) -> int:
    if not args.smoke:
        import torch

        if not torch.cuda.is_available():
            raise CheckError("no CUDA device here (torch.cuda.is_available() is False), nothing was run: "
                             "--dry-run lists the steps, --smoke rehearses them on CPU")
    out = args.out.resolve()
    prepare_out(out, args.overwrite)
    site = None
    if args.wheels:
        site = out / "work" / "site"
        for line in install_wheels(args.wheels, site):
            print(line, flush=True)
    env = step_env(out, args.smoke, site)
    report = Report(out, steps, args.smoke, header_lines(args.smoke, argv))
    report.write()
    for line in plan_lines(steps, args.smoke):
        print(line, flush=True)
    statuses = []
    for step in steps:
        missing = missing_modules(step)
        if missing:
            res = dict(status="skipped", seconds=0.0, stopped=None, body="",
                       summary=f"{', '.join(missing)} not installed (pip install it, or pass --wheels DIR)")
        else:
            report.update(step, status=f"running since {_now()}")
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", step.key, "--out", str(out)]
            cmd += (["--smoke"] if args.smoke else []) + (["--demo-cache", args.demo_cache] if args.demo_cache else [])
            res = run_step(step, cmd, env, out, budget(step, args.smoke))
        report.update(step, **{k: res[k] for k in ("status", "seconds", "summary", "body")})
        print(f"step {step.number} {step.key}: {res['status']} in {res['seconds']:.0f} s "
              f"(budget {budget(step, args.smoke)} s): {res['summary']}", flush=True)
        statuses.append(res["status"])
        if res["stopped"] == "interrupted":
            print(f"interrupted; the report so far is in {out / 'report.md'}")
            return 130
    counts = ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses))
    print(f"gpu_check: {counts}; report: {out / 'report.md'}")
    return 0 if all(s in STATUS_OK for s in statuses) else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/gpu_check"), help="report folder (default runs/gpu_check)")
    p.add_argument("--overwrite", action="store_true", help="replace the report of an earlier check in --out")
    p.add_argument("--wheels", type=Path, help="folder of .whl files to install first (see the README)")
    p.add_argument("--demo-cache", help="built demo assets (a copy of ~/.cache/semgrpo/demo); default $SEMGRPO_CACHE "
                                        "or ~/.cache/semgrpo/demo, built there when absent (needs babel)")
    p.add_argument("--steps", help="a subset, e.g. 1,4 or ops,fp16 (default: all four)")
    p.add_argument("--dry-run", action="store_true", help="print the steps and their budgets; run nothing")
    p.add_argument("--smoke", action="store_true", help="rehearse every step on CPU: tiny sizes, Triton interpreter, "
                                                        "a 2-step fp32 demo")
    p.add_argument("--child", choices=[s.key for s in STEPS], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        from gpu.steps import Ctx, run_child

        return run_child(args.child, Ctx(out=args.out, smoke=args.smoke, demo_cache=args.demo_cache))
    try:
        steps = pick_steps(args.steps)
        if args.dry_run:
            print("\n".join(plan_lines(steps, args.smoke)))
            return 0
        return run(args, steps, argv)
    except UserError as exc:
        print(f"gpu_check.py: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
