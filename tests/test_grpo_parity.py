"""One step's update is TRL 1.16's loss on the global batch, whatever the world size, accumulation and
micro-batch sizes: the gradient-parity harness (tests/_grpo_parity.py) on 1 and 2 gloo ranks."""
import json
import shutil

import pytest
import torch
from _grpo_parity import GRAD_ACCUM
from _helpers import run_cli
from _tolerance import chain_rtol

pytestmark = pytest.mark.skipif(shutil.which("deepspeed") is None, reason="the deepspeed launcher is not on PATH")


# The whole grid on 2 ranks, where scale_rewards="batch" needs the global std. One rank runs scale "group" only:
# it is the baseline every distributed difference is measured from, and the other scales add nothing new there.
SCALES = {1: "group", 2: "group,batch,none"}
# The trainer and the fp32 reference compute one gradient by other paths (fused head, micro-batches, ranks): they
# differ by summation order only, along the demo policy's forward and backward chain (2 reductions per layer
# and the head's 2), the widest a log-softmax over its 764-token vocabulary.
RTOL = chain_rtol(torch.float32, 764, depth=2 * 2 + 2)


@pytest.mark.parametrize("world", [1, 2])
def test_lora_gradient_equals_trl_formula_on_the_global_batch(demo_assets, tmp_path, world):
    out = tmp_path / "parity.json"
    # ~2 min alone on 2 cores for 2 ranks; a loaded machine (CI neighbours) can triple that.
    proc = run_cli("../tests/_grpo_parity.py", str(out), str(tmp_path), SCALES[world], timeout=1500,
                   launcher=["deepspeed", "--num_gpus", str(world), "--master_port", str(29761 + world)])
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    rows = json.loads(out.read_text())
    all_flat = [r for r in rows if r.get("case") == "all_flat"]
    rows = [r for r in rows if "case" not in r]
    # GA x loss_type x scale_rewards x beta x (one row per iteration, mu 1 and 2)
    assert len(rows) == len(GRAD_ACCUM) * 4 * len(SCALES[world].split(",")) * 2 * (1 + 2)
    # a step with nothing to learn still steps the optimizer (and its LR schedule) once, as TRL's does
    assert [(r["optimizer_steps"], r["trained_fraction"]) for r in all_flat] == [(1, 0.0)] * len(GRAD_ACCUM), all_flat
    failures = []
    for r in rows:
        case = f"GA={r['ga']} {r['loss_type']} scale={r['scale']} beta={r['beta']} mu={r['mu']} it={r['iteration']}"
        if r["updates"] != r["mu"]:
            failures.append(f"{case}: {r['updates']} optimizer updates, expected {r['mu']}")
        if not r["grad_norm"] > 0:
            failures.append(f"{case}: the reference gradient is zero, so the comparison would prove nothing")
        if not r["rel_err"] <= RTOL:
            failures.append(f"{case}: |g - g_ref| / |g_ref| = {r['rel_err']:.2e}")
        if not r["train_mode"] or not all(r["train_mode"]):
            failures.append(f"{case}: policy passes in train mode: {r['train_mode']}")
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:40])
