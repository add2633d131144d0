"""Run by test_loss_type_runs.py as `python tests/_loss_type_runs.py OUT_DIR`: short demo runs, one per loss setting of
LOSS_RUNS, one after another in this one process (one start-up instead of six). Each is `train_grpo` on the demo's
base policy for 2 steps; OUT_DIR/<name>/ is its run folder, and OUT_DIR/runs.json says per run the logged metrics
and how far its LoRA moved (the largest |lora_B|: LoRA starts it at 0, so > 0 means the run trained)."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's semgrpo, not an installed one

# Small and fast: GRPO from the demo's base policy, short completions, a tiny LoRA, a fixed tau.
QUICK = ["sft.before_grpo=false", "grpo.max_steps=2", "grpo.max_completion_length=8", "model.lora.r=4",
         "model.lora.alpha=8", "reward.tau=0.2", "run.sample_every=0", "run.report_to=[none]",
         "tax_meter.every_steps=0", "run.save_every=2"]

# The settings the trainer gained beyond grpo/bnpo/dr_grpo/dapo (issue 26's "done when").
LOSS_RUNS = {
    "cispo": ["grpo.loss_type=cispo", "grpo.eps_high=5.0"],
    "sapo": ["grpo.loss_type=sapo"],
    "luspo_sequence": ["grpo.loss_type=luspo", "grpo.importance_sampling_level=sequence"],
    "vespo": ["grpo.loss_type=vespo"],
    "gspo": ["grpo.loss_type=dapo", "grpo.importance_sampling_level=sequence"],
    # room for some completions to end: the base policy's run to 8 tokens without an eos, all masked, no update
    "grpo_delta_masked_mu2": ["grpo.loss_type=grpo", "grpo.delta=1.5", "grpo.mask_truncated_completions=true",
                              "grpo.num_iterations=2", "grpo.max_completion_length=24"],
}


def main() -> None:
    import torch
    from safetensors.torch import load_file

    from semgrpo.config import load_config
    from semgrpo.train import train_grpo

    out = Path(sys.argv[1])
    only = sys.argv[2] if len(sys.argv) > 2 else ""  # debugging: the runs whose name holds this text
    results = {}
    for name, overrides in LOSS_RUNS.items():
        if only not in name:
            continue
        run_dir = out / name
        cfg = load_config(["configs/demo.yaml"], [f"output_dir={run_dir}", *QUICK, *overrides])
        summary = train_grpo(cfg)
        adapter = load_file(str(run_dir / "checkpoints" / "step-00000002" / "adapter" / "adapter_model.safetensors"))
        lora_b = [t for k, t in adapter.items() if "lora_B" in k]
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        results[name] = {"summary": summary, "metrics": rows, "lora_b_max": max(float(t.abs().max()) for t in lora_b),
                         "config": {k: getattr(cfg.grpo, k) for k in ("loss_type", "importance_sampling_level",
                                                                      "delta", "mask_truncated_completions",
                                                                      "num_iterations", "use_bias_correction_kl")}}
        torch.distributed.barrier()
    (out / "runs.json").write_text(json.dumps(results, default=str))


if __name__ == "__main__":
    from semgrpo.errors import run_entry_point

    sys.exit(run_entry_point("_loss_type_runs.py", main))  # leaves the process group on every way out
