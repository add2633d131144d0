"""Whole GRPO runs with the README's two reward examples: the plugin file examples/rewards/length_plugin.py (copied
into a temporary folder on PYTHONPATH, as a user puts it) and a loopback reward server answering with examples/rewards/reward_server.py's
scores. A good server's values reach the weighted sum; a server that times out, fails with 500 or returns the
wrong number of scores stops the run with one `error:` line and exit status 2, keeping every checkpoint
written before, from which the run resumes."""
import json
import os
import shutil
import socket
import sys

import pytest
import torch
from _helpers import deepspeed_launcher
from _tolerance import stored_rtol, sum_rtol
from test_reward_plugins import EXAMPLES, RewardStub, distinct_share

from semgrpo.checkpoint import list_checkpoints
from semgrpo.checkpoint.integrity import verify_checkpoint
from semgrpo.rewards import LanguageConsistency

pytestmark = pytest.mark.skipif(shutil.which("deepspeed") is None, reason="the deepspeed launcher is not on PATH")

TINY = ["sft.before_grpo=false", "grpo.max_completion_length=8", "model.lora.r=4", "model.lora.alpha=8",
        "tax_meter.every_steps=0", "grpo.max_steps=3", "run.save_every=1", "run.keep_last=3"]
WEIGHTS = {"language": 1.0, "lenmatch": 0.5, "remote": 2.0}
TOLERANCE = 0.3


def _args(out, url, *extra):
    return [f"output_dir={out}", *TINY, f"reward.functions=[language, lenmatch=length_plugin:LengthMatch, {url}]",
            f"reward.weights.lenmatch={WEIGHTS['lenmatch']}", f"reward.weights.remote={WEIGHTS['remote']}",
            f"reward.kwargs.lenmatch={{tolerance: {TOLERANCE}}}", *extra]


def _env(plugin_dir):
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(plugin_dir), os.environ.get("PYTHONPATH")])),
            "SEMGRPO_REMOTE_BACKOFF": "0.05"}


def _expected_step(batches):
    """A step's reward scalars computed here from the completions the server received (all ranks' requests), and
    whether every component scored every sample (no None)."""
    prompts = [p for b in batches for p in b["prompts"]]
    completions = [c for b in batches for c in b["completions"]]
    references = [r for b in batches for r in b["references"]]
    from length_plugin import LengthMatch  # the plugin file itself

    parts = {"language": LanguageConsistency("tibetan")(prompts, completions, references),
             "lenmatch": LengthMatch(TOLERANCE)(prompts, completions, references),
             "remote": distinct_share(completions)}
    totals = [sum(WEIGHTS[n] * parts[n][i] for n in parts if parts[n][i] is not None) for i in range(len(completions))]
    means = {n: sum(v for v in vals if v is not None) / sum(v is not None for v in vals) for n, vals in parts.items()}
    every_sample_scored = not any(None in vals for vals in parts.values())
    return {"reward/mean": sum(totals) / len(totals), **{f"reward/{n}": m for n, m in means.items()}}, every_sample_scored


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _one_error_line(output, url):
    """The one `train_grpo.py: error: ...` line of a launch's output; no traceback."""
    errors = [line for line in output.splitlines() if ": error: " in line]
    assert len(errors) == 1, output[-3000:]
    line = errors[0]  # on a line of its own: the progress bar was closed before it
    assert line.startswith("train_grpo.py: error: ") and url in line, errors[0]
    assert "Traceback (most recent call last)" not in output, output[-3000:]
    return line


def _intact_checkpoints(out):
    steps = [step for step, path in list_checkpoints(out) if verify_checkpoint(path) is None]
    assert not list((out / "checkpoints").glob(".tmp*")), list((out / "checkpoints").iterdir())
    return steps


def test_plugin_and_server_rewards_train_and_failing_servers_stop_cleanly(demo_assets, tmp_path, launches,
                                                                         monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))  # the stubs answer with the example server's scores
    # 2 ranks: each step sends 2 requests (one per rank, 16 completions each); the server never fails.
    good = RewardStub()
    # 2 ranks: the first request of step 3 gets one score too few, the other rank's is answered.
    short = RewardStub(plan=["ok"] * 4 + ["short", "ok"])
    # 1 process: steps 1 and 2 are answered, step 3 times out (1.5 s, 1 retry) or fails with 500 (2 retries).
    slow = RewardStub(plan=["ok", "ok", "sleep"], sleep=6.0)
    broken = RewardStub(plan=["ok", "ok", "500"])
    stubs = [good, short, slow, broken]
    # The plugin file, copied into a folder of its own as a user's would be (the README's example, unchanged).
    plugin_dir = tmp_path / "my_rewards"
    plugin_dir.mkdir()
    shutil.copy(EXAMPLES / "length_plugin.py", plugin_dir)
    try:
        def start(name, stub, launcher, *extra, log=None):
            return launches.start("train_grpo.py", *_args(tmp_path / name, stub.url, *extra), launcher=launcher,
                                  log=tmp_path / f"{log or name}.log", env=_env(plugin_dir))

        runs = {"good": start("good", good, deepspeed_launcher()), "short": start("short", short, deepspeed_launcher()),
                "slow": start("slow", slow, [sys.executable], "reward.remote_timeout=1.5", "reward.remote_retries=1"),
                "broken": start("broken", broken, [sys.executable])}

        # The 500 run: 2 answered requests, then 3 attempts at step 3; checkpoints 1 and 2 intact.
        code, output = launches.wait(runs["broken"])
        line = _one_error_line(output, broken.url)
        assert code == 2 and "HTTP 500" in line and "(3 attempts)" in line, output[-3000:]
        assert len(broken.batches) == 5
        assert _intact_checkpoints(tmp_path / "broken") == [1, 2]
        # Once the server is mended, the same command resumes from step 2 and runs step 3 only.
        broken.plan = ["ok"]
        resumed = start("broken", broken, [sys.executable], log="resumed")

        code, output = launches.wait(runs["slow"])
        line = _one_error_line(output, slow.url)
        assert code == 2 and "timed out after 1.5 s (2 attempts)" in line, output[-3000:]
        assert len(slow.batches) == 4 and _intact_checkpoints(tmp_path / "slow") == [1, 2]

        code, output = launches.wait(runs["short"])
        line = _one_error_line(output, short.url)
        assert code == 2, output[-3000:]  # the launcher passes a rank's status on
        assert "returned 15 values for 16 completions" in line, line
        assert _intact_checkpoints(tmp_path / "short") == [1, 2]

        code, output = launches.wait(runs["good"])
        assert code == 0, output[-3000:]
        code, output = launches.wait(resumed)
        assert code == 0, output[-3000:]
        assert len(broken.batches) == 6 and _intact_checkpoints(tmp_path / "broken") == [1, 2, 3]
        assert json.loads((tmp_path / "broken" / "summary.json").read_text())["total_steps"] == 3
        assert [r["step"] for r in _metrics(tmp_path / "broken")] == [1, 2, 3]
    finally:
        for stub in stubs:
            stub.close()

    # Every rank scored its own 16 completions at each of the 3 steps.
    assert [len(b["completions"]) for b in good.batches] == [16] * 6
    rows = _metrics(tmp_path / "good")
    assert [r["step"] for r in rows] == [1, 2, 3]
    # A logged value is an fp32 mean of 32 non-negative scores (no cancellation), then stored: relative bound.
    rel = sum_rtol(torch.float32, 32) + stored_rtol(torch.float32)
    for step, row in enumerate(rows):
        expected, every_sample_scored = _expected_step(good.batches[2 * step:2 * step + 2])
        for key, value in expected.items():
            assert row[key] == pytest.approx(value, rel=rel, abs=0), (step + 1, key)
        if every_sample_scored:
            # No sample left out: the mean of the weighted sum is the weighted sum of the means (3 more roundings).
            assert row["reward/mean"] == pytest.approx(sum(w * row[f"reward/{n}"] for n, w in WEIGHTS.items()),
                                                       rel=2 * rel + 3 * stored_rtol(torch.float32), abs=0)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(tmp_path / "good" / "tensorboard"))
    board.Reload()
    assert {"reward/lenmatch", "reward/remote", "reward/language", "reward/mean"} <= set(board.Tags()["scalars"])


def test_a_hostile_reply_to_one_of_2_ranks_stops_both_with_exit_2_and_one_error_line(demo_assets, tmp_path,
                                                                                     launches, monkeypatch):
    """Step 2's first request gets 100,000 nested `[`, the other rank's an ordinary answer. The ranks are started
    as 2 processes of their own (no launcher, which would stop the second rank itself once the first exits), so
    that each rank's exit status shows: both stop with status 2, rank 0 with the one error line, neither with a
    traceback or a broken connection, and checkpoint 1 stays intact."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    stub = RewardStub(plan=["ok", "ok", "nested", "ok"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "hostile"
    args = [f"output_dir={out}", *TINY, f"reward.functions=[language, {stub.url}]"]
    common = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
              "SEMGRPO_REMOTE_BACKOFF": "0.05"}
    try:
        ranks = [launches.start("train_grpo.py", *args, launcher=[sys.executable], log=tmp_path / f"rank{r}.log",
                                env={**common, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in (0, 1)]
        (code0, output0), (code1, output1) = (launches.wait(proc) for proc in ranks)
    finally:
        stub.close()
    line = _one_error_line(output0, stub.url)
    assert "replied with JSON holding 100000 '[' or '{'" in line, line
    assert (code0, code1) == (2, 2), (output0[-2000:], output1[-2000:])
    for output in (output0, output1):
        assert "Traceback" not in output and "gloo" not in output.lower(), output[-3000:]
    assert ": error: " not in output1, output1[-2000:]  # rank 0 speaks for every rank
    assert len(stub.batches) == 4 and _intact_checkpoints(out) == [1]
