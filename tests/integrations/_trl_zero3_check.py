"""Run by test_trl_zero3.py in a fresh process: semgrpo's fused head (semgrpo/fused_head.py, the one the trainer
and the TRL drop-in share) on a tiny Llama inside a single-process DeepSpeed ZeRO-3 engine (CPU, gloo) against the
same model without DeepSpeed, untied and tied embeddings, two ways:

* through the model (``completion_logprobs``): the engine's hooks fetch the head for the head module's forward and
  again before its backward, and it is partitioned again afterwards;
* ``project`` on the still-partitioned head parameters, outside any module call (no hook fetches them): it
  gathers them for a pass without gradient and refuses a differentiable one (ZeRO-3's gradient hooks need the
  module's own backward).

Loss and every full gradient must match. Prints ZERO3-OK on success."""

import os
import socket
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the shared tolerances
from _tolerance import assert_close_scaled, chain_rtol


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model(tied: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, tie_word_embeddings=tied)
    return LlamaForCausalLM(cfg)


def _engine(model):
    import deepspeed

    cfg = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}, "steps_per_print": 10**9,
           "zero_allow_untested_optimizer": True}
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0), config=cfg)
    return engine


def _through_the_model(tied: bool, zero: bool):
    import deepspeed

    from semgrpo.fused_head import completion_logprobs
    from semgrpo.rollout import Rollout

    model = _model(tied)
    call = _engine(model) if zero else model
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 48, (3, 9), generator=g)
    K = 5
    mask = torch.ones(3, K, dtype=torch.long)
    mask[1, 3:] = 0
    r = Rollout(ids[:, :-K], torch.ones(3, 9 - K, dtype=torch.long), ids[:, -K:] * mask, mask)
    weights = torch.randn(3, K, generator=g)
    logp, _ = completion_logprobs(call, r, temperature=0.8)
    loss = (weights * logp).sum()
    if zero:
        assert model.lm_head.weight.numel() == 0, "the head should be partitioned again after the forward"
        call.backward(loss)
        grads = {n: deepspeed.utils.safe_get_full_grad(p).clone() for n, p in model.named_parameters()}
    else:
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return loss.detach(), grads


def _project_partitioned(tied: bool):
    """`project` on the head's parameters as they are between module calls (partitioned under ZeRO-3): gathered for
    a pass without gradient, the same values as the plain model's; refused, with the reason, for one with."""
    from semgrpo.fused_head import project

    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(7, 32, generator=g)
    ids = torch.randint(0, 48, (7,), generator=g)
    plain = _model(tied).lm_head
    with torch.no_grad():
        want = project(hidden, plain.weight, plain.bias, ids, temperature=0.8, with_entropy=True)
    model = _model(tied)
    _engine(model)
    head = model.lm_head
    assert head.weight.numel() == 0, "the check needs a partitioned head"
    with torch.no_grad():
        got = project(hidden, head.weight, head.bias, ids, temperature=0.8, with_entropy=True)
    assert head.weight.numel() == 0, "the head should be partitioned again after the projection"
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # the same op on the same values, gathered around it
    refusal = None
    try:
        project(hidden.requires_grad_(), head.weight, head.bias, ids, temperature=0.8, with_entropy=True)
    except RuntimeError as exc:
        refusal = str(exc)
    assert refusal is not None and "partitioned (DeepSpeed ZeRO-3)" in refusal, refusal


def main() -> int:
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    for tied in (False, True):
        loss_ref, grads_ref = _through_the_model(tied, zero=False)
        loss, grads = _through_the_model(tied, zero=True)
        # a partitioned head gathered by the hooks vs a plain one: summation order only (2 layers, <= 64 terms)
        rtol = chain_rtol(torch.float32, 64, depth=2 * 2 + 2)
        assert abs(loss.item() - loss_ref.item()) <= rtol * abs(loss_ref.item()), (loss.item(), loss_ref.item())
        assert sorted(grads) == sorted(grads_ref)
        for name, g in grads_ref.items():
            assert_close_scaled(grads[name], g, rtol, msg=f"tied={tied} {name}")
        _project_partitioned(tied)
    print("ZERO3-OK")
    return 0


if __name__ == "__main__":
    from semgrpo.errors import run_entry_point

    sys.exit(run_entry_point("_trl_zero3_check.py", main))  # leaves the process group on every way out
