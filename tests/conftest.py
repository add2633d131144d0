"""Test-wide settings: offline hub, and the Triton interpreter on machines without an NVIDIA GPU.

TRITON_INTERPRET must be set before triton is first imported (any `semgrpo.ops` import does), so it is
set here, at the top of the first conftest pytest loads.
"""
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "TRITON_INTERPRET" not in os.environ and not (os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi")):
    os.environ["TRITON_INTERPRET"] = "1"

import pytest


@pytest.fixture(scope="session")
def real_data_root(tmp_path_factory) -> Path:
    """A temporary data root holding the real datasets (OpenPecha pairs and titles, DRCD, CMRC 2018), installed
    by `bin/get_data.py --from` with every sha256 checked, as a user's `python bin/get_data.py` leaves them.
    The one way tests read the real data (from `_helpers.real_data_source()`)."""
    from _helpers import SHARED_DATA, real_data_source

    source = real_data_source()
    if source is None:
        pytest.skip(f"no copy of the real datasets to install: set SEMGRPO_TEST_DATA to a folder laid out like the "
                    f"data root (e.g. one filled by python bin/get_data.py), or have {SHARED_DATA}")
    from semgrpo.getdata.install import Options, get_data

    root = tmp_path_factory.mktemp("data_root")
    get_data(root, Options(from_dir=source), log=lambda *_: None)
    return root


@pytest.fixture(scope="session")
def demo_assets():
    """The offline demo's assets, built once into the user's cache (as the demo itself does)."""
    from semgrpo.demo.assets import build_demo

    return build_demo(log=lambda *_: None)


class Launches:
    """bin/ scripts started as `_helpers.run_cli` runs them, without waiting, so that a test can overlap runs
    that do not depend on each other: a 2-rank CPU run keeps only about one of 2 cores busy on average."""

    def __init__(self):
        self.procs = []

    def start(self, script: str, *args: str, launcher: list, log, env: dict | None = None):
        """Popen of `launcher bin/<script> args...` in its own session, stdout and stderr to the file `log`."""
        import subprocess
        from pathlib import Path

        from _helpers import REPO, is_deepspeed_launch, user_env

        with open(log, "w") as out:
            proc = subprocess.Popen(launcher + [str(REPO / "bin" / script), *args], cwd=REPO, stdout=out,
                                    stderr=subprocess.STDOUT, env=user_env(**(env or {})), start_new_session=True)
        proc.log = Path(log)
        proc.deepspeed = is_deepspeed_launch(launcher)
        proc.killed = False
        self.procs.append(proc)
        return proc

    def wait(self, proc, timeout: int = 600) -> tuple[int, str]:
        """(return code, last 4000 characters of its output) once `proc` has exited; killed after `timeout` s.
        A `deepspeed` launch the test did not kill must have exited cleanly (`assert_clean_launch`)."""
        import subprocess

        from _helpers import assert_clean_launch

        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(proc)
            raise
        output = proc.log.read_text(errors="replace")
        if proc.deepspeed and not proc.killed:
            assert_clean_launch(output)
        return proc.returncode, output[-4000:]

    @staticmethod
    def kill(proc) -> None:
        """SIGKILL the launch and everything it started (the launcher and its ranks)."""
        import contextlib
        import signal

        proc.killed = proc.poll() is None  # a kill of a launch still running: its ranks die by a signal
        with contextlib.suppress(ProcessLookupError):  # all of them had exited
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the launcher's process group
        proc.wait()


@pytest.fixture
def launches():
    """A `Launches`; whatever it started that is still running when the test ends is killed."""
    started = Launches()
    yield started
    for proc in started.procs:
        started.kill(proc)


# The fast lane: `python -m pytest -m "not slow" tests` (tests/_slow.py says which tests are slow, and why).
def pytest_addoption(parser):
    parser.addoption("--record-durations", action="store_true",
                     help="rewrite tests/durations.json (the tests over 5 s) from this run's timings")
    parser.addoption("--readme-commands", action="store_true",
                     help="also run every README command as written after a full demo in a copy of the checkout "
                          "(tests marked readme_commands: a long CPU run, kept out of the 20-minute suite)")


def pytest_collection_modifyitems(config, items):
    from _slow import launches_processes, measured_slow

    slow = measured_slow()
    for item in items:
        if item.nodeid in slow or launches_processes(item):
            item.add_marker(pytest.mark.slow)
    # The README's commands after a full demo take longer than the whole suite's budget: they run on request
    # (--readme-commands, CONTRIBUTING "Checks"), and are deselected, said in the summary, otherwise.
    if not config.getoption("--readme-commands"):
        later = [item for item in items if item.get_closest_marker("readme_commands")]
        if later:
            config.hook.pytest_deselected(items=later)
            items[:] = [item for item in items if not item.get_closest_marker("readme_commands")]


def pytest_runtest_logreport(report):
    seconds = _SESSION_SECONDS.setdefault(report.nodeid, 0.0)
    _SESSION_SECONDS[report.nodeid] = seconds + report.duration  # setup + call + teardown


_SESSION_SECONDS: dict[str, float] = {}


def pytest_sessionfinish(session, exitstatus):
    if session.config.getoption("--record-durations") and exitstatus == 0:
        from _slow import write_durations

        write_durations(_SESSION_SECONDS)


# Tests never write into the repository: the checkout's state at the start of the session is compared with
# its state at the end by tests/test_worktree_clean.py (which sorts last).
def pytest_sessionstart(session):
    from _helpers import WORKTREE_KEY, worktree_state

    session.config.stash[WORKTREE_KEY] = worktree_state()
