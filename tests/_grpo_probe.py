"""Run under `deepspeed --num_gpus N tests/_grpo_probe.py OUT.json key=value...` by test_grpo_distributed.py.

Builds the real GRPO run (demo config + overrides), snapshots the full (gathered) parameters, runs two
real grpo_step calls, snapshots again, and writes per-rank facts the test asserts on: which parameters
changed, and how much of the optimizer state this rank holds; the updated LoRA tensors go to
OUT.json.rank<r>.lora.pt and the first update's LoRA gradients to OUT.json.rank<r>.grad.pt.
"""
import json
import sys
from pathlib import Path

import torch


def gathered_state(engine) -> dict[str, torch.Tensor]:
    import deepspeed

    params = dict(engine.module.named_parameters())
    with deepspeed.zero.GatheredParameters(list(params.values())):
        return {name: p.detach().clone().float() for name, p in params.items()}


def record_first_gradients(engine, keep) -> dict[str, torch.Tensor]:
    """Filled at the first optimizer boundary with the full (gathered) gradients of the trainable parameters whose
    name `keep` accepts. Two ways of computing a step are compared by these, not by the weights after the
    update: Adam divides each gradient by its own size, so an entry that is zero up to rounding moves its weight
    by a fraction of the learning rate in that rounding's direction."""
    from deepspeed.utils import safe_get_full_grad

    grads: dict[str, torch.Tensor] = {}
    params = {n: p for n, p in engine.module.named_parameters() if p.requires_grad and keep(n)}
    original = engine.step

    def step(*args, **kwargs):
        if not grads and engine.is_gradient_accumulation_boundary():  # every rank: a collective under ZeRO-3
            grads.update({n: safe_get_full_grad(p).detach().clone().float() for n, p in params.items()})
        return original(*args, **kwargs)

    engine.step = step
    return grads


def start_probe_run():
    """The GRPO run of the command line `OUT.json key=value...` (demo config + overrides), tau fixed at 0 and
    a per-rank seed; returns (out_path, cfg, run, order)."""
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    out_path, overrides = args[0], args[1:]
    from semgrpo import dist
    from semgrpo.config import load_config
    from semgrpo.session import init_distributed
    from semgrpo.train import build_grpo_run

    # The demo config's output_dir is the repository's runs/demo: tests write only in their tmp folders.
    cfg = load_config(["configs/demo.yaml"], [f"output_dir={Path(out_path).parent / 'probe_run'}", *overrides])
    init_distributed()
    run, order, _ = build_grpo_run(cfg)
    run.rewards["semantic"].tau = 0.0
    torch.manual_seed(1234 + dist.rank())
    return out_path, cfg, run, order


def main() -> None:
    from semgrpo import dist
    from semgrpo.train import grpo_step

    out_path, cfg, run, order = start_probe_run()
    before = gathered_state(run.engine)
    grads = record_first_gradients(run.engine, lambda name: "lora_" in name)
    metrics = []
    for step in range(2):
        ids = order.indices(step, rank=dist.rank(), world_size=dist.world_size())
        metrics.append(grpo_step(run, lambda: [run.setup.train[i] for i in ids])[0])
    after = gathered_state(run.engine)
    # The live tax meter (windows split over ranks) vs every rank measuring all windows itself.
    from semgrpo.eval.metrics import summarize
    from semgrpo.eval.ood import drift_per_token, encode_windows, load_passages

    tax = run.tax_meter.measure(run.engine)
    model = run.engine.module
    model.eval()
    windows = encode_windows(run.setup.tokenizer, load_passages(cfg.tax_meter.ood_passages, limit=cfg.tax_meter.ood_samples),
                             max_tokens=cfg.tax_meter.ood_max_tokens)

    def logits(ids, mask):
        return model(input_ids=ids, attention_mask=mask, use_cache=False).logits

    def ref_logits(ids, mask):
        with model.disable_adapter():
            return logits(ids, mask)

    whole = drift_per_token(logits, ref_logits, windows, pad_id=run.setup.tokenizer.pad_token_id,
                            device=run.engine.device)
    tax_direct = {"tax/nll_mean": summarize(whole["nll_adapted"])["mean"], "tax/kl_p90": summarize(whole["kl"])["p90"],
                  "tax/kl_mean": float(whole["kl"].mean())}
    changed = {n: bool((before[n] - after[n]).abs().max() > 0) for n in before}
    opt = run.engine.optimizer
    partition = [int(t.numel()) for t in getattr(opt, "fp32_partitioned_groups_flat", [])]
    state_numel = sum(int(v.numel()) for s in opt.optimizer.state.values() for v in s.values()
                      if torch.is_tensor(v) and v.dim() > 0)
    report = {
        "rank": dist.rank(), "world_size": dist.world_size(), "zero_stage": run.engine.zero_optimization_stage(),
        "lora_params": sorted(n for n in changed if "lora_" in n),
        "changed": sorted(n for n, c in changed.items() if c),
        "trainable_numel": sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel()
                               for p in run.engine.module.parameters() if p.requires_grad),
        "partition_numel": partition, "optimizer_state_numel": state_numel, "metrics": metrics,
        "tax": tax, "tax_direct": tax_direct,
    }
    with open(f"{out_path}.rank{dist.rank()}", "w") as f:
        json.dump(report, f)
    torch.save({n: t for n, t in after.items() if "lora_" in n}, f"{out_path}.rank{dist.rank()}.lora.pt")
    torch.save(grads, f"{out_path}.rank{dist.rank()}.grad.pt")


if __name__ == "__main__":
    from semgrpo.errors import run_entry_point

    sys.exit(run_entry_point("_grpo_probe.py", main))  # leaves the process group on every way out
