"""Dynamic sampling (grpo.dynamic_sampling): a step refills its flat groups from further prompts.

The runs use a plugin reward that makes most groups flat: 1.0 for every completion, except for the prompts
whose reference hashes into one bucket of four, where it is the completion's length (which varies within a
group). The plugin also logs what it scored, per rank, so the tests can check the prompt order.
"""
import json
import shutil
import sys
import time

import pytest
import torch
from _helpers import assert_same_metrics, deepspeed_launcher, run_metrics

from semgrpo.batching import PromptOrder, ScoredGroups, keep_informative, needs_another_round
from semgrpo.rollout import Rollout

PLUGIN = '''
import json, os, zlib


class MostlyFlat:
    """1.0 everywhere, except the completion's length for prompts whose reference hashes into bucket 0."""

    def __init__(self, buckets):
        self.buckets = buckets

    def __call__(self, prompts, completions, references, **kwargs):
        with open(os.environ["SCORED_LOG"] + ".rank" + os.environ.get("RANK", "0"), "a") as f:
            f.write(json.dumps(references) + "\\n")
        return [float(len(c)) if zlib.crc32(r.encode()) % self.buckets == 0 else 1.0
                for c, r in zip(completions, references)]
'''
G = 4  # group size of the unit tests
RUN = ["sft.before_grpo=false", "grpo.max_completion_length=8", "model.lora.r=4", "model.lora.alpha=8",
       "tax_meter.every_steps=0", "reward.functions=[flat=mostly_flat:MostlyFlat]", "reward.kwargs.flat.buckets=4",
       "grpo.dynamic_sampling=true", "grpo.max_resample=12"]


# ----------------------------------------------------------------------------------------------- the pieces


def _scored(rewards_per_group, *, prompt_width, completion_width, tag):
    """Groups of G rows with the given rewards; token ids encode (tag, row) so rows can be traced."""
    n = len(rewards_per_group) * G
    ids = torch.arange(n)[:, None] + 100 * tag
    rollout = Rollout(ids.repeat(1, prompt_width), torch.ones(n, prompt_width, dtype=torch.long),
                      ids.repeat(1, completion_width), torch.ones(n, completion_width, dtype=torch.long))
    rewards = torch.tensor([r for group in rewards_per_group for r in group], dtype=torch.float32)
    return ScoredGroups([f"ex{tag}.{g}" for g in range(len(rewards_per_group))], rollout,
                        [f"c{tag}.{i}" for i in range(n)], rewards, {"flat": rewards.clone()})


FLAT, VARIED = [1.0] * G, [1.0, 2.0, 1.0, 3.0]


def test_keeps_the_first_informative_groups_in_the_order_drawn():
    rounds = [_scored([FLAT, VARIED, FLAT], prompt_width=3, completion_width=2, tag=0),
              _scored([VARIED, FLAT, VARIED], prompt_width=5, completion_width=4, tag=1)]
    assert not needs_another_round(rounds, group_size=G, max_resample=4)  # 3 informative >= 3 wanted
    assert needs_another_round(rounds[:1], group_size=G, max_resample=4)
    assert not needs_another_round(rounds[:1], group_size=G, max_resample=0)  # no rounds left
    batch = keep_informative(rounds, group_size=G, pad_id=-1)
    assert batch.examples == ["ex0.1", "ex1.0", "ex1.2"]
    assert batch.completions == [f"c0.{i}" for i in range(4, 8)] + [f"c1.{i}" for i in (*range(4), *range(8, 12))]
    assert batch.rewards.tolist() == VARIED * 3 and batch.per_fn["flat"].tolist() == VARIED * 3
    # Prompts padded on the left, completions on the right, to the widest round; the padding is masked.
    r = batch.rollout
    assert r.prompt_ids.shape == (12, 5) and r.completion_ids.shape == (12, 4)
    assert r.prompt_mask[:4].tolist() == [[0, 0, 1, 1, 1]] * 4 and r.prompt_ids[0].tolist() == [-1, -1, 4, 4, 4]
    assert r.completion_mask[:4].tolist() == [[1, 1, 0, 0]] * 4 and r.completion_ids[0].tolist() == [4, 4, -1, -1]
    assert r.prompt_ids[4:, 0].tolist() == [100 + i for i in (*range(4), *range(8, 12))]
    assert r.prompt_mask[4:].all() and r.completion_mask[4:].all()


def test_tops_up_with_flat_groups_in_the_order_drawn_when_the_rounds_run_out():
    rounds = [_scored([FLAT, FLAT, VARIED], prompt_width=2, completion_width=2, tag=0),
              _scored([FLAT, FLAT, FLAT], prompt_width=2, completion_width=2, tag=1)]
    batch = keep_informative(rounds, group_size=G, pad_id=0)
    assert batch.examples == ["ex0.0", "ex0.1", "ex0.2"]  # the one informative group and the first two flat
    assert len(batch.rollout) == 3 * G and batch.rewards.tolist() == FLAT + FLAT + VARIED


# ----------------------------------------------------------------------------------------------- whole runs


def _demo_group_size():
    from semgrpo.cli import DEMO_CONFIG
    from semgrpo.config import load_config

    return load_config([DEMO_CONFIG], []).grpo.group_size


def _scored_batches(log, rank):
    """The prompts (references, one per group) of every batch the plugin scored on `rank`, in order."""
    return [json.loads(line)[::_demo_group_size()] for line in open(f"{log}.rank{rank}")]


def _prompt_order(world_size):
    """The demo's training examples and the prompt order a `world_size` run of it draws from."""
    from semgrpo.cli import DEMO_CONFIG
    from semgrpo.config import load_config
    from semgrpo.session import prepare

    cfg = load_config([DEMO_CONFIG], [])
    setup = prepare(cfg, need_encoder=False)
    per_rank = setup.plan.per_rank // cfg.grpo.group_size
    return setup.train, PromptOrder(len(setup.train), prompts_per_step=per_rank * world_size, seed=cfg.seed)


def _check_trained_on_full_informative_groups(rows, prompts_per_step):
    for r in rows:
        assert r["sampling/informative_fraction"] == 1.0 and r["reward/frac_zero_std_groups"] == 0.0, r
        assert r["sampling/prompts_drawn"] == r["sampling/rounds"] * prompts_per_step
    # The reward is flat for about 3 groups in 4: the steps needed more than one round.
    assert max(r["sampling/rounds"] for r in rows) > 1


@pytest.mark.skipif(shutil.which("deepspeed") is None, reason="the deepspeed launcher is not on PATH")
def test_kill_and_resume_equals_the_straight_run_and_two_ranks_agree(demo_assets, tmp_path, launches):
    """Three launches side by side: a straight 1-process run, the same run killed after its step-2 checkpoint
    (then resumed), and a 2-rank ZeRO-3 run."""
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "mostly_flat.py").write_text(PLUGIN)
    args = RUN + ["grpo.max_steps=4", "run.save_every=2"]
    straight, resumed, two = tmp_path / "straight", tmp_path / "resumed", tmp_path / "two_ranks"
    env = lambda name: {"PYTHONPATH": str(plugin), "SCORED_LOG": str(tmp_path / name)}
    ranks = launches.start("train_grpo.py", f"output_dir={two}", *RUN, "grpo.max_steps=3", log=tmp_path / "two.log",
                           launcher=deepspeed_launcher(), env=env("two"))
    a = launches.start("train_grpo.py", f"output_dir={straight}", *args, launcher=[sys.executable],
                       log=tmp_path / "straight.log", env=env("straight"))
    victim = launches.start("train_grpo.py", f"output_dir={resumed}", *args, launcher=[sys.executable],
                            log=tmp_path / "victim.log", env=env("resumed"))
    marker = resumed / "checkpoints" / "step-00000002" / "COMPLETE"
    deadline = time.time() + 600
    while not marker.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    launches.kill(victim)
    assert marker.exists(), victim.log.read_text()[-3000:]
    assert not (resumed / "summary.json").exists(), "the run finished before it could be killed"
    again = launches.start("train_grpo.py", f"output_dir={resumed}", *args, launcher=[sys.executable],
                           log=tmp_path / "resumed.log", env=env("resumed"))
    for proc in (a, again, ranks):
        code, out = launches.wait(proc)
        assert code == 0, out

    # Kill + resume: the same scalars as the straight run, every step full of informative groups.
    rows = run_metrics(straight)
    assert_same_metrics(rows, run_metrics(resumed), [1, 2, 3, 4])
    train, order = _prompt_order(world_size=1)
    _check_trained_on_full_informative_groups(rows, order.prompts_per_step)
    # The checkpoints count the batches drawn ahead of the steps, and the plugin scored exactly the prompt
    # order's batches, one after the other (the resumed run continued where its checkpoint said).
    drawn = int(sum(r["sampling/rounds"] for r in rows))
    state = json.loads((straight / "checkpoints" / "step-00000004" / "client_state.json").read_text())
    assert (state["step"], state["batches_drawn"]) == (4, drawn)
    batches = _scored_batches(tmp_path / "straight", 0)
    assert len(batches) == drawn
    assert batches == [[train[i].reference for i in order.indices(k, rank=0, world_size=1)] for k in range(drawn)]
    mid = json.loads((resumed / "checkpoints" / "step-00000002" / "client_state.json").read_text())
    assert mid["batches_drawn"] == sum(r["sampling/rounds"] for r in rows[:2])
    assert _scored_batches(tmp_path / "resumed", 0)[-(drawn - mid["batches_drawn"]):] == batches[mid["batches_drawn"]:]

    # 2 ranks under ZeRO-3: both ran the same rounds, each on its share of the same batches of the order.
    rows = run_metrics(two)
    train, order = _prompt_order(world_size=2)
    _check_trained_on_full_informative_groups(rows, order.prompts_per_step)
    drawn = int(sum(r["sampling/rounds"] for r in rows))
    for rank in (0, 1):
        want = [[train[i].reference for i in order.indices(k, rank=rank, world_size=2)] for k in range(drawn)]
        assert _scored_batches(tmp_path / "two", rank) == want, rank
    state = json.loads((two / "checkpoints" / "step-00000003" / "client_state.json").read_text())
    assert state["batches_drawn"] == drawn


def test_bad_settings_are_config_errors():
    from semgrpo.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="grpo.max_resample must be >= 0, got -1"):
        load_config([], ["grpo.max_resample=-1"])
    with pytest.raises(ConfigError, match="grpo.dynamic_sampling must be true or false"):
        load_config([], ["grpo.dynamic_sampling=often"])
