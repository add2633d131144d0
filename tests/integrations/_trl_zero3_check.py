"""Run by test_trl_zero3.py in a fresh process: semgrpo's completion forward (the one use_semgrpo_loss installs)
on a tiny Llama inside a single-process DeepSpeed ZeRO-3 engine (CPU, gloo) against the same model without
DeepSpeed, untied and tied embeddings. The LM head module's own forward never runs: its weight is read inside
the model's forward (the engine fetches it there, and again before the backward) and must be partitioned again
afterwards; loss and every full gradient must match. Prints ZERO3-OK on success."""

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


def _run(tied: bool, zero: bool):
    import deepspeed

    from semgrpo.integrations.trl import _install_completion_forward

    model = _model(tied)
    _install_completion_forward(model)
    call = model
    if zero:
        cfg = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}, "steps_per_print": 10**9,
               "zero_allow_untested_optimizer": True}
        call, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
                                        config=cfg)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 48, (3, 9), generator=g)
    K = 5
    on = torch.ones(3, K, dtype=torch.bool)
    on[1, 3:] = False
    weights = torch.randn(3, K, generator=g)
    logp, ent = call(input_ids=ids, attention_mask=torch.ones_like(ids), semgrpo_ids=ids[:, -K:], semgrpo_on=on,
                     semgrpo_temperature=0.8)
    loss = (weights * logp).sum() + 0.1 * ent.sum()  # both outputs carry gradient
    if zero:
        assert model.lm_head.weight.numel() == 0, "the head should be partitioned again after the forward"
        call.backward(loss)
        grads = {n: deepspeed.utils.safe_get_full_grad(p).clone() for n, p in model.named_parameters()}
    else:
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return loss.detach(), grads


def main() -> int:
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    for tied in (False, True):
        loss_ref, grads_ref = _run(tied, zero=False)
        loss, grads = _run(tied, zero=True)
        # a partitioned head gathered around the op vs a plain one: summation order only (2 layers, <= 64 terms)
        rtol = chain_rtol(torch.float32, 64, depth=2 * 2 + 2)
        assert abs(loss.item() - loss_ref.item()) <= rtol * abs(loss_ref.item()), (loss.item(), loss_ref.item())
        assert sorted(grads) == sorted(grads_ref)
        for name, g in grads_ref.items():
            assert_close_scaled(grads[name], g, rtol, msg=f"tied={tied} {name}")
    print("ZERO3-OK")
    return 0


if __name__ == "__main__":
    from semgrpo.errors import run_entry_point

    sys.exit(run_entry_point("_trl_zero3_check.py", main))  # leaves the process group on every way out
