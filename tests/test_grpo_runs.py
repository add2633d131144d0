"""Whole runs through the entry points: kill-and-resume equivalence, and the SFT -> GRPO hand-off."""
import json
import signal
import subprocess
import sys
import time

import torch
from _helpers import REPO, assert_same_metrics, run_cli, run_metrics, user_env
from _tolerance import assert_close_scaled, model_rtol

# Small and fast: GRPO straight from the demo's base policy, short completions, a tiny LoRA.
QUICK = ["sft.before_grpo=false", "grpo.max_completion_length=8", "model.lora.r=4", "model.lora.alpha=8",
         "reward.tau_samples=8", "train.sample_every=1"]

TAX_KEYS = ["tax/delta_nll_mean", "tax/kl_mean", "tax/kl_p90", "tax/nll_mean", "tax/nll_p90"]


def test_kill_and_resume_equals_an_uninterrupted_run(demo_assets, tmp_path):
    args = QUICK + ["train.max_steps=4", "train.save_every=2", "eval.every_steps=2", "eval.ood_samples=4",
                    "eval.ood_max_tokens=16"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    proc = run_cli("train_grpo.py", f"output_dir={straight}", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # Start the same run, kill -9 it as soon as the step-2 checkpoint is complete (mid step 3).
    victim = subprocess.Popen([sys.executable, str(REPO / "bin" / "train_grpo.py"), f"output_dir={resumed}", *args],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=user_env())
    marker = resumed / "checkpoints" / "step-00000002" / "COMPLETE"
    deadline = time.time() + 600
    while not marker.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert marker.exists(), "the run never wrote its step-2 checkpoint"
    assert not (resumed / "summary.json").exists(), "the run finished before it could be killed"

    proc = run_cli("train_grpo.py", f"output_dir={resumed}", *args)  # resume=auto is the default
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = run_metrics(straight), run_metrics(resumed)
    assert_same_metrics(a, b, [1, 2, 3, 4])
    # The live alignment-tax meter logged at steps 2 and 4 (and resumed identically, compared above).
    assert [sorted(k for k in r if k.startswith("tax/")) for r in a] == [[], TAX_KEYS, [], TAX_KEYS]
    assert a[3]["tax/kl_mean"] > 0
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (straight, resumed))
    assert sa["tau"] == sb["tau"] and sa["steps"] == sb["steps"] == 4
    # Only the newest `keep_last` complete checkpoints remain, and no half-written one.
    names = sorted(p.name for p in (resumed / "checkpoints").iterdir())
    assert names == ["step-00000002", "step-00000004"], names


def test_sft_checkpoint_hands_off_to_grpo(demo_assets, tmp_path):
    sft_dir, grpo_dir = tmp_path / "sft", tmp_path / "grpo"
    proc = run_cli("train_sft.py", f"output_dir={sft_dir}", "sft.samples=32", "sft.epochs=2", "model.lora.r=4",
                   "model.lora.alpha=8", "sft.lr=1e-2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((sft_dir / "summary.json").read_text())
    assert summary["steps"] == 4  # 32 samples / 16 per step x 2 epochs

    # The GRPO start policy is the SFT policy: adapter merged, fresh LoRA on top (B = 0, so no change).
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from semgrpo.config import LoraConfig, ModelConfig
    from semgrpo.lineage import find_adapter_dir
    from semgrpo.modeling import load_policy

    adapter = find_adapter_dir(str(sft_dir))
    base = AutoModelForCausalLM.from_pretrained(str(demo_assets.policy_path))
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.no_grad():
        base_logits = base(ids).logits
        sft_logits = PeftModel.from_pretrained(base, str(adapter))(ids).logits
        start = load_policy(ModelConfig(path=str(demo_assets.policy_path), init_from=str(sft_dir),
                                        lora=LoraConfig(r=4, alpha=8, dropout=0.0)), dtype="fp32")
        start_logits = start(ids).logits
        with start.disable_adapter():  # the GRPO reference policy
            ref_logits = start(ids).logits
    assert not torch.allclose(sft_logits, base_logits, atol=1e-2), "SFT did not change the model"  # far above rounding
    # merged into the base vs applied as an adapter: summation order only, along the demo policy's forward
    rtol = model_rtol(demo_assets.policy_path / "config.json")
    assert_close_scaled(start_logits, sft_logits, rtol)
    assert_close_scaled(ref_logits, sft_logits, rtol)

    proc = run_cli("train_grpo.py", f"output_dir={grpo_dir}", f"model.init_from={sft_dir}", *QUICK,
                   "train.max_steps=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((grpo_dir / "summary.json").read_text())["steps"] == 2
    assert (grpo_dir / "reward_curve.png").stat().st_size > 0
    assert any((grpo_dir / "tensorboard").iterdir())
