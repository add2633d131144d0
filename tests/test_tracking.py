"""RunTracker: TensorBoard, metrics.jsonl (with resume truncation), progress bar, summary, plot."""
from __future__ import annotations

import json

import pytest

from semgrpo import tracking
from semgrpo.tracking import RunTracker, escape_markdown, read_metrics


class FakeClock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(tracking.time, "monotonic", c)
    return c


def _events(output_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(output_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def _run(output_dir, steps, *, start_step=0, total=10):
    with RunTracker(output_dir, enabled=True, total_steps=total, start_step=start_step) as tr:
        for s in steps:
            tr.log(s, {"reward/mean": s / 10, "loss": 1.0 / s})
    return tr


def test_log_writes_tensorboard_jsonl_and_progress(tmp_path, capsys):
    tr = RunTracker(tmp_path / "run", enabled=True, total_steps=4, desc="grpo")
    tr.log(1, {"reward/mean": 0.5, "loss": 0.25, "kl": float("nan")})
    tr.log(2, {"reward/mean": 0.75, "loss": 0.125, "kl": 0.0})
    tr.log_text(2, "samples", "*bold* <b>\nline_2")
    tr.log_text(2, "table", "| a | b |\n|---|---|\n| 1 | x\\|y |", escape=False)
    tr.close()
    tr.close()  # idempotent
    lines = (tmp_path / "run" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(x) for x in lines] == [
        {"step": 1, "reward/mean": 0.5, "loss": 0.25, "kl": None},  # NaN is null: strict JSON
        {"step": 2, "reward/mean": 0.75, "loss": 0.125, "kl": 0.0},
    ]
    acc = _events(tmp_path / "run")
    assert [(e.step, e.value) for e in acc.Scalars("reward/mean")] == [(1, 0.5), (2, 0.75)]
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 0.25), (2, 0.125)]
    text = acc.Tensors("samples/text_summary")[0].tensor_proto.string_val[0].decode()
    assert text == "\\*bold\\* \\<b\\>  \nline\\_2"
    table = acc.Tensors("table/text_summary")[0].tensor_proto.string_val[0].decode()
    assert table == "| a | b |\n|---|---|\n| 1 | x\\|y |"
    err = capsys.readouterr().err
    assert "grpo" in err and "2/4" in err and "reward=0.750" in err and "loss=0.125" in err
    with pytest.raises(RuntimeError, match="closed"):
        tr.log(3, {"loss": 1.0})


def test_escape_markdown_hand_values():
    assert escape_markdown("plain བོད་") == "plain བོད་"
    assert escape_markdown("a*b_c\n# x") == "a\\*b\\_c  \n\\# x"
    assert escape_markdown("[l](u) `c` 1. | & \\") == "\\[l\\]\\(u\\) \\`c\\` 1\\. \\| &amp; \\\\"
    assert escape_markdown("x\r\ny") == "x  \ny"
    with pytest.raises(TypeError, match="int"):
        escape_markdown(3)


def test_resume_truncates_to_match_uninterrupted_run(tmp_path, clock):
    _run(tmp_path / "a", range(1, 7))
    # b logged up to step 5, crashed mid-line, and resumes from its step-3 checkpoint.
    _run(tmp_path / "b", range(1, 6))
    with open(tmp_path / "b" / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 6, "rew')
    _run(tmp_path / "b", range(4, 7), start_step=3)
    a = (tmp_path / "a" / "metrics.jsonl").read_bytes()
    assert (tmp_path / "b" / "metrics.jsonl").read_bytes() == a
    assert [r["step"] for r in read_metrics(tmp_path / "b")] == [1, 2, 3, 4, 5, 6]
    # TensorBoard hides the events after the resume step from the first session (purge_step).
    assert [e.step for e in _events(tmp_path / "b").Scalars("loss")] == [1, 2, 3, 4, 5, 6]
    # A fresh run (start_step 0) in the same dir starts the history over.
    _run(tmp_path / "b", [1])
    assert [r["step"] for r in read_metrics(tmp_path / "b")] == [1]


def test_summary_values_and_wall_time_across_resume(tmp_path, clock):
    out = tmp_path / "run"
    tr = RunTracker(out, enabled=True, total_steps=12)
    clock.t = 110.0
    for s in range(1, 8):
        tr.log(s, {"reward/mean": s / 10, "loss": 0.5})
    clock.t = 112.0
    tr.close()  # session 1: 12 s
    clock.t = 500.0
    tr = RunTracker(out, enabled=True, total_steps=12, start_step=5)
    for s in range(6, 11):
        tr.log(s, {"reward/mean": s / 10, "loss": 0.5})
    tr.log(11, {"loss": 0.5})  # no reward: not part of the reward means
    tr.log(12, {"reward/mean": float("nan")})  # null: skipped too
    clock.t = 503.0
    got = tr.summary(tau=0.42)
    # Rewards 0.1 .. 1.0 over 10 steps: 20% = 2 steps each end.
    assert got["reward_mean_first_20pct"] == pytest.approx((0.1 + 0.2) / 2)
    assert got["reward_mean_last_20pct"] == pytest.approx((0.9 + 1.0) / 2)
    assert got["steps"] == 12 and got["logged_steps"] == 12 and got["tau"] == 0.42
    assert got["wall_seconds"] == pytest.approx(12.0 + 3.0)
    assert json.loads((out / "summary.json").read_text()) == got
    tr.close()
    with pytest.raises(ValueError, match="clash"):
        tr.summary(steps=3)


@pytest.mark.parametrize("damage", ['{"wall_seconds": 12.0, "wandb_ru', "[]", '{"wall_seconds": "12 s"}', "\udcff"],
                         ids=["truncated", "a-list", "wrong-type", "not-utf8"])
def test_a_damaged_tracker_state_is_set_aside_and_the_resume_goes_on(tmp_path, clock, capsys, damage):
    out = tmp_path / "run"
    _run(out, range(1, 4))
    state = out / "tracker_state.json"
    state.write_bytes(damage.encode("utf-8", "surrogateescape"))
    capsys.readouterr()
    clock.t = 200.0
    tr = RunTracker(out, enabled=True, total_steps=10, start_step=3)
    clock.t = 205.0
    tr.log(4, {"reward/mean": 0.4})
    assert tr.wall_seconds() == pytest.approx(5.0)  # this session only: the earlier time is lost, not made up
    tr.close()
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and str(state) in warnings[0] and "set aside as tracker_state.json.damaged-" in \
        warnings[0], warnings
    aside = [p for p in out.iterdir() if p.name.startswith("tracker_state.json.damaged-")]
    assert len(aside) == 1 and aside[0].read_bytes() == damage.encode("utf-8", "surrogateescape")  # kept as it was
    assert json.loads(state.read_text())["wall_seconds"] == pytest.approx(5.0)
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4]


def test_summary_at_least_one_step_each_end(tmp_path, clock):
    out = tmp_path / "few"
    with RunTracker(out, enabled=True, total_steps=3) as tr:
        for s, r in ((1, 0.2), (2, 0.4), (3, 0.9)):
            tr.log(s, {"reward/mean": r})
        got = tr.summary()
    assert (got["reward_mean_first_20pct"], got["reward_mean_last_20pct"]) == (0.2, 0.9)
    with RunTracker(tmp_path / "none", enabled=True, total_steps=3) as tr:
        tr.log(1, {"loss": 1.0})
        got = tr.summary()
    assert got["reward_mean_first_20pct"] is None and got["reward_mean_last_20pct"] is None


def test_plot_reward_curve_writes_png(tmp_path):
    with RunTracker(tmp_path, enabled=True, total_steps=30) as tr:
        empty = tr.plot_reward_curve(tmp_path / "empty.png")
        for s in range(1, 31):
            tr.log(s, {"reward/mean": (s % 7) / 7})
        png = tr.plot_reward_curve(window=5)
        with pytest.raises(ValueError, match="window=0"):
            tr.plot_reward_curve(window=0)
    assert png == tmp_path / "reward_curve.png"
    for p in (png, empty):
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_disabled_tracker_writes_nothing(tmp_path):
    out = tmp_path / "rank1"
    tr = RunTracker(out, enabled=False, total_steps=5, start_step=2)
    tr.log(3, {"reward/mean": 0.5})
    tr.log_text(3, "samples", "x")
    assert tr.summary(tau=0.1) == {}
    assert tr.plot_reward_curve() is None
    assert tr.wall_seconds() == 0.0
    tr.close()
    assert not out.exists()
    with pytest.raises(ValueError, match="is not a number"):  # bad input is caught on every rank
        tr.log(4, {"loss": "high"})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(enabled=True, total_steps=0), "total_steps=0"),
        (dict(enabled=True, total_steps=5, start_step=-1), "step=-1"),
        (dict(enabled=True, total_steps=5, start_step=6), "start_step=6 is past total_steps=5"),
        (dict(enabled=1, total_steps=5), "enabled=1"),
    ],
)
def test_constructor_rejects_bad_values(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        RunTracker(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_log_rejects_bad_values(tmp_path):
    with RunTracker(tmp_path, enabled=True, total_steps=5) as tr:
        with pytest.raises(ValueError, match="step=-2"):
            tr.log(-2, {"loss": 1.0})
        with pytest.raises(ValueError, match="'step' is not allowed"):
            tr.log(1, {"step": 1.0})
        with pytest.raises(ValueError, match="expected a dict"):
            tr.log(1, [("loss", 1.0)])
        with pytest.raises(ValueError, match="tag=''"):
            tr.log_text(1, "", "x")
        with pytest.raises(ValueError, match="text has type bytes"):
            tr.log_text(1, "t", b"x")
        with pytest.raises(ValueError, match="escape='no'"):
            tr.log_text(1, "t", "x", escape="no")
    assert read_metrics(tmp_path) == []
