"""One step's update is TRL 1.16's loss on the global batch, whatever the world size, accumulation and
micro-batch sizes, for every loss type and option: the gradient-parity harness (tests/_grpo_parity.py) on 2 gloo
ranks, against an independent float64 reference of TRL's formulas.

Tolerance, per LoRA gradient tensor, relative to its norm: the trainer runs in fp32 and the reference in float64,
so a tensor differs by the fp32 rounding of its computation. Well conditioned, that is below FLOOR (the demo
policy's fp32 chain of reductions, tests/_tolerance.py: 6.1e-5). A GRPO gradient can cancel (advantages sum to zero in a group; vespo's weight is
an exp of summed log-ratios), which scales the rounding up; so a tensor above FLOOR is judged against the error of
the same formulas evaluated in fp32 on the same batch: at most SCALE times it, as the trainer sums in other orders
(micro-batches, ranks, vocabulary chunks), each one rounding of that size. That holds on any CPU's kernels (AVX-512,
AVX2, scalar) and is far below what a wrong formula gives: the planted eps swap is off by > 1e-2 relative.
"""
import json
import shutil

import pytest
from _grpo_parity import FLOOR, GRAD_ACCUM, cases
from _helpers import deepspeed_launcher, run_cli

pytestmark = pytest.mark.skipif(shutil.which("deepspeed") is None, reason="the deepspeed launcher is not on PATH")

SCALE = 10  # above it: at most this many times the fp32 evaluation's own error (module docstring)


def _excess(r: dict) -> tuple[float, str]:
    """How many times its allowance the worst tensor's error is (<= 1 passes), and that tensor."""
    err, err32 = r["tensor_err"], r["tensor_err_fp32"]
    ratios = {n: e / (FLOOR if err32 is None else max(FLOOR, SCALE * err32[n])) for n, e in err.items()}
    worst = max(ratios, key=ratios.get)
    return ratios[worst], worst


@pytest.fixture(scope="module")
def parity_rows(demo_assets, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("parity")
    out = tmp / "parity.json"
    # ~2 min alone on 2 cores; a loaded machine (CI neighbours) can triple that.
    proc = run_cli("../tests/_grpo_parity.py", str(out), str(tmp), timeout=1500,
                   launcher=deepspeed_launcher())
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return json.loads(out.read_text())


def test_lora_gradient_equals_trl_formula_on_the_global_batch(parity_rows):
    rows = [r for r in parity_rows if not r.get("all_flat") and not r["mutant"]]
    # every case of the grid, one row per optimizer update
    assert len(rows) == sum(c.mu for ga in GRAD_ACCUM for c in cases(ga) if not c.mutant)
    failures = []
    for r in rows:
        case = f"GA={r['ga']} {r['case']} it={r['iteration']}"
        if r["updates"] != r["mu"]:
            failures.append(f"{case}: {r['updates']} optimizer updates, expected {r['mu']}")
        if not r["grad_norm"] > 0:
            failures.append(f"{case}: the reference gradient is zero, so the comparison would prove nothing")
        excess, tensor = _excess(r)
        if not excess <= 1:
            bound = FLOOR if r["tensor_err_fp32"] is None else max(FLOOR, SCALE * r["tensor_err_fp32"][tensor])
            failures.append(f"{case}: {tensor}: |g - g_ref| / |g_ref| = {r['tensor_err'][tensor]:.2e} > {bound:.2e}")
        if r["clips"] and not r["clipped_fraction"] > 0:
            failures.append(f"{case}: the reference clips nothing ({r['clipped_fraction']}), so clipping is untested")
        if not r["train_mode"] or not all(r["train_mode"]):
            failures.append(f"{case}: policy passes in train mode: {r['train_mode']}")
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:40])
    # the grid exercises what it claims: both importance-sampling levels clip, at both accumulations
    clipping = [r for r in rows if r["clips"]]
    assert {(r["ga"], "sequence" in r["case"]) for r in clipping} >= {(4, True), (4, False), (1, False)}


def test_a_planted_bug_fails_the_comparison(parity_rows):
    """eps_low and eps_high swapped in the trainer only (the reference keeps 0.2 / 0.28): the harness must see it,
    at token and at sequence level."""
    mutants = [r for r in parity_rows if not r.get("all_flat") and r["mutant"]]
    assert len(mutants) == sum(c.mu for ga in GRAD_ACCUM for c in cases(ga) if c.mutant)
    assert all(r["clipped_fraction"] > 0 for r in mutants)
    worst = {}
    for r in mutants:  # each planted case must fail, and by far: at least one of its updates 10x over its allowance
        worst[r["case"]] = max(worst.get(r["case"], 0.0), _excess(r)[0])
    assert len(worst) == 2 and all(x > 10 for x in worst.values()), worst


def test_a_step_with_nothing_to_learn_changes_nothing(parity_rows):
    # every group flat, beta 0: a zero gradient and unchanged weights, yet the optimizer (and its LR schedule)
    # steps once, as TRL's does
    flat = [r for r in parity_rows if r.get("all_flat")]
    assert [(r["ga"], r["optimizer_steps"], r["trained_fraction"]) for r in flat] == [(ga, 1, 0.0) for ga in GRAD_ACCUM]
    assert all(r["max_abs_grad"] == 0.0 and r["max_abs_update"] == 0.0 for r in flat), flat
