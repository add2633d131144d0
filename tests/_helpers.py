"""Helpers for the tests that run the entry points as a user does (a unique module name: tests/ops has
its own conftest, so `from conftest import ...` would be ambiguous)."""
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _tolerance import chain_rtol

REPO = Path(__file__).resolve().parents[1]
# The real datasets come from a folder laid out like the data root: $SEMGRPO_TEST_DATA, else the team's copy beside
# the checkout (and CI's). Tests do not read it themselves: they take conftest's `real_data_root` fixture.
SHARED_DATA = REPO.parent / "shared" / "data"


def real_data_source() -> Path | None:
    """The folder `real_data_root` installs from, or None when there is none."""
    named = os.environ.get("SEMGRPO_TEST_DATA")
    if named:
        if not Path(named).is_dir():
            raise pytest.UsageError(f"SEMGRPO_TEST_DATA={named} is not a folder")
        return Path(named)
    return SHARED_DATA if SHARED_DATA.is_dir() else None


# Set in the pytest process by in-process DeepSpeed tests; a child must not join that process group.
_LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                  "CROSS_RANK", "CROSS_SIZE")


def user_env(**extra: str) -> dict:
    """The environment a user's shell would have: no launcher variables inherited from the test process."""
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARS}
    env.update(extra)
    return env


def run_cli(script: str, *args: str, timeout: int = 600, launcher: list | None = None, env: dict | None = None):
    """Run a bin/ script as a user does; returns the CompletedProcess (text mode). A `deepspeed` launch must also
    exit cleanly (`assert_clean_launch`), whatever its status."""
    cmd = (launcher or [sys.executable]) + [str(REPO / "bin" / script), *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=user_env(**(env or {})))
    if is_deepspeed_launch(cmd):
        assert_clean_launch(proc.stdout + proc.stderr)
    return proc


def free_port() -> int:
    """A TCP port free on this host now. Launches take one each instead of a fixed number, so that two suites (two CI
    jobs, a developer's demo on DeepSpeed's default port) on one machine never meet on a port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deepspeed_launcher(ranks: int = 2) -> list[str]:
    """`deepspeed --num_gpus N --master_port <free>`: N gloo ranks on CPU."""
    return ["deepspeed", "--num_gpus", str(ranks), "--master_port", str(free_port())]


def is_deepspeed_launch(cmd: list) -> bool:
    return Path(str(cmd[0])).name == "deepspeed"


# A rank that died by a signal: gloo threads torn down at exit ("terminate called without an active exception",
# SIGABRT), a crash. The deepspeed launcher logs each rank's exit; a negative code is a signal.
_ABORT_LINE = re.compile(r"terminate called|exits with return code = -\d+")


def assert_clean_launch(output: str) -> None:
    """No rank of a `deepspeed` launch aborted or died by a signal, even when the launch reports success or the
    expected error: a job scheduler records such a run as failed."""
    bad = [line for line in output.splitlines() if _ABORT_LINE.search(line)]
    assert not bad, "a rank did not exit cleanly:\n" + "\n".join(bad[:5]) + "\n...\n" + output[-3000:]


def run_metrics(out_dir) -> list[dict]:
    """The rows of a run's metrics.jsonl without the timings (perf/*), which no two runs share."""
    import json

    rows = [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]


# Two runs of the same demo steps (straight vs killed and resumed) on one machine: at most the regrouping of a
# reduction between threads, along the demo policy's chain (2 layers; hidden 128, MLP 256, vocabulary 764).
SAME_RUN_RTOL = chain_rtol(torch.float32, 764, depth=2 * 2 + 2)


def assert_same_metrics(a: list[dict], b: list[dict], steps: list[int]) -> None:
    """Two runs logged the same scalars at `steps` (to float rounding; NaN equals NaN)."""
    assert [r["step"] for r in a] == [r["step"] for r in b] == steps
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for key in ra:
            assert ra[key] == pytest.approx(rb[key], rel=SAME_RUN_RTOL, abs=SAME_RUN_RTOL, nan_ok=True), (ra["step"], key)


def fake_run_stage(run_dir, base_path, tokenizer_path, data_path, encoder, init_from, seed, ood=""):
    """A run directory as training leaves it: config.json + one complete checkpoint with a random LoRA."""
    import json

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_path),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # PEFT starts B at 0 (a no-op adapter); make this one change the model
            p.data.normal_(0, 0.05)
    ckpt = run_dir / "checkpoints" / "step-00000001"
    model.save_pretrained(ckpt / "adapter")
    (ckpt / "COMPLETE").write_text(json.dumps({"step": 1, "time": 0, "world_size": 1}))
    cfg = {"model": {"path": str(base_path), "tokenizer": str(tokenizer_path), "init_from": init_from},
           "data": {"task": "mt_zh_bo", "dev": str(data_path), "train": str(data_path)},
           "reward": {"encoder": str(encoder)}, "grpo": {"max_completion_length": 8},
           "eval": {"ood_passages": ood}}
    (run_dir / "config.json").write_text(json.dumps(cfg))
    return ckpt / "adapter"


# Caches and build outputs that running the tests may legitimately create or refresh.
_WORKTREE_IGNORED = ("__pycache__", ".pytest_cache", ".hypothesis", "build", ".cache")  # + *.egg-info


def worktree_state():
    """{path: (git status code, mtime_ns, size)} for every changed, untracked or ignored file of the
    checkout (caches excluded), or None outside a git checkout."""
    repo = REPO
    try:
        out = subprocess.run(["git", "status", "--porcelain", "-z", "--untracked-files=all", "--ignored"],
                             cwd=repo, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    state = {}
    for entry in out.stdout.split("\0"):
        if len(entry) < 4:
            continue
        code, path = entry[:2], entry[3:]
        parts = path.rstrip("/").split("/")
        if any(p in _WORKTREE_IGNORED or p.endswith(".egg-info") for p in parts) or path.endswith((".so", ".pyc")):
            continue
        try:
            st = (repo / path).stat()
            state[path] = (code, st.st_mtime_ns, st.st_size)
        except OSError:
            state[path] = (code, None, None)
    return state


# Where conftest.py keeps the snapshot taken at session start.
WORKTREE_KEY = pytest.StashKey[object]()
