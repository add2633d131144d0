"""One error policy for every entry point: a user error is one `error:` line and exit 2, a bug keeps its
traceback and exits 1."""
import subprocess
import sys

import pytest
from _helpers import REPO, run_cli, user_env


@pytest.mark.parametrize("script, args", [
    ("train_grpo.py", ["no_such.key=1"]),
    ("train_sft.py", ["train.lr=-1"]),
    ("evaluate.py", ["--run", "/nonexistent/run"]),
    ("transfer.py", ["--from", "../x=/nonexistent", "--config", "configs/hg_bo.yaml"]),
    ("train_embedder.py", ["--model", "/nonexistent", "--data", "x.jsonl", "--output", "/tmp/semgrpo-never"]),
])
def test_user_error_is_one_line_and_exit_2(script, args):
    proc = run_cli(script, *args, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "[WARNING]" not in line]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert [line for line in lines if ": error: " in line] and lines[-1].startswith(f"{script}: error: "), lines


def test_a_bug_keeps_its_traceback_and_exits_1():
    code = ("import sys, semgrpo.cli as cli\n"
            "cli.load_config = lambda *a, **k: {}['bug']  # an internal KeyError, not a user error\n"
            "sys.exit(cli.main_grpo([]))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=user_env())
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "KeyError: 'bug'" in proc.stderr
    assert ": error: " not in proc.stderr


def test_every_error_class_is_a_user_error():
    from semgrpo.checkpoint import CheckpointError
    from semgrpo.config import ConfigError
    from semgrpo.data import DataError
    from semgrpo.embedder import EmbedderInputError
    from semgrpo.errors import UserError
    from semgrpo.eval.judge import JudgeError
    from semgrpo.eval.ood import OODError

    for cls in (CheckpointError, ConfigError, DataError, EmbedderInputError, JudgeError, OODError):
        assert issubclass(cls, UserError), cls
