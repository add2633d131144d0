"""The fused LM head that the trainer and the TRL drop-in share, under a real DeepSpeed ZeRO-3 engine (one CPU
process, gloo): through the model, and on a head still partitioned.

Runs tests/integrations/_trl_zero3_check.py in a fresh interpreter: initialising torch.distributed here would
leak a process group and RANK/WORLD_SIZE into the trainers other tests build.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

if importlib.util.find_spec("deepspeed") is None or importlib.util.find_spec("trl") is None:
    pytest.skip("deepspeed and trl are needed", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]


def test_partitioned_head_matches_unpartitioned():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("_trl_zero3_check.py"))], env=env,
                          capture_output=True, text=True, timeout=600, cwd=str(ROOT))
    assert proc.returncode == 0 and "ZERO3-OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-6000:]
