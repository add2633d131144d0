"""Checkpoint save/resume on single-process DeepSpeed engines (CPU, gloo) under ZeRO-2 and ZeRO-3."""
from __future__ import annotations

import json
import math
import os
import random

import numpy as np
import pytest
import torch
from _ds_single import ds_config, init_single_process, make_engine
from _tolerance import assert_close_scaled, chain_rtol

from semgrpo import dist
from semgrpo.checkpoint import (
    CheckpointError,
    find_latest_checkpoint,
    is_complete_checkpoint,
    list_checkpoints,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
)
from semgrpo.files import write_json_atomic

VOCAB, SEQ, BATCH = 48, 6, 2


def _tiny_qwen3():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=32,
                      tie_word_embeddings=False)
    torch.manual_seed(1234)  # the base weights are a function of this seed: the adapter test rebuilds them
    return Qwen3ForCausalLM(cfg)


def _peft_model():
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.25, target_modules=["q_proj", "v_proj"])
    model = get_peft_model(_tiny_qwen3(), lora)
    torch.manual_seed(99)
    for name, p in model.named_parameters():  # make lora_B nonzero so the adapter changes outputs
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    return model


@pytest.fixture(scope="module", params=[3, 2], ids=["zero3", "zero2"])
def engine(request):
    init_single_process()
    eng = make_engine(_peft_model(), ds_config(stage=request.param, lr=1e-2))
    eng.train()
    return eng


def _batch(i: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + i)
    return torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)


def _train(engine, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        ids = _batch(i)
        loss = engine(input_ids=ids, labels=ids).loss  # LoRA dropout draws from the torch RNG
        engine.backward(loss)
        engine.step()


def _full_params(engine) -> dict[str, torch.Tensor]:
    import deepspeed

    params = list(engine.module.named_parameters())
    with deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=None):
        return {n: p.detach().clone() for n, p in params}


def _snapshot(obj):
    """Deep copy of nested dicts/lists/tuples of tensors and plain values."""
    if torch.is_tensor(obj):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_snapshot(v) for v in obj]
    return obj


def _optim_state(engine) -> dict:
    """The ZeRO optimizer's state: the inner AdamW state (by index) and the fp32 master partitions."""
    sd = engine.optimizer.state_dict()
    inner = sd["optimizer_state_dict"] if "optimizer_state_dict" in sd else sd["base_optimizer_state"]  # ZeRO-3 / 2
    fp32 = sd["fp32_flat_groups"] if "fp32_flat_groups" in sd else sd["single_partition_of_fp32_groups"]
    return _snapshot({"inner": inner, "fp32": fp32})


def _assert_same(a, b, where="") -> None:
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _draws():
    return random.random(), float(np.random.rand()), torch.rand(3)


def _assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_save_train_load_restores_everything(engine, tmp_path):
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    _train(engine, 2)
    client = {"data_pos": 7, "epoch": 0, "tau": 0.4375, "step": 2}
    path = save_checkpoint(engine, tmp_path, step=2, client_state=client, keep_last=2)
    assert path == tmp_path / "checkpoints" / "step-00000002"
    assert is_complete_checkpoint(path)
    complete = json.loads((path / "COMPLETE").read_text())
    assert complete["step"] == 2 and complete["world_size"] == 1
    assert (path / "rng_rank0.json").is_file() and (path / "adapter" / "adapter_config.json").is_file()

    params_at_save = _full_params(engine)
    optim_at_save = _optim_state(engine)
    sched_at_save = engine.lr_scheduler.state_dict()
    lr_at_save = engine.lr_scheduler.get_lr()
    assert "exp_avg_sq" in repr(optim_at_save["inner"]) and len(optim_at_save["fp32"]) >= 1
    draws_after_save = _draws()
    _train(engine, 2, start=2)
    params_continued = _full_params(engine)
    assert any(not torch.equal(params_at_save[k], params_continued[k]) for k in params_at_save)
    assert engine.global_steps == 4

    # Scramble the RNG so only a restore can reproduce the draws.
    random.seed(77), np.random.seed(77), torch.manual_seed(77)
    restored = load_checkpoint(engine, path)
    assert restored == client
    assert engine.global_steps == 2
    _assert_same_tensors(_full_params(engine), params_at_save)
    _assert_same(_optim_state(engine), optim_at_save)
    assert engine.lr_scheduler.state_dict() == sched_at_save
    assert engine.lr_scheduler.get_lr() == lr_at_save
    r, n, t = _draws()
    assert (r, n) == draws_after_save[:2] and torch.equal(t, draws_after_save[2])
    # Same weights, optimizer, scheduler and RNG (dropout masks): the continuation is bit-identical.
    _train(engine, 2, start=2)
    _assert_same_tensors(_full_params(engine), params_continued)


def test_adapter_dir_loads_with_peft(engine, tmp_path):
    from peft import PeftModel

    path = save_checkpoint(engine, tmp_path, step=3, client_state={}, keep_last=1)
    trained = {n: p for n, p in _full_params(engine).items() if "lora_" in n}
    loaded = PeftModel.from_pretrained(_tiny_qwen3(), str(path / "adapter"))
    got = {n: p.detach() for n, p in loaded.named_parameters() if "lora_" in n}
    assert got.keys() == trained.keys() and len(got) == 4  # q_proj and v_proj, lora_A and lora_B
    _assert_same_tensors(got, trained)
    # The base weights are the untouched seed-1234 init, so the whole model matches the engine's.
    ids = _batch(0)
    loaded.eval(), engine.module.eval()
    with torch.no_grad():
        ref = engine.module(input_ids=ids).logits
        out = loaded(input_ids=ids).logits
    engine.module.train()
    # the same weights in a ZeRO engine and in a plain PEFT model: summation order only (1 layer, <= 32 terms)
    assert_close_scaled(out, ref, chain_rtol(torch.float32, 32, depth=2 + 1))


def test_killed_saves_are_ignored_and_cleaned(engine, tmp_path):
    root = tmp_path / "checkpoints"
    good = save_checkpoint(engine, tmp_path, step=4, client_state={"k": 1}, keep_last=3)
    killed = root / ".tmp-step-00000009"
    (killed / "state").mkdir(parents=True)
    (killed / "COMPLETE").write_text("{}")  # even a marker inside a .tmp- dir does not count
    no_marker = root / "step-00000008"
    (no_marker / "state").mkdir(parents=True)
    assert find_latest_checkpoint(tmp_path) == good
    assert resolve_resume("auto", tmp_path) == good
    with pytest.raises(CheckpointError, match="incomplete"):
        resolve_resume(str(no_marker), tmp_path)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        resolve_resume(str(killed), tmp_path)
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        load_checkpoint(engine, no_marker)

    save_checkpoint(engine, tmp_path, step=5, client_state={"k": 2}, keep_last=3)
    names = sorted(p.name for p in root.iterdir())
    assert names == ["step-00000004", "step-00000005", "step-00000008"]  # tmp gone, incomplete left alone
    assert find_latest_checkpoint(tmp_path) == root / "step-00000005"


def test_keep_last_prunes_oldest_but_never_the_new_one(engine, tmp_path):
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        save_checkpoint(engine, tmp_path, step=step, client_state={"s": step}, keep_last=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 3]
    # A save behind the newest ones (resumed from an older checkpoint) is kept all the same.
    save_checkpoint(engine, tmp_path, step=1, client_state={"s": 10}, keep_last=1)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1, 3]
    # Saving an existing step replaces it.
    save_checkpoint(engine, tmp_path, step=3, client_state={"s": 33}, keep_last=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1, 3]
    assert load_checkpoint(engine, root / "step-00000003") == {"s": 33}
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]


def test_save_rejects_bad_arguments(engine, tmp_path):
    for kwargs, match in (
        (dict(step=-1, client_state={}, keep_last=1), "step=-1"),
        (dict(step=1.0, client_state={}, keep_last=1), "step=1.0"),
        (dict(step=1, client_state={}, keep_last=0), "keep_last=0"),
        (dict(step=1, client_state=[1], keep_last=1), "client_state has type list"),
    ):
        with pytest.raises(ValueError, match=match):
            save_checkpoint(engine, tmp_path, **kwargs)
    assert not (tmp_path / "checkpoints").exists()


def test_resolve_resume_values(tmp_path):
    for off in (None, "", "none", "None", "  NONE "):
        assert resolve_resume(off, tmp_path) is None
    assert resolve_resume("auto", tmp_path) is None  # no checkpoints yet
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_resume(str(tmp_path / "nope"), tmp_path)
    a_file = tmp_path / "step-00000001"
    a_file.write_text("x")
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        resolve_resume(str(a_file), tmp_path)
    with pytest.raises(CheckpointError, match="expected a str path"):
        resolve_resume(3, tmp_path)
    assert issubclass(CheckpointError, ValueError)
    ck = tmp_path / "checkpoints" / "step-00000012"
    ck.mkdir(parents=True)
    write_json_atomic(ck / "COMPLETE", {"step": 12})
    older = tmp_path / "checkpoints" / "step-00000002"
    older.mkdir()
    write_json_atomic(older / "COMPLETE", {"step": 2})
    assert resolve_resume("auto", tmp_path) == ck  # by step number, not by name order of directories
    assert resolve_resume(str(older), tmp_path) == older


def test_write_json_atomic(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text("old")
    write_json_atomic(target, {"b": [1, 2.5], "a": "བོད"})
    assert json.loads(target.read_text(encoding="utf-8")) == {"a": "བོད", "b": [1, 2.5]}
    assert sorted(os.listdir(tmp_path)) == ["summary.json"]
    with pytest.raises(ValueError):
        write_json_atomic(target, {"x": math.nan})
    assert json.loads(target.read_text(encoding="utf-8"))["a"] == "བོད"  # failed write left the old file
    assert sorted(os.listdir(tmp_path)) == ["summary.json"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_json_atomic(tmp_path / "missing" / "x.json", {})


def test_dist_helpers_with_and_without_process_group(monkeypatch):
    init_single_process()
    port = os.environ["MASTER_PORT"]
    init_single_process()  # a second call is harmless: same group, same port
    assert os.environ["MASTER_PORT"] == port
    assert torch.distributed.is_initialized()
    assert (dist.rank(), dist.world_size(), dist.is_main()) == (0, 1, True)
    obj = {"tau": 0.5}
    assert dist.broadcast_object(obj) is obj
    dist.barrier()
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    assert (dist.rank(), dist.world_size(), dist.is_main()) == (0, 1, True)
    assert dist.broadcast_object([1]) == [1]
    dist.barrier()
