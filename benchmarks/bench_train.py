"""End-to-end GRPO step: semgrpo's trainer vs TRL's GRPOTrainer on the same work, per phase.

Each run is a subprocess of `benchmarks/train_runners.py` (one trainer, `--warmup` + `--steps` steps), so
that peak RSS is that run's own; runs alternate between the two trainers (ABBA order over `--reps`
repetitions) so that drift in the machine's load hits both alike. The work (model, tokenizer, prompts,
reward, batch, sampling, LoRA, optimizer settings) is described in train_runners.py.

    python benchmarks/bench_train.py [--reps 3] [--steps 12] [--warmup 2] [--csv PATH]
    python benchmarks/bench_train.py --size gpu --csv benchmarks/results/bench_train_<gpu>.csv   # on a GPU
    python benchmarks/bench_train.py --ds-base ds_configs/zero2.json --csv ...   # other DeepSpeed configs

Writes CSV rows `op,provider,mode,metric,unit,shape,p50,p20,p80,device,git_sha,timestamp` (default
`benchmarks/results/bench_train_cpu.csv`): per provider the seconds per step of each phase, the step,
samples/s, completion tokens/s, mean completion length, peak RSS and (on a GPU) peak GPU memory, with
quantiles over all measured steps of all repetitions (memory: over runs); then provider `semgrpo/trl`
rows with the ratio of the p50s. Prints the rows and one summary line.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import CSV_COLUMNS, CsvWriter, quantiles  # noqa: E402

PROVIDERS = ("semgrpo", "trl")
GPU_COMPLETION_TOKENS = 128
# (metric, unit, per-step value from one record); phases first, in the order of a step.
STEP_METRICS = (
    ("generation_seconds", "s/step", lambda r: r["generation"]),
    ("reward_seconds", "s/step", lambda r: r["reward"]),
    ("logprobs_seconds", "s/step", lambda r: r["logprobs"]),
    ("policy_fwd_bwd_seconds", "s/step", lambda r: r["policy"]),
    ("optimizer_seconds", "s/step", lambda r: r["optimizer"]),
    ("other_seconds", "s/step",
     lambda r: r["step"] - sum(r[k] for k in ("generation", "reward", "logprobs", "policy", "optimizer"))),
    ("step_seconds", "s/step", lambda r: r["step"]),
    ("samples_per_second", "samples/s", lambda r: r["samples"] / r["step"]),
    ("completion_tokens_per_second", "tokens/s", lambda r: r["tokens"] / r["step"]),
    ("mean_completion_length", "tokens", lambda r: r["tokens"] / r["samples"]),
)
def derived_ds_config(base: Path, sets: list[str], out: Path) -> Path:
    """Write `base` (a DeepSpeed JSON) with dotted `key=value` changes (values parsed as YAML) to `out`.

    Raises:
        ValueError: an item is not key=value, or walks into a non-mapping.
    """
    import yaml

    ds = json.loads(Path(base).read_text(encoding="utf-8"))
    for item in sets:
        if "=" not in item:
            raise ValueError(f"--ds-set {item!r} is not of the form dotted.key=value")
        key, raw = item.split("=", 1)
        node, parts = ds, key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--ds-set {item!r}: {part!r} is not a section of {base}")
        node[parts[-1]] = yaml.safe_load(raw)
    out.write_text(json.dumps(ds, indent=2), encoding="utf-8")
    return out


RUNNER_ENV_DROP = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def run_once(provider: str, *, steps: int, warmup: int, threads: int, seed: int, workdir: Path,
             overrides: list[str] = (), timeout: float = 1800) -> dict:
    """One run of `provider` in a fresh subprocess; returns its JSON result.

    Raises:
        ValueError: unknown provider.
        RuntimeError: the subprocess failed (its output tail is in the message).
    """
    if provider not in PROVIDERS:
        raise ValueError(f"provider must be one of {PROVIDERS}, got {provider!r}")
    out = workdir / f"{provider}_{time.monotonic_ns()}.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "train_runners.py"), "--provider", provider,
           "--steps", str(steps), "--warmup", str(warmup), "--threads", str(threads), "--seed", str(seed),
           "--out", str(out)]
    for item in overrides:
        cmd += ["--override", item]
    env = {k: v for k, v in os.environ.items() if k not in RUNNER_ENV_DROP}
    env.setdefault("HF_HUB_OFFLINE", "1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not out.is_file():
        tail = (proc.stdout + proc.stderr)[-4000:]
        raise RuntimeError(f"{provider} run failed (exit {proc.returncode}):\n{tail}")
    return json.loads(out.read_text(encoding="utf-8"))


def aggregate(results: list[dict], writer: CsvWriter, *, mode: str) -> dict[str, dict[str, float]]:
    """Add per-provider quantile rows and `semgrpo/trl` ratio rows to `writer`; return the p50s.

    Args:
        results: run results as returned by `run_once` (any number per provider, at least one each).
        writer: CSV writer the rows are added to.
        mode: the CSV `mode` column (e.g. ``train``).

    Returns:
        provider -> metric -> p50 (and ``"ratio"`` -> metric -> ours / TRL).
    """
    p50 = {}
    memory = [("peak_rss", "peak_rss_mib")]  # (metric, result key); GPU memory only when every run has it
    if all(r.get("peak_gpu_mib") is not None for r in results):
        memory.append(("peak_gpu_memory", "peak_gpu_mib"))
    for provider in PROVIDERS:
        runs = [r for r in results if r["provider"] == provider]
        if not runs or not all(r["records"] for r in runs):
            raise ValueError(f"no measured steps for provider {provider!r}")
        records = [rec for r in runs for rec in r["records"]]
        shape = runs[0]["shape"]
        p50[provider] = {}
        for metric, unit, fn in STEP_METRICS:
            q = quantiles([float(fn(rec)) for rec in records])
            writer.add("grpo_step", provider, mode, metric, unit, shape, *q)
            p50[provider][metric] = q[0]
        for metric, key in memory:
            q = quantiles([float(r[key]) for r in runs])
            writer.add("grpo_step", provider, mode, metric, "MiB", shape, *q)
            p50[provider][metric] = q[0]
    p50["ratio"] = {}
    for metric in [m for m, _, _ in STEP_METRICS] + [m for m, _ in memory]:
        a, b = p50["semgrpo"][metric], p50["trl"][metric]
        ratio = a / b if b else float("nan")
        writer.add("grpo_step", "semgrpo/trl", mode, metric, "x", shape, ratio)
        p50["ratio"][metric] = ratio
    return p50


def summary_line(p50: dict, *, device: str) -> str:
    ours, trl, ratio = p50["semgrpo"], p50["trl"], p50["ratio"]
    phases = ", ".join(f"{m.removesuffix('_seconds')} {ours[m]:.3f}/{trl[m]:.3f}s" for m, unit, _ in STEP_METRICS
                       if unit == "s/step")
    return (f"bench_train {device}: semgrpo {ours['samples_per_second']:.1f} samples/s vs TRL "
            f"{trl['samples_per_second']:.1f} (ours/TRL {ratio['samples_per_second']:.2f}x); "
            f"tokens/s {ours['completion_tokens_per_second']:.0f} vs {trl['completion_tokens_per_second']:.0f}; "
            f"peak RSS {ours['peak_rss']:.0f} vs {trl['peak_rss']:.0f} MiB; "
            + (f"peak GPU memory {ours['peak_gpu_memory']:.0f} vs {trl['peak_gpu_memory']:.0f} MiB; "
               if "peak_gpu_memory" in ours else "")
            + f"per step ours/TRL: {phases}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3, help="runs per trainer, alternating ABBA")
    ap.add_argument("--steps", type=int, default=12, help="measured steps per run")
    ap.add_argument("--warmup", type=int, default=2, help="steps per run before measuring")
    ap.add_argument("--threads", type=int, default=2, help="torch threads in every run (same for both)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", choices=("cpu", "gpu"), default="cpu",
                    help="cpu: the demo's tiny policy in fp32; gpu: a random Qwen3-0.6B-shaped policy in bf16 "
                         f"with {GPU_COMPLETION_TOKENS}-token completions (needs a GPU to finish in minutes)")
    ap.add_argument("--override", action="append", default=[],
                    help="config key=value for both runs (grpo.*, run.deepspeed; TRL takes the micro batch "
                         "and accumulation from the DeepSpeed JSON)")
    ap.add_argument("--ds-base", type=Path, default=None,
                    help="DeepSpeed JSON for our run; TRL mirrors its micro batch and accumulation "
                         "(default: the demo's ds_configs/zero3.json)")
    ap.add_argument("--ds-set", action="append", default=[],
                    help="dotted key=value changed in --ds-base (e.g. train_micro_batch_size_per_gpu=16)")
    ap.add_argument("--csv", type=Path, default=ROOT / "benchmarks" / "results" / "bench_train_cpu.csv")
    a = ap.parse_args(argv)
    for name in ("reps", "steps", "threads"):
        if getattr(a, name) < 1:
            ap.error(f"--{name} must be >= 1, got {getattr(a, name)}")
    if a.warmup < 0:
        ap.error(f"--warmup must be >= 0, got {a.warmup}")
    import torch

    writer = CsvWriter(a.csv)
    writer.device = (torch.cuda.get_device_name() if torch.cuda.is_available()
                     else f"cpu {platform.processor() or platform.machine()} {os.cpu_count()} cores")
    results, variant = [], list(a.override)
    with tempfile.TemporaryDirectory() as tmp:
        overrides = []
        if a.size == "gpu":
            from train_runners import build_random_qwen3_06b

            model_dir = build_random_qwen3_06b(Path(tmp) / "qwen3-0.6b-random", seed=a.seed)
            overrides += [f"model.path={model_dir}", "model.dtype=bf16",
                          f"grpo.max_completion_length={GPU_COMPLETION_TOKENS}"]
            variant.insert(0, "size=gpu")
        overrides += list(a.override)
        if a.ds_base or a.ds_set:
            base = a.ds_base or ROOT / "ds_configs" / "zero3.json"
            path = derived_ds_config(base, a.ds_set, Path(tmp) / "ds_variant.json")
            overrides.append(f"run.deepspeed={path}")
            variant += [f"ds={Path(base).name}", *a.ds_set]
        for rep in range(a.reps):
            order = PROVIDERS if rep % 2 == 0 else PROVIDERS[::-1]
            for provider in order:
                t0 = time.perf_counter()
                res = run_once(provider, steps=a.steps, warmup=a.warmup, threads=a.threads, seed=a.seed + rep,
                               workdir=Path(tmp), overrides=overrides)
                results.append(res)
                print(f"# rep {rep} {provider}: {len(res['records'])} steps, {time.perf_counter() - t0:.1f}s wall",
                      file=sys.stderr)
    p50 = aggregate(results, writer, mode="train" + ("+" + ";".join(variant) if variant else ""))
    writer.write()
    print(",".join(CSV_COLUMNS))
    for row in writer.rows:
        print(",".join(f'"{row[c]}"' if "," in str(row[c]) else str(row[c]) for c in CSV_COLUMNS))
    print(summary_line(p50, device=writer.device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
