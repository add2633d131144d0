"""Kernels of the GRPO step: Triton on CUDA tensors, torch references elsewhere.

``SEMGRPO_OPS=auto|triton|torch`` (or each op's ``backend=`` keyword) forces a path.
"""

from .advantage import group_advantages, group_advantages_torch, zero_std_groups
from .grpo_loss import LOSS_TYPES, TRL_LOSS_TYPES, grpo_loss, grpo_loss_torch, token_weights
from .linear_grpo_loss import linear_grpo_loss, linear_logprobs_and_entropy, linear_token_logprobs
from .logprobs import token_logprobs, token_logprobs_torch
from .reward import semantic_reward, semantic_reward_torch

__all__ = [
    "LOSS_TYPES",
    "TRL_LOSS_TYPES",
    "group_advantages",
    "group_advantages_torch",
    "grpo_loss",
    "grpo_loss_torch",
    "linear_grpo_loss",
    "linear_logprobs_and_entropy",
    "linear_token_logprobs",
    "semantic_reward",
    "semantic_reward_torch",
    "token_logprobs",
    "token_logprobs_torch",
    "token_weights",
    "zero_std_groups",
]
