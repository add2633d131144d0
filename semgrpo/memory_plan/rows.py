"""The rows of a stage's plan, for a known model shape and ZeRO setup (the rules are in the package's docstring)."""
from __future__ import annotations

from semgrpo.config import Config
from semgrpo.memory_plan.shape import ModelShape
from semgrpo.memory_plan.table import (
    LOSS_FP32_BYTES,
    OPTIMIZER_BYTES,
    WEIGHT_BYTES,
    MemoryPlan,
    Row,
    format_bytes,
    format_count,
    split_note,
)
from semgrpo.memory_plan.zero import ZeroSetup, deepspeed_estimate, partitioned_loading
from semgrpo.ops.linear_grpo_loss import TILE_ELEMS


def build_plan(shape: ModelShape, zero: ZeroSetup, cfg: Config, *, world_size: int, num_nodes: int,
               stage: str) -> MemoryPlan:
    """The rows for a known model shape and ZeRO setup (plan_for_config without the files)."""
    n, gpus_per_node = world_size, world_size // num_nodes
    lora = cfg.model.lora.enabled
    wb = WEIGHT_BYTES[zero.weight_dtype]
    mixed = wb == 2
    total = shape.params + (shape.lora_params if lora else 0)
    trainable = shape.lora_params if lora else shape.params
    # How many ways ZeRO splits each state.
    p_split, g_split, o_split = (n if zero.stage >= s else 1 for s in (3, 2, 1))
    ds_path = cfg.run.deepspeed

    def place(per_rank: float, offloaded: bool) -> tuple[int, int | None]:
        """(GPU bytes, host bytes per node) of a per-rank amount that lives on the GPU or on the host."""
        return (0, int(per_rank) * gpus_per_node) if offloaded else (int(per_rank), None)

    # Knobs that shrink the model states.
    states_knobs = []
    if zero.stage < 3:
        states_knobs.append("run.deepspeed=ds_configs/zero3.json (ZeRO-3 partitions the weights too)")
    if not (zero.offload_optimizer and (zero.offload_param or zero.stage < 3)):
        states_knobs.append("run.deepspeed=ds_configs/zero3_offload.json (offload_optimizer and offload_param "
                            "to the host)")
    if not lora:
        states_knobs.append("model.lora.enabled=true (train adapters only)")
    if zero.stage >= 1:
        states_knobs.append("more GPUs (smaller ZeRO partitions)")

    params_gpu, params_host = place(wb * total / p_split, bool(zero.offload_param))
    grads_gpu, grads_host = place(wb * trainable / g_split, bool(zero.offload_optimizer) and zero.stage >= 2)
    opt_gpu, opt_host = place(OPTIMIZER_BYTES * trainable / o_split, bool(zero.offload_optimizer))
    counted = ("LoRA adapters" if lora else "trainable")
    rows = [
        Row("parameters", params_gpu, params_host,
            f"{format_count(total)} x {wb} B{split_note(p_split)}", knobs=tuple(states_knobs)),
        Row("gradients", grads_gpu, grads_host,
            f"{format_count(trainable)} {counted} x {wb} B{split_note(g_split)}", knobs=tuple(states_knobs)),
        Row("optimizer states", opt_gpu, opt_host,
            f"{format_count(trainable)} x {OPTIMIZER_BYTES} B (fp32 master, Adam m, v){split_note(o_split)}",
            knobs=tuple(states_knobs)),
    ]

    # ZeRO buffers by DeepSpeed's rules (module docstring), then DeepSpeed's own figure where it has one.
    buffers, pieces = 0, []
    if zero.stage == 3:
        buffers += 2 * wb * shape.largest_layer
        pieces.append(f"largest layer {format_count(shape.largest_layer)} x {2 * wb} B")
    if mixed and not zero.offload_optimizer:
        extra = 2 if zero.stage == 3 else 4  # ZeRO-3's 18 B vs 2+2+12; ZeRO-0/1/2's fp32 gradient copy
        buffers += int(extra * trainable / o_split)
        pieces.append(f"{extra} B x {format_count(trainable)}{split_note(o_split)}")
    buffers_basis = " + ".join(pieces) or "none"
    estimate = deepspeed_estimate(zero, trainable=trainable, largest_layer=shape.largest_layer,
                                  gpus_per_node=gpus_per_node, num_nodes=num_nodes)
    if estimate is not None:
        # The model states of a full-parameter run are DeepSpeed's figure to the byte; the rules above agree with
        # it up to rounding, and when a future estimator differs, its figure wins and the basis says so.
        trainable_gpu = (0 if zero.offload_param else int(wb * trainable / p_split)) + grads_gpu + opt_gpu
        remainder = max(0, estimate[0] - trainable_gpu)
        if abs(remainder - buffers) > 16:
            buffers_basis = f"DeepSpeed's estimate minus the rows above ({estimate[2]})"
        buffers = remainder
    rows.append(Row("ZeRO buffers", buffers, None, buffers_basis, knobs=tuple(states_knobs)))

    ref = 0
    if stage == "grpo":
        if lora:
            ref, ref_basis = 0, "LoRA: the policy with its adapter disabled"
        elif cfg.grpo.beta == 0:
            ref, ref_basis = 0, "grpo.beta = 0: no reference pass"
        else:
            ref = wb * shape.params / p_split
            ref_basis = f"frozen policy copy: {format_count(shape.params)} x {wb} B{split_note(p_split)}"
        ref_gpu, ref_host = place(ref, bool(zero.offload_param))
        rows.append(Row("reference", ref_gpu, ref_host, ref_basis,
                        knobs=("grpo.beta=0 (no reference)", "model.lora.enabled=true (the reference is the "
                                                            "policy with its adapter disabled)",
                               *states_knobs)))

    states_gpu = sum(r.gpu or 0 for r in rows)
    states_host = sum(r.host or 0 for r in rows)
    composition = ["DeepSpeed's figure"] + ["frozen weights"] * lora + ["reference"] * bool(ref)
    rows.append(Row("= model states", states_gpu, states_host or None,
                    " + ".join(composition) if estimate else "the rows above", kind="total"))

    held = 0
    if stage == "grpo":
        rows.append(_rollout_row(shape, zero, cfg, wb=wb, lora=lora, world_size=n))
        gathered = zero.stage == 3 and cfg.grpo.gather_for_generation
        held = wb * total if gathered and cfg.grpo.gathered_policy_pass else 0
        length, length_key = cfg.grpo.max_completion_length, "grpo.max_completion_length"
    else:
        length, length_key = cfg.sft.max_length, "sft.max_length"
    knobs = []
    if zero.micro_batch > 1:
        knobs.append(f"train_micro_batch_size_per_gpu={zero.micro_batch // 2} in {ds_path} (now "
                     f"{zero.micro_batch}; raise gradient_accumulation_steps to keep the batch)")
    if held:
        knobs.append("grpo.gathered_policy_pass=false (the policy pass does not hold the gathered weights)")
    knobs.append(f"a shorter {length_key}")
    held_note = f", beside {format_bytes(held)} weights held" if held else ""
    tokens = zero.micro_batch * length
    if stage == "grpo":  # the fused head: the completions' hidden states (a copy + an fp32 gradient) and its tiles
        tiles = 3 + (not lora)  # two logits tiles, an fp32 weight chunk, + a weight-gradient chunk when it trains
        head = tokens * shape.hidden * (wb + 4) + tiles * TILE_ELEMS * 4
        rows.append(Row("LM head (fused)", head, None,
                        f"{zero.micro_batch} x {length} x {shape.hidden} x ({wb} + 4) B + {tiles} fp32 tiles of "
                        f"{format_bytes(TILE_ELEMS * 4)}" + held_note, kind="peak", alongside=held, knobs=tuple(knobs)))
    else:
        logits = tokens * shape.vocab * (wb + LOSS_FP32_BYTES)
        rows.append(Row("logits (micro-batch)", logits, None,
                        f"{zero.micro_batch} x {length} x {shape.vocab} x ({wb} + 4 + 4) B" + held_note,
                        kind="peak", alongside=held, knobs=tuple(knobs)))
    ranks = f"{gpus_per_node} rank{'s' * (gpus_per_node > 1)}"
    if partitioned_loading(zero, n):  # zero.Init: a layer at a time on each rank
        loading = gpus_per_node * wb * shape.largest_layer
        loading_basis = f"{ranks} x largest layer x {wb} B (loads partitioned)"
    else:  # from_pretrained on every rank, then DeepSpeed takes the whole model
        loading = gpus_per_node * wb * shape.params
        loading_basis = f"{ranks} x {format_count(shape.params)} x {wb} B (whole model per rank)"
    rows.append(Row("model loading", None, loading, loading_basis, kind="peak"))
    plan = MemoryPlan(header=[], rows=rows)
    rows.append(Row("= peak", plan.peak_gpu, max(loading, states_host),
                    "model states + " + ("max(rollout, LM head + held)" if stage == "grpo" else "logits"),
                    kind="total"))

    offload = ", ".join(f"{what} on {where}" for what, where in (("optimizer", zero.offload_optimizer),
                                                                  ("weights", zero.offload_param)) if where)
    optimizer = "fp32 AdamW" if mixed else "AdamW"
    plan.header = [
        f"semgrpo: memory plan of {stage.upper()} for {cfg.model.path} (an estimate; no weights loaded)",
        f"  model: {shape.name}, {format_count(shape.params)} parameters, largest layer "
        f"{format_count(shape.largest_layer)}, "
        + (f"LoRA r={cfg.model.lora.r}: {format_count(shape.lora_params)} trainable" if lora
           else "full-parameter training"),
        f"  setup: ZeRO-{zero.stage} on {n} GPU{'s' * (n > 1)} ({num_nodes} node{'s' * (num_nodes > 1)} x "
        f"{gpus_per_node}), {zero.weight_dtype} weights + {optimizer}, offload: {offload or 'none'} ({ds_path})",
    ]
    if estimate is not None:
        extra = f" + {format_bytes(int(wb * shape.params / p_split))} frozen weights" if lora else ""
        plan.notes.append(f"DeepSpeed {estimate[2]}: {format_bytes(estimate[0])} per GPU{extra}, "
                          f"{format_bytes(estimate[1])} host per node (x1.5 margin)")
    else:
        why = "fp32 training" if not mixed else f"ZeRO-{zero.stage}" + (" with offload_param alone"
                                                                           if zero.stage == 3 else "")
        plan.notes.append(f"DeepSpeed has no estimator for {why}: its rules applied by hand")
    if stage == "grpo":
        plan.notes.append("LM head: fused into the log-prob op, which never builds the [tokens, vocab] logits")
    else:
        plan.notes.append("logits: model dtype + the loss's fp32 copy + its fp32 gradient")
    plan.notes.append("not counted: activations, CUDA context, communication buckets, fragmentation")
    return plan


def _rollout_row(shape: ModelShape, zero: ZeroSetup, cfg: Config, *, wb: int, lora: bool, world_size: int) -> Row:
    """The peak of sampling: gathered weights (ZeRO-3 with the gather) + KV cache (+ merged-adapter copy).

    A step's `generate` samples all this rank's completions (micro x accumulation) in batches of
    grpo.generation_batch_size (0 = all at once), each up to data.max_prompt_length + grpo.max_completion_length
    tokens. Measuring tau (reward.tau auto) generates greedily for this rank's share of reward.tau_samples
    prompts the same way, once before the first step; the larger of the two batches sets the cache.
    """
    g = cfg.grpo
    per_rank = zero.micro_batch * zero.grad_accum
    tau_prompts = 0
    if cfg.reward.tau == "auto" and "semantic" in cfg.reward.functions:
        tau_prompts = -(-cfg.reward.tau_samples // world_size)
    batch = max(min(g.generation_batch_size or n, n) for n in (per_rank, tau_prompts or 1))
    tokens = cfg.data.max_prompt_length + g.max_completion_length
    kv = batch * tokens * shape.kv_values_per_token * wb
    gathered = zero.stage == 3 and g.gather_for_generation
    weights = wb * (shape.params + (shape.lora_params if lora else 0)) if gathered else 0
    merged = wb * shape.lora_targeted if lora and g.merge_adapter_for_generation else 0
    parts = [f"KV {batch} seq{' (tau)' if batch > per_rank else ''} x {tokens} tok x "
             f"{format_bytes(shape.kv_values_per_token * wb)}"]
    if weights:
        parts.insert(0, f"weights {format_bytes(weights)}")
    if merged:
        parts.append(f"merged copy {format_bytes(merged)}")
    knobs = []
    if gathered:
        knobs.append("grpo.gather_for_generation=false (layer-by-layer generation, no full weights)")
    if batch > 1:
        knobs.append(f"grpo.generation_batch_size={batch // 2} (now {batch})")
    if batch > per_rank:
        knobs.append("fewer reward.tau_samples, or a fixed reward.tau")
    if merged:
        knobs.append("grpo.merge_adapter_for_generation=false")
    knobs.append("a shorter grpo.max_completion_length or data.max_prompt_length")
    return Row("rollout", weights + kv + merged, None, " + ".join(parts), kind="peak", knobs=tuple(knobs))
