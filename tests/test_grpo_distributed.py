"""A real 2-rank ZeRO-3 GRPO run through the `deepspeed` launcher on CPU (gloo)."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from _helpers import deepspeed_launcher, run_cli
from _tolerance import assert_close_scaled, model_rtol

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("deepspeed") is None, reason="the deepspeed launcher is not on PATH")


def test_two_rank_zero3_grpo_updates_lora_only_and_partitions_the_optimizer(demo_assets, tmp_path):
    out = tmp_path / "probe.json"
    proc = run_cli(
        "../tests/_grpo_probe.py", str(out), "grpo.max_completion_length=8", "model.lora.r=4",
        "eval.ood_samples=5", "eval.ood_max_tokens=16",
        launcher=deepspeed_launcher(),
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    reports = [json.loads((tmp_path / f"probe.json.rank{r}").read_text()) for r in (0, 1)]
    for rep in reports:
        assert rep["world_size"] == 2 and rep["zero_stage"] == 3
        # Both ranks see the same full (gathered) model after the update.
        assert rep["changed"] == reports[0]["changed"]
    rep = reports[0]
    assert rep["lora_params"], "no LoRA parameters found"
    changed = set(rep["changed"])
    # LoRA B starts at zero, so any update shows; every changed tensor is a LoRA tensor.
    assert any("lora_B" in n for n in changed)
    assert changed <= set(rep["lora_params"]), sorted(changed - set(rep["lora_params"]))[:5]
    # Optimizer state partitioned: each rank holds about half of the trainable parameters' fp32 copy.
    total = rep["trainable_numel"]
    parts = [sum(r["partition_numel"]) for r in reports]
    assert all(0 < p < total for p in parts), (parts, total)
    assert sum(parts) >= total and max(parts) - min(parts) <= 2 * 64, (parts, total)
    # Adam keeps exp_avg and exp_avg_sq (+ a step counter) for this rank's partition only.
    for r, p in zip(reports, parts):
        assert 2 * p <= r["optimizer_state_numel"] <= 2 * p + 16, (r["optimizer_state_numel"], p)
    # Metrics were reduced over both ranks: identical on each.
    assert reports[0]["metrics"] == reports[1]["metrics"] or all(
        {k: v for k, v in a.items() if not k.startswith("perf/")} == {k: v for k, v in b.items() if not k.startswith("perf/")}
        for a, b in zip(reports[0]["metrics"], reports[1]["metrics"]))
    # Live alignment-tax meter: 5 passages split 3 + 2 (one repeat masked out), gathered, equal on both
    # ranks and equal to measuring all passages at once; the updated LoRA has drifted from the reference.
    assert reports[0]["tax"] == reports[1]["tax"]
    # windows split over ranks vs all at once: the same forwards, the statistics summed in another order
    rtol = model_rtol(demo_assets.policy_path / "config.json")
    for key, value in rep["tax_direct"].items():
        assert rep["tax"][key] == pytest.approx(value, rel=rtol), key
    assert rep["tax"]["tax/kl_mean"] > 0



def _lora_of(tmp_path, name):
    return [torch.load(tmp_path / f"{name}.json.rank{r}.lora.pt") for r in (0, 1)]


def test_two_rank_policy_pass_on_gathered_weights_equals_the_layer_by_layer_pass(demo_assets, tmp_path, launches):
    """grpo.gathered_policy_pass runs the first forward/backward with ZeRO's hooks off on the weights
    gathered for generation. With every parameter partitioned (persistence threshold 0, as for the large
    LoRA matrices of a big model), the update must equal ZeRO-3's own hooked pass: the gradients still
    reach the right rank's partition through the reduce-scatter."""
    ds = json.loads((ROOT / "ds_configs" / "zero3.json").read_text())
    ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    ds_path = tmp_path / "zero3_partition_all.json"
    ds_path.write_text(json.dumps(ds))
    common = [f"train.deepspeed={ds_path}", "grpo.max_completion_length=8", "model.lora.r=4",
              "model.lora.dropout=0.0", "eval.ood_samples=4", "eval.ood_max_tokens=16"]
    procs = [launches.start("../tests/_grpo_probe.py", str(tmp_path / f"{name}.json"), *common,
                            "grpo.gathered_policy_pass=" + ("true" if name == "gathered" else "false"),
                            log=tmp_path / f"{name}.log",
                            launcher=deepspeed_launcher())
             for name in ("gathered", "hooked")]  # side by side
    for proc in procs:
        code, output = launches.wait(proc)
        assert code == 0, output
    gathered, hooked = _lora_of(tmp_path, "gathered"), _lora_of(tmp_path, "hooked")
    assert gathered[0].keys() == hooked[0].keys() and gathered[0]
    assert any(t.abs().max() > 0 for n, t in gathered[0].items() if "lora_B" in n)  # it did learn
    for rank in (0, 1):
        for name in gathered[0]:
            assert torch.equal(gathered[rank][name], gathered[0][name]), name  # ranks agree
    # The same update: the first optimizer step's gradients agree to summation order (the probe says why they,
    # not the weights after Adam, are compared).
    rtol = model_rtol(demo_assets.policy_path / "config.json")
    grads = {name: [torch.load(tmp_path / f"{name}.json.rank{r}.grad.pt") for r in (0, 1)]
             for name in ("gathered", "hooked")}
    assert grads["gathered"][0].keys() == gathered[0].keys()
    for rank in (0, 1):
        for name, g in grads["hooked"][rank].items():
            assert_close_scaled(grads["gathered"][rank][name], g, rtol, msg=name)
