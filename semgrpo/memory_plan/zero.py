"""What the DeepSpeed JSON says about memory: the ZeRO stage, offloading, batch sizes and weight dtype; and DeepSpeed's
own estimate of the model states where it has one."""
from __future__ import annotations

from dataclasses import dataclass

from semgrpo.memory_plan.table import WEIGHT_BYTES


@dataclass(frozen=True)
class ZeroSetup:
    stage: int
    offload_optimizer: str  # "" (none), "cpu" or "nvme"
    offload_param: str  # only ZeRO-3 offloads weights
    micro_batch: int
    grad_accum: int
    weight_dtype: str  # bf16, fp16 or fp32: the JSON's bf16/fp16 section wins over model.dtype, as in DeepSpeed


def zero_setup(ds_config: dict, dtype: str) -> ZeroSetup:
    zero = ds_config.get("zero_optimization") or {}
    stage = int(zero.get("stage", 0))

    def device(section: str) -> str:
        value = zero.get(section)
        name = str(value.get("device", "none")).lower() if isinstance(value, dict) else "none"
        return "" if name in ("", "none") else name

    weight_dtype = dtype
    for name in ("bf16", "fp16"):
        if (ds_config.get(name) or {}).get("enabled") is True:
            weight_dtype = name
    return ZeroSetup(stage=stage,
                     offload_optimizer=device("offload_optimizer") if stage >= 1 else "",
                     offload_param=device("offload_param") if stage == 3 else "",
                     micro_batch=int(ds_config.get("train_micro_batch_size_per_gpu", 1)),
                     grad_accum=int(ds_config.get("gradient_accumulation_steps", 1)),
                     weight_dtype=weight_dtype)


def partitioned_loading(zero: ZeroSetup, world_size: int) -> bool:
    """Whether the policy loads already partitioned (inside `deepspeed.zero.Init`): `is_partitioned`'s rule
    for a world size that need not be running."""
    from semgrpo.partitioned import is_partitioned

    return is_partitioned({"zero_optimization": {"stage": zero.stage}}, world_size)


def deepspeed_estimate(zero: ZeroSetup, *, trainable: int, largest_layer: int, gpus_per_node: int,
                       num_nodes: int) -> tuple[int, int, str] | None:
    """(per GPU, host per node, estimator name) from DeepSpeed's own estimator, or None where it has none.

    The estimators model 16-bit training of ZeRO-2 and ZeRO-3 with every parameter trainable; ZeRO-3's has no
    case for offload_param without offload_optimizer. Its `zero_init` (only the host figure depends on it)
    follows `partitioned_loading`.
    """
    if WEIGHT_BYTES[zero.weight_dtype] != 2 or zero.stage not in (2, 3):
        return None
    if zero.offload_param and not zero.offload_optimizer:
        return None
    if zero.stage == 3:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

        host, gpu, _ = estimate_zero3_model_states_mem_needs(
            total_params=trainable, largest_layer_params=largest_layer, num_gpus_per_node=gpus_per_node,
            num_nodes=num_nodes, cpu_offload=bool(zero.offload_optimizer), cpu_offload_params=bool(zero.offload_param),
            zero_init=partitioned_loading(zero, gpus_per_node * num_nodes))
        return int(gpu), int(host), "estimate_zero3_model_states_mem_needs"
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    host, gpu = estimate_zero2_model_states_mem_needs(
        total_params=trainable, num_gpus_per_node=gpus_per_node, num_nodes=num_nodes,
        cpu_offload=bool(zero.offload_optimizer))
    return int(gpu), int(host), "estimate_zero2_model_states_mem_needs"
