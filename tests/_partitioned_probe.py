"""Run under `deepspeed --num_gpus 2 tests/_partitioned_probe.py OUT.json key=value...` by test_partitioned_loading.py.

Loads the policy the way a ZeRO-3 run on 2 ranks does (partitioned, the init_from chain merged layer by
layer) and the way a single process does (whole weights, PEFT's merge_and_unload), and writes per rank: how
much of each weight this rank holds, and the largest difference between the gathered partitioned weights
and the whole ones. With $PROBE_MISMATCHED_MODEL set (a folder whose config.json describes another architecture
than its weights), it then loads that folder partitioned too and records, per rank, the error it raised.
"""
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's semgrpo, not an installed one


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    out_path, overrides = args[0], args[1:]
    import deepspeed

    from semgrpo import dist
    from semgrpo.config import load_config
    from semgrpo.modeling import load_policy
    from semgrpo.session import init_distributed, prepare

    cfg = load_config(["configs/demo.yaml"], [f"output_dir={Path(out_path).parent / 'probe_run'}", *overrides])
    init_distributed()
    setup = prepare(cfg, need_encoder=False)
    ds_config = setup.ds_config
    ds_config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    partitioned = load_policy(cfg.model, dtype="fp32", ds_config=ds_config)
    whole = dict(load_policy(cfg.model, dtype="fp32").named_parameters())
    from transformers import AutoModelForCausalLM

    raw = AutoModelForCausalLM.from_pretrained(cfg.model.path).state_dict()
    report = {"rank": dist.rank(), "params": {}}
    for name, p in partitioned.named_parameters():
        held = p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel()
        with deepspeed.zero.GatheredParameters([p]):
            diff = (p.detach().float() - whole[name].detach().float()).abs().max().item()
            total = p.numel()
            key = name.replace("base_model.model.", "").replace(".base_layer", "")
            moved = (p.detach().float() - raw[key].float()).abs().max().item() if key in raw else None
        report["params"][name] = {"held": held, "total": total, "max_diff": diff, "merged_change": moved}
    mismatched = os.environ.get("PROBE_MISMATCHED_MODEL")
    if mismatched:
        from semgrpo.errors import UserError

        cfg.model.path, cfg.model.init_from = mismatched, ""
        try:
            load_policy(cfg.model, dtype="fp32", ds_config=ds_config)
            report["mismatched"] = None
        except UserError as exc:  # every rank must raise it, before any of them waits in a gather
            report["mismatched"] = f"{type(exc).__name__}: {exc}"
    Path(f"{out_path}.rank{dist.rank()}").write_text(json.dumps(report))


if __name__ == "__main__":
    from semgrpo.errors import run_entry_point

    sys.exit(run_entry_point("_partitioned_probe.py", main))  # leaves the process group on every way out
