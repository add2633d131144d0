"""Run under `deepspeed --num_gpus 2 tests/_full_param_probe.py OUT.json key=value...` by test_full_parameter.py.

A full-parameter GRPO run (no LoRA, grpo.beta > 0): snapshots the gathered policy weights and the reference's
and policy's log-probs of fixed sequences, runs two real grpo_step calls, snapshots again, and writes per rank
what changed and how much of the optimizer state and of the reference this rank holds; rank 0 saves the
weights after the steps and the first update's gradients.
"""
import json
import sys
from pathlib import Path

import torch


def main() -> None:
    from _grpo_probe import gathered_state, record_first_gradients, start_probe_run

    from semgrpo import dist
    from semgrpo.rollout import Rollout
    from semgrpo.train import _logps_per_micro_batch, _reference_policy, grpo_step

    out_path, cfg, run, order = start_probe_run()
    # Fixed sequences: two training prompts (left padded) and the first tokens of their references.
    tok = run.setup.tokenizer
    prompts = [ex.prompt_ids for ex in run.setup.train[:2]]
    width = max(map(len, prompts))
    prompt_ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    prompt_mask = (torch.arange(width) >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
    completion_ids = torch.tensor([tok(ex.reference)["input_ids"][:4] for ex in run.setup.train[:2]])
    fixed = Rollout(prompt_ids, prompt_mask, completion_ids, torch.ones_like(completion_ids))
    rows = [torch.arange(2)]

    def logps(reference: bool) -> torch.Tensor:
        model, context = (_reference_policy(run, run.engine.module) if reference
                          else (run.engine.module, torch.no_grad()))
        run.engine.module.eval()
        return _logps_per_micro_batch(model, context, cfg.grpo, fixed, rows)[0]

    before, ref_before, policy_before = gathered_state(run.engine), logps(True), logps(False)
    grads = record_first_gradients(run.engine, lambda name: True)
    metrics = []
    for step in range(2):
        ids = order.indices(step, rank=dist.rank(), world_size=dist.world_size())
        metrics.append(grpo_step(run, lambda: [run.setup.train[i] for i in ids])[0])
    after, ref_after, policy_after = gathered_state(run.engine), logps(True), logps(False)
    opt = run.engine.optimizer
    partition = [int(t.numel()) for t in getattr(opt, "fp32_partitioned_groups_flat", [])]
    state_numel = sum(int(v.numel()) for s in opt.optimizer.state.values() for v in s.values()
                      if torch.is_tensor(v) and v.dim() > 0)
    reference = run.reference.module
    report = {
        "rank": dist.rank(), "zero_stage": run.engine.zero_optimization_stage(),
        "trainable": sorted(n for n, p in run.engine.module.named_parameters() if p.requires_grad),
        "unchanged": sorted(n for n in before if not (before[n] - after[n]).abs().max() > 0),
        "trainable_numel": sum(p.ds_numel for p in run.engine.module.parameters() if p.requires_grad),
        "partition_numel": partition, "optimizer_state_numel": state_numel,
        "reference_held": sum(p.ds_tensor.numel() for p in reference.parameters()),
        "reference_numel": sum(p.ds_numel for p in reference.parameters()),
        "reference_trainable": any(p.requires_grad for p in reference.parameters()),
        "ref_logps_change": (ref_after - ref_before).abs().max().item(),
        "policy_logps_change": (policy_after - policy_before).abs().max().item(),
        "kl": [m["kl"] for m in metrics],
    }
    Path(f"{out_path}.rank{dist.rank()}").write_text(json.dumps(report))
    if dist.is_main():
        torch.save(after, f"{out_path}.weights.pt")
        torch.save(grads, f"{out_path}.grad.pt")


if __name__ == "__main__":
    from semgrpo.errors import run_entry_point

    sys.exit(run_entry_point("_full_param_probe.py", main))  # leaves the process group on every way out
