"""The four steps of gpu_check.py, each run in a process of its own (``gpu_check.py --child KEY``).

A step writes ``<out>/work/<key>.json``: ``status`` (pass, fail, skipped, interrupted), a one-line ``summary``
and a Markdown ``body`` for the report. On SIGINT (gpu_check's timeout, or Ctrl-C) a step stops what it runs
and still writes what it has: the benchmarks' CSVs are written row by row, pytest writes its JUnit XML on
interruption, and the trainer stops at a step boundary.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from gpu import tables

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"

FUSED_LINEAR_SHAPE = "16x1024x2560x151936"  # B x T x H x V: N = 16384 tokens
LOGITS_SHAPE = "16384x151936"  # N x V
DEMO_STEPS = 50
# what the demo's probe must see: precision, and where semgrpo's collectives ran
EXPECT = {False: dict(dtype="bfloat16", bf16=True, device="cuda", backend="nccl"),
          True: dict(dtype="float32", bf16=False, device="cpu", backend="gloo")}


@dataclass(frozen=True)
class Ctx:
    out: Path
    smoke: bool
    demo_cache: str | None = None

    @property
    def work(self) -> Path:
        return self.out / "work"


def result(status: str, summary: str, body: str = "") -> dict:
    return dict(status=status, summary=summary, body=body)


def _wait(proc: subprocess.Popen) -> tuple[int, bool]:
    """(return code, interrupted): waits for ``proc``; on SIGINT gives it 6 s to finish writing, then kills it."""
    try:
        return proc.wait(), False
    except KeyboardInterrupt:
        try:
            return proc.wait(timeout=6), True
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(), True


# ---- steps 1 and 4: pytest ---------------------------------------------------------------------------------------


def run_pytest(ctx: Ctx, key: str, targets: list[str], extra: list[str], *, parallel: bool) -> dict:
    """Run pytest on ``targets`` with the CUDA-allocation plugin; the cases from its JUnit XML (or, when it was
    killed before writing it, from its verbose log)."""
    junit, log = ctx.work / f"{key}_junit.xml", ctx.work / f"{key}_pytest.log"
    cmd = [sys.executable, "-m", "pytest", *targets, *extra, "-p", "gpu.pytest_plugin", "-p", "no:cacheprovider",
           "-v", "-rfEs", "--color=no", "-o", "faulthandler_timeout=60", "--junitxml", str(junit)]
    workers = min(8, max(2, (os.cpu_count() or 2) // 2))
    if parallel and _has_module("xdist"):  # compiling the kernels is most of the time: spread it over cores
        cmd += ["-n", str(workers)]
    print("$", " ".join(cmd), flush=True)
    with open(log, "w") as out:
        rc, interrupted = _wait(subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT))
    text = log.read_text(errors="replace")
    print(text[-6000:], flush=True)
    cases = tables.junit_cases(junit) if junit.is_file() else tables.log_cases(text)
    return dict(rc=rc, interrupted=interrupted, cases=cases, log=text)


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def step_ops(ctx: Ctx) -> dict:
    targets = ["tests/ops/test_logprobs.py"] if ctx.smoke else ["tests/ops"]
    run = run_pytest(ctx, "ops", targets, [], parallel=not ctx.smoke)
    cases = run["cases"]
    tables.write_cases_csv(ctx.out / "ops_tests.csv", cases)
    counts = tables.case_counts(cases)
    cache = Path(os.environ.get("TRITON_CACHE_DIR", ctx.work / "triton_cache"))
    kernels = tables.compiled_kernels(ROOT / "semgrpo" / "ops", cache)
    compiled = sum(1 for n in kernels.values() if n)
    summary = (f"{counts['passed']} passed, {counts['failed']} failed, {counts['error']} errors, "
               f"{counts['skipped']} skipped; {counts['on_cuda']} ran on CUDA; kernels compiled "
               f"{compiled}/{len(kernels)} ({sum(kernels.values())} variants)")
    ok = counts["failed"] == counts["error"] == 0 and counts["passed"] > 0 and run["rc"] == 0
    if not ctx.smoke:
        ok = ok and counts["on_cuda"] > 0 and compiled == len(kernels)
    body = tables.cases_markdown(cases, run["log"]) + "\n" + tables.kernels_markdown(kernels, ctx.smoke)
    return result("interrupted" if run["interrupted"] else "pass" if ok else "fail", summary, body)


def step_fp16(ctx: Ctx) -> dict:
    device = "cpu" if ctx.smoke else "cuda"
    run = run_pytest(ctx, "fp16", ["tests/ops/test_grpo_kernel.py::test_fp16_grad_survives_loss_scale"],
                     ["-k", device], parallel=False)
    cases = run["cases"]
    tables.write_cases_csv(ctx.out / "fp16_underflow.csv", cases)
    counts = tables.case_counts(cases)
    ok = run["rc"] == 0 and counts["passed"] == len(cases) > 0
    if not ctx.smoke:
        ok = ok and counts["on_cuda"] == len(cases)
    summary = (f"{counts['passed']}/{len(cases)} cases passed on {device} (fp16 logits, loss scale 2^15, "
               f"gradients below fp16's subnormal floor before scaling)")
    body = tables.cases_markdown(cases, run["log"], list_all=True)
    return result("interrupted" if run["interrupted"] else "pass" if ok else "fail", summary, body)


# ---- step 2: benchmarks ------------------------------------------------------------------------------------------


def step_bench(ctx: Ctx) -> dict:
    sys.path.insert(0, str(BENCH))
    import bench_kernels

    out = str(ctx.out)
    fused = ["--fused-linear", "--out", out, "--fl-methods", "ours,trl_chunked,liger,eager", "--fl-matmul-peak"]
    logits = ["--ops", "grpo_loss", "--providers", "eager,ours,ours_inplace,liger", "--out", out]
    if ctx.smoke:  # Triton interpreted on CPU: ours takes the kernel path as on CUDA
        os.environ["SEMGRPO_OPS"] = "triton"
        fused += ["--smoke", "--fl-rep", "1"]
        logits += ["--smoke", "--shapes", "8x256"]
    else:
        fused += ["--fl-shape", FUSED_LINEAR_SHAPE, "--fl-dtype", "bfloat16", "--fl-rep", "10"]
        logits += ["--shapes", LOGITS_SHAPE, "--rep", "10"]
    interrupted, errors = False, []
    for args in (fused, logits):
        try:
            bench_kernels.main(args)
        except KeyboardInterrupt:
            interrupted = True
            break
        except Exception as exc:  # keep the other benchmark and report this one
            errors.append(f"`bench_kernels.py {' '.join(args[:2])}`: {type(exc).__name__}: {exc}")
            print(f"FAILED {errors[-1]}", flush=True)
        finally:  # the second benchmark needs most of the GPU's memory again
            import gc

            import torch

            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    peers = {"liger": _has_module("liger_kernel"), "trl_chunked": _has_module("trl")}
    fused_rows = tables.read_rows(ctx.out, "bench_kernels_fused_linear_*.csv")
    logit_rows = tables.read_rows(ctx.out, "bench_kernels_*.csv", exclude="fused_linear")
    body = tables.fused_linear_markdown(fused_rows, peers) + "\n" + tables.logits_markdown(logit_rows, peers)
    if errors:
        body += "\n" + "\n".join(f"- failed: {e}" for e in errors) + "\n"
    ours = tables.ours_figures(fused_rows, logit_rows)
    ok = not errors and all(v is not None for v in ours.values())
    summary = "; ".join(f"{k} {'missing' if v is None else v}" for k, v in ours.items())
    return result("interrupted" if interrupted else "pass" if ok else "fail", summary, body)


# ---- step 3: the demo --------------------------------------------------------------------------------------------


def demo_overrides(ctx: Ctx) -> list[str]:
    run_dir = ctx.work / "demo_run"
    if ctx.smoke:  # 2 steps on CPU in fp32 (CPU bf16 is slow and imprecise), no cold start, a fixed tau
        return [f"output_dir={run_dir}", "model.dtype=fp32", "grpo.max_steps=2", "sft.before_grpo=false",
                "reward.tau=0.3", "tax_meter.every_steps=0"]
    # the demo as configured, in bf16, with a one-epoch cold start and a checkpoint every 25 steps
    return [f"output_dir={run_dir}", "model.dtype=bf16", f"grpo.max_steps={DEMO_STEPS}", "sft.epochs=1",
            "run.save_every=25"]


def step_demo(ctx: Ctx) -> dict:
    from semgrpo.demo.assets import build_demo, default_cache_dir

    cache = Path(ctx.demo_cache) if ctx.demo_cache else default_cache_dir()
    try:
        build_demo(cache, log=lambda msg: print(msg, flush=True))  # returns at once when already built
    except ModuleNotFoundError as exc:
        return result("skipped", f"the demo assets are not built in {cache} and {exc.name} is not installed to "
                                 "build them: pass --demo-cache with a built copy, or add its wheel")
    env = dict(os.environ, SEMGRPO_FORCE_COLLECTIVES="1", SEMGRPO_CACHE=str(cache))
    record = ctx.work / "demo_probe.json"
    steps = 2 if ctx.smoke else DEMO_STEPS
    cmd = [sys.executable, str(BENCH / "gpu" / "probe.py"), str(record), "bin/train_grpo.py",
           "--config", "configs/demo.yaml", *demo_overrides(ctx)]
    print("$ SEMGRPO_FORCE_COLLECTIVES=1", " ".join(cmd), flush=True)
    start = time.perf_counter()
    rc, interrupted = _wait(subprocess.Popen(cmd, cwd=ROOT, env=env))
    wall = time.perf_counter() - start
    probe = json.loads(record.read_text()) if record.is_file() else {}
    run_dir = ctx.work / "demo_run"
    metrics = _jsonl(run_dir / "metrics.jsonl")
    summary_file = run_dir / "summary.json"
    run_summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    tables.write_metrics_csv(ctx.out / "demo_metrics.csv", metrics)
    checks = demo_checks(rc, steps, metrics, probe, EXPECT[ctx.smoke])
    ok = all(c[3] for c in checks)
    grpo_steps = [m for m in metrics if "reward/mean" in m]
    step_s = sorted(m["perf/step_seconds"] for m in grpo_steps if "perf/step_seconds" in m)
    p50 = step_s[len(step_s) // 2] if step_s else float("nan")
    summary = (f"{len(grpo_steps)}/{steps} GRPO steps in {wall:.0f} s (p50 {p50:.2f} s/step), "
               f"{sum(c[3] for c in checks)}/{len(checks)} checks met")
    body = tables.demo_markdown(checks, probe, run_summary, wall, p50, " ".join(demo_overrides(ctx)))
    return result("interrupted" if interrupted else "pass" if ok else "fail", summary, body)


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def demo_checks(rc: int, steps: int, metrics: list[dict], probe: dict, want: dict) -> list[tuple]:
    """(check, expected, seen, ok) rows: the run ended well, trained in the expected precision, and semgrpo's
    collectives ran on the expected device through the expected backend."""
    grpo = [m for m in metrics if "reward/mean" in m]
    finite = all(math.isfinite(m.get("loss", float("nan"))) for m in grpo)
    train = [e for e in probe.get("engines", []) if e["training"]]
    dtypes: dict = {}
    for e in train:
        for d, n in e["param_dtypes"].items():
            dtypes[d] = dtypes.get(d, 0) + n
    gathered = [c for c in probe.get("semgrpo_collectives", []) if c["op"] == "gather_cat" and c["reached_torch"]]
    on_device = sum(c["calls"] for c in gathered if c["device"] == want["device"] and c["backend"] == want["backend"])
    seen_on = sorted({f"{c['device']}/{c['backend']}" for c in gathered})
    torch_on = sum(c["calls"] for c in probe.get("torch_collectives", [])
                   if c["device"] == want["device"] and c["backend"] == want["backend"])
    return [
        ("exit status", "0", str(rc), rc == 0),
        ("GRPO steps logged, loss finite", f"{steps}", f"{len(grpo)}{'' if finite else ' (non-finite loss)'}",
         len(grpo) == steps and finite),
        ("training engines in bf16" if want["bf16"] else "training engines in fp32",
         f"bf16={want['bf16']}", ", ".join(f"bf16={e['bf16']} fp16={e['fp16']}" for e in train) or "none",
         bool(train) and all(e["bf16"] == want["bf16"] and not e["fp16"] for e in train)),
        # PEFT may keep LoRA adapters in fp32 beside bf16 base weights: the base weights' dtype must be there
        ("parameter dtypes", f"{want['dtype']} among them" if want["bf16"] else want["dtype"],
         ", ".join(f"{d} x{n}" for d, n in sorted(dtypes.items())) or "none",
         want["dtype"] in dtypes if want["bf16"] else list(dtypes) == [want["dtype"]]),
        ("gather_cat (advantages' global batch) ran", f"{want['device']} tensors via {want['backend']}",
         f"{on_device} calls; {', '.join(seen_on) or 'none'}", on_device > 0),
        (f"torch.distributed collectives on {want['device']}", f"via {want['backend']}", f"{torch_on} calls",
         torch_on > 0),
    ]


STEP_FUNCTIONS = {"ops": step_ops, "bench": step_bench, "demo": step_demo, "fp16": step_fp16}


def run_child(key: str, ctx: Ctx) -> int:
    """Run step ``key`` and write its JSON; exit status 0 (its verdict is in the JSON)."""
    ctx.work.mkdir(parents=True, exist_ok=True)
    try:
        res = STEP_FUNCTIONS[key](ctx)
    except KeyboardInterrupt:
        res = result("interrupted", "interrupted before it had results")
    except Exception as exc:  # a bug or a broken install: the report says which, the traceback is in the log
        import traceback

        traceback.print_exc()
        res = result("fail", f"{type(exc).__name__}: {str(exc)[:300]}")
    (ctx.work / f"{key}.json").write_text(json.dumps(res, indent=1))
    return 0
