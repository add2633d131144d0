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


# Every way out of an entry point leaves the torch.distributed group first: a group still alive when the
# interpreter exits can abort the process ("terminate called without an active exception", SIGABRT).
_LEAVES = """
import sys
import torch.distributed as td
from _ds_single import init_single_process
from semgrpo.config import ConfigError
from semgrpo.errors import run_entry_point

def finished():
    return 0

def user_error():
    raise ConfigError("a bad value")

def interrupted():
    raise SystemExit(130)  # what GracefulInterrupt.exit raises after saving

def bug():
    raise KeyError("bug")

init_single_process()
try:
    status = run_entry_point("probe", {way})
except BaseException as exc:
    status = type(exc).__name__
print("status", status, "initialized", td.is_initialized())
"""


@pytest.mark.parametrize("way, status", [("finished", "0"), ("user_error", "2"), ("interrupted", "SystemExit"),
                                         ("bug", "KeyError")])
def test_every_way_out_leaves_the_process_group(way, status):
    proc = subprocess.run([sys.executable, "-c", _LEAVES.format(way=way)], cwd=REPO / "tests", capture_output=True,
                          text=True, timeout=300, env=user_env())
    assert f"status {status} initialized False" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert "terminate called" not in proc.stderr


def test_an_abort_line_fails_a_launch():
    from _helpers import assert_clean_launch

    assert_clean_launch("[INFO] [launch.py:285:main] Process 17782 exits successfully.")
    for line in ("terminate called without an active exception",
                 "[ERROR] [launch.py:321:sigkill_handler] ... exits with return code = -6"):
        with pytest.raises(AssertionError, match="did not exit cleanly"):
            assert_clean_launch("ok\n" + line)
