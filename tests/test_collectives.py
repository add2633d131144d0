"""The step's collectives on the backend a GPU cluster gets.

On GPUs the default process group is what `session.init_distributed` asks DeepSpeed for. NCCL serves only
CUDA tensors, and the step reduces CPU tensors (kept counts, metrics). No GPU here, so NCCL is played by a
real two-rank group whose only backend is for device type cuda ("cuda:gloo"): like NCCL, it rejects a
CPU tensor with "No backend type associated with device type cpu". Each test runs two child processes,
ranks 0 and 1 (a process group cannot be torn down and rebuilt cleanly inside pytest's own process).
"""
import socket
import subprocess
import sys
import textwrap

from _helpers import REPO, user_env

# Play a CUDA machine: DeepSpeed's init gets whatever backend semgrpo asks for, with nccl -> the stand-in.
_PRELUDE = """
import os, socket, torch, torch.distributed as td
import deepspeed
torch.cuda.is_available = lambda: True
torch.cuda.set_device = lambda *_: None
asked = []
def fake_init_distributed(dist_backend=None, **_):
    asked.append(dist_backend)
    td.init_process_group(backend=dist_backend.replace("nccl", "gloo") if ":" in dist_backend else "cuda:gloo")
deepspeed.init_distributed = fake_init_distributed
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(body: str) -> subprocess.CompletedProcess:
    """Run `body` on ranks 0 and 1; returns rank 0's process (rank 1 must end the same way)."""
    # Each rank leaves the group before it exits: a rank exiting while gloo still runs can abort the other.
    code = textwrap.dedent(_PRELUDE) + textwrap.dedent(body) + "\nif td.is_initialized(): td.destroy_process_group()\n"
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=user_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2",
                                                      MASTER_ADDR="127.0.0.1", MASTER_PORT=port))
             for r in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert procs[0].returncode == procs[1].returncode, outs[1][1][-2000:]
    return subprocess.CompletedProcess(procs[0].args, procs[0].returncode, *outs[0])


def test_every_step_collective_works_on_the_group_a_gpu_run_gets():
    proc = _run("""
        from semgrpo.session import init_distributed
        from semgrpo.dist import gather_cat, sum_across
        init_distributed()
        print("asked", asked, td.get_backend_config())
        # the shapes and dtypes train.py, sft.py, tau.py and the tax meter reduce
        print("sum", sum_across(torch.tensor([3.0, 17.0], dtype=torch.float64)).tolist())
        print("cat", gather_cat(torch.tensor([1.0, float("nan"), 2.0]) + td.get_rank()).tolist())
        print("cat2", gather_cat(torch.ones(2, 3, 3)).shape)
        from semgrpo.dist import raise_on_any_rank
        from semgrpo.rewards import RewardError
        raise_on_any_rank(None)
        try:
            raise_on_any_rank(RewardError("bad reply") if td.get_rank() == 1 else None)
        except RewardError as exc:
            print("raised", exc)
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "asked ['cpu:gloo,cuda:nccl']" in proc.stdout
    assert "sum [6.0, 34.0]" in proc.stdout
    assert "cat [1.0, nan, 2.0, 2.0, nan, 3.0]" in proc.stdout
    assert "cat2 torch.Size([4, 3, 3])" in proc.stdout
    assert "raised rank 1: bad reply" in proc.stdout  # a reward error on one rank stops both


def test_the_stand_in_is_nccl_only():
    """The check above can fail: the same call on the NCCL-only stand-in raises as NCCL does."""
    proc = _run("""
        from semgrpo.dist import sum_across
        td.init_process_group(backend="cuda:gloo")
        sum_across(torch.tensor([1.0]))
    """)
    assert proc.returncode != 0
    assert "No backend type associated with device type cpu" in proc.stderr


def test_a_group_initialised_elsewhere_without_cpu_backend_is_one_clear_error():
    proc = _run("""
        from semgrpo.session import init_distributed
        td.init_process_group(backend="cuda:gloo")
        try:
            init_distributed()
        except ValueError as exc:
            print("error:", exc)
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "error: torch.distributed was initialised with backend 'cuda:gloo'" in proc.stdout
    assert "cpu:gloo,cuda:nccl" in proc.stdout


def test_collectives_return_the_input_in_one_process_without_a_group():
    import torch

    from semgrpo.dist import gather_cat, sum_across

    t = torch.tensor([1.0, 2.0])
    assert gather_cat(t) is t and sum_across(t) is t
