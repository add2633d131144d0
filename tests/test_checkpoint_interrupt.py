"""Issue #12: Ctrl-C finishes the step, saves, exits 130 with one line; a second Ctrl-C exits at once."""
import json
import signal
import subprocess
import sys
import time

import pytest
from _helpers import REPO, user_env

QUICK = ["sft.before_grpo=false", "grpo.max_completion_length=8", "model.lora.r=4", "model.lora.alpha=8",
         "reward.tau=0.5", "train.log_every=1", "train.save_every=1000",
         "train.max_steps=50"]


def _start(out_dir):
    return subprocess.Popen([sys.executable, str(REPO / "bin" / "train_grpo.py"), f"output_dir={out_dir}", *QUICK], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=user_env())


def _wait_for_step(proc, out_dir, *, after, timeout=300):
    """Wait until metrics.jsonl logs a step above `after`."""
    metrics = out_dir / "metrics.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        lines = metrics.read_text().splitlines() if metrics.is_file() else []
        if lines and lines[-1].strip().endswith("}") and json.loads(lines[-1])["step"] > after:
            return
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no step logged (rc={proc.poll()}): {proc.communicate()[1][-3000:]}")


def _lines(stderr):
    return [ln for ln in stderr.splitlines() if ln.strip() and "Warning" not in ln and "warn" not in ln
            and "[INFO]" not in ln and "[WARNING]" not in ln]


@pytest.fixture(scope="module")
def interrupted(demo_assets, tmp_path_factory):
    """A 50-step run stopped by one Ctrl-C after its first logged step: (out_dir, returncode, stderr)."""
    out = tmp_path_factory.mktemp("interrupt") / "run"
    proc = _start(out)
    _wait_for_step(proc, out, after=0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    return out, proc.returncode, err


def _steps(out):
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_ctrl_c_finishes_the_step_saves_and_exits_130(interrupted):
    out, rc, err = interrupted
    assert rc == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    reached = _steps(out)[-1]
    assert 1 <= reached < 50
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == [f"step-{reached:08d}"], ckpts  # the step reached, and no .tmp-* left behind
    final = f"train_grpo.py: interrupted at step {reached}: saved {out / 'checkpoints' / f'step-{reached:08d}'}; " \
            "resume with the same command"
    assert [ln for ln in _lines(err) if "interrupted" in ln] == [final], err[-3000:]
    assert _lines(err)[-1] == final


def test_resume_continues_and_second_ctrl_c_exits_at_once(interrupted):
    out, rc, _ = interrupted
    assert rc == 130
    reached = _steps(out)[-1]
    # A stale .tmp- folder (a save cut short by a second Ctrl-C) is removed at the next start, not the next save.
    stale = out / "checkpoints" / ".tmp-step-00000099"
    (stale / "state").mkdir(parents=True)
    proc = _start(out)  # the same command: resume=auto
    _wait_for_step(proc, out, after=reached)
    assert not stale.exists()
    assert _steps(out)[: reached + 1] == list(range(1, reached + 2))  # continued from the saved step
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    sent = time.time()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert time.time() - sent < 5, "the second Ctrl-C did not exit at once"
    assert "Traceback" not in err, err[-3000:]
