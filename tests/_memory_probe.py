"""Run under `deepspeed --num_gpus N tests/_memory_probe.py OUT.json key=value...` by test_full_scale_memory.py.

Builds the real GRPO run (demo config + overrides), runs one grpo_step, and writes this rank's peak resident
set size (kernel's ru_maxrss, in bytes) with a breakdown taken right after loading, to OUT.json.rank<r>.
"""
import json
import resource
import sys
from pathlib import Path


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return -1


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    out_path, overrides = args[0], args[1:]
    from semgrpo import dist
    from semgrpo.config import load_config
    from semgrpo.session import init_distributed
    from semgrpo.train import build_grpo_run, grpo_step

    cfg = load_config(["configs/demo.yaml"], [f"output_dir={Path(out_path).parent / 'probe_run'}", *overrides])
    init_distributed()
    import time
    t0 = time.time()
    run, order, _ = build_grpo_run(cfg)
    t1 = time.time()
    loaded_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    ids = order.indices(0, rank=dist.rank(), world_size=dist.world_size())
    metrics, _ = grpo_step(run, lambda: [run.setup.train[i] for i in ids])
    report = {"load_s": t1 - t0, "step_s": time.time() - t1, "rank": dist.rank(), "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
              "peak_rss_after_load": loaded_peak, "rss_anon_now": _status_bytes("RssAnon"),
              "rss_file_now": _status_bytes("RssFile"), "loss": metrics["loss"], **{k: v for k, v in metrics.items() if k.startswith("perf/")}}
    Path(f"{out_path}.rank{dist.rank()}").write_text(json.dumps(report))


if __name__ == "__main__":
    from semgrpo.errors import run_entry_point

    sys.exit(run_entry_point("_memory_probe.py", main))  # leaves the process group on every way out
