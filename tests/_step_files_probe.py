"""Run as `python tests/_step_files_probe.py OUT.json key=value...` by test_step_files.py.

Builds the real GRPO run of the demo config (plus overrides) in one process, then runs one real `grpo_step`, drawing
its prompts from the run's real PromptStream as `train_grpo` does, under `_call_trace.follow`, and writes its report
(which files of semgrpo/ the step's calls went through) with the step's loss.
"""
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's semgrpo, whatever is installed
sys.path.insert(0, str(ROOT / "tests"))
LIBRARIES = ("ops/", "script/")  # semgrpo's own libraries: public APIs of their own (test_step_files.py says why)


def main() -> None:
    out_path, overrides = sys.argv[1], sys.argv[2:]
    import torch
    from _call_trace import follow

    from semgrpo.batching import PromptStream
    from semgrpo.config import load_config
    from semgrpo.session import init_distributed
    from semgrpo.train import build_grpo_run, grpo_step

    cfg = load_config(["configs/demo.yaml"], [f"output_dir={Path(out_path).parent / 'probe_run'}", *overrides])
    init_distributed()
    run, order, _ = build_grpo_run(cfg)
    run.rewards["semantic"].tau = 0.0
    torch.manual_seed(1234)
    prompts = PromptStream(order, run.setup.train, position=0)
    (metrics, _), report = follow(lambda: grpo_step(run, prompts.next_batch), root=grpo_step,
                                  package=ROOT / "semgrpo", libraries=LIBRARIES)
    assert math.isfinite(metrics["loss"]), metrics
    Path(out_path).write_text(json.dumps({**report, "loss": metrics["loss"],
                                          "rounds": metrics.get("sampling/rounds")}, indent=1))


if __name__ == "__main__":
    from semgrpo.errors import run_entry_point

    sys.exit(run_entry_point("_step_files_probe.py", main))  # leaves the process group on every way out
