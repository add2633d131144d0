"""Kernels of the GRPO step: Triton on CUDA tensors, torch references elsewhere.

``SEMGRPO_OPS=auto|triton|torch`` (or each op's ``backend=`` keyword) forces a path.
"""

from .advantage import group_advantages, group_advantages_torch, zero_std_groups
from .grpo_loss import LOSS_TYPES, grpo_loss, grpo_loss_torch
from .linear_grpo_loss import linear_grpo_loss, linear_logprobs_and_entropy, linear_token_logprobs
from .logprobs import token_logprobs, token_logprobs_torch
from .loss_options import IMPORTANCE_SAMPLING_LEVELS, TRL_LOSS_TYPES, LossOptions
from .policy_loss import policy_loss_from_logps, token_weights
from .reward import semantic_reward, semantic_reward_torch

__all__ = [
    "IMPORTANCE_SAMPLING_LEVELS",
    "LOSS_TYPES",
    "LossOptions",
    "TRL_LOSS_TYPES",
    "group_advantages",
    "group_advantages_torch",
    "grpo_loss",
    "grpo_loss_torch",
    "linear_grpo_loss",
    "linear_logprobs_and_entropy",
    "linear_token_logprobs",
    "policy_loss_from_logps",
    "semantic_reward",
    "semantic_reward_torch",
    "token_logprobs",
    "token_logprobs_torch",
    "token_weights",
    "zero_std_groups",
]
