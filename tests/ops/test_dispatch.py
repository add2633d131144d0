import pytest
import torch

from semgrpo.ops._dispatch import use_triton


def test_auto_cpu_is_torch(monkeypatch):
    monkeypatch.delenv("SEMGRPO_OPS", raising=False)
    assert use_triton(torch.zeros(2)) is False
    assert use_triton(torch.zeros(2), backend="torch") is False


def test_env_forces_and_argument_wins(monkeypatch):
    monkeypatch.setenv("SEMGRPO_OPS", "torch")
    assert use_triton(torch.zeros(2)) is False
    monkeypatch.setenv("SEMGRPO_OPS", "bogus")
    with pytest.raises(ValueError, match="bogus"):
        use_triton(torch.zeros(2))
    assert use_triton(torch.zeros(2), backend="torch") is False


def test_forced_triton_on_cpu_needs_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert use_triton(torch.zeros(2), None, backend="triton") is True
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        use_triton(torch.zeros(2), backend="triton")
