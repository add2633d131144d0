""""Will it fit?": the GPU and host memory a run will need, estimated before any weight loads.

Rank 0 prints the plan once before the policy loads (`announce_plan`); `--plan-only` prints it without
starting a run. The model's shape comes from its config.json alone (the model is built on the meta
device), so a directory holding only config.json is enough.

What the rows count, per GPU unless said otherwise:

* parameters / gradients / optimizer states: DeepSpeed's mixed-precision convention per trainable parameter,
  2 B weight, 2 B gradient, 12 B optimizer (fp32 master copy + Adam m and v). fp32 runs count 4 B, 4 B and
  still 12 B: DeepSpeed's ZeRO optimizer keeps its own fp32 partition beside the module's weights even when
  those are fp32. Frozen weights (a LoRA run's base model) cost their weight bytes only. ZeRO-1 partitions
  the optimizer, ZeRO-2 also the gradients, ZeRO-3 also the weights; `offload_optimizer` moves the optimizer
  (and, from ZeRO-2 on, the gradient partitions) to the host, `offload_param` the ZeRO-3 weight shards.
* ZeRO buffers: what DeepSpeed's own estimator (`estimate_zero3_model_states_mem_needs`,
  `estimate_zero2_model_states_mem_needs`) counts beyond those rows, so that the model states of a
  full-parameter run equal its figure: under ZeRO-3 the largest layer gathered with its gradient (4 B per
  parameter of that layer) and 18 B per parameter where 2 + 2 + 12 makes 16; under ZeRO-2 the fp32 gradient
  partition (4 B). The estimators assume every parameter trains, so a LoRA run asks them about its adapters
  and adds the frozen weights. Where no estimator exists (ZeRO-0/1, fp32) the same rules are applied by hand.
* reference: a frozen copy of the policy, only for full-parameter GRPO with grpo.beta > 0 (a LoRA run's
  reference is its policy with the adapter disabled), partitioned like the policy.
* rollout: the transient peak of sampling: the gathered full weights (ZeRO-3 with grpo.gather_for_generation)
  plus the KV cache of one generation batch at full length.
* LM head (GRPO): the fused log-prob op on one micro-batch: its fp32 tiles and the completions' hidden states
  with their fp32 gradient; no [micro, length, vocab] term (semgrpo/fused_head.py).
* logits (SFT): one micro-batch of the loss, [micro, length, vocab] (see LOSS_FP32_BYTES).
* host: per node. The transient "model loading" row: under ZeRO-3 on several ranks the policy is created
  partitioned (`deepspeed.zero.Init`, semgrpo/partitioned.py), so a rank holds about one layer at a time;
  otherwise every rank reads the whole model with `from_pretrained` before DeepSpeed takes it.

Not counted: activations of the policy pass, the CUDA context, communication buckets, allocator fragmentation.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field

from semgrpo import dist
from semgrpo.config import Config, ConfigError, LoraConfig
from semgrpo.ops.linear_grpo_loss import TILE_ELEMS

GiB, MiB = 2**30, 2**20
OPTIMIZER_BYTES = 12  # fp32 master copy + Adam m and v, per trainable parameter
# Bytes per element of an SFT micro-batch's logits [micro, length, vocab] at the peak of the loss's backward:
# the logits in the model dtype, HF cross-entropy's fp32 copy and that copy's fp32 gradient.
LOSS_FP32_BYTES = 4 + 4
WEIGHT_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
STAGES = ("grpo", "sft")


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs to know about the model, read from config.json without weights."""

    name: str  # the model class, e.g. Qwen3ForCausalLM
    params: int  # the base model's parameters, tied weights once
    largest_layer: int  # parameters of the largest module (its own, not its children's): DeepSpeed's term
    layers: int
    kv_heads: int
    head_dim: int
    vocab: int
    hidden: int
    lora_params: int = 0  # the adapters of the configured LoRA, r * (in + out) per targeted nn.Linear
    lora_targeted: int = 0  # base weights of those linears (the copy merge_adapter_for_generation makes)

    @property
    def kv_values_per_token(self) -> int:
        """Keys and values every layer caches for one token."""
        return self.layers * 2 * self.kv_heads * self.head_dim


@dataclass(frozen=True)
class Row:
    """One line of the table. `gpu` and `host` are bytes (host per node); None shows as '-'."""

    label: str
    gpu: int | None
    host: int | None
    basis: str
    kind: str = "state"  # "state" (lives the whole run), "peak" (transient), "total"
    alongside: int = 0  # GPU bytes a peak row holds besides its own (the gathered weights of the policy pass)
    knobs: tuple[str, ...] = ()  # what to turn when this row does not fit


@dataclass
class MemoryPlan:
    """The plan of one stage: a header, the rows, notes; `format()` for people, `check()` for a budget."""

    header: list[str]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)

    def row(self, label: str) -> Row:
        return next(r for r in self.rows if r.label == label)

    @property
    def model_states_gpu(self) -> int:
        return sum(r.gpu or 0 for r in self.rows if r.kind == "state")

    @property
    def peak_gpu(self) -> int:
        peaks = [(r.gpu or 0) + r.alongside for r in self.rows if r.kind == "peak"]
        return self.model_states_gpu + max(peaks, default=0)

    def format(self) -> str:
        """The plan as a plain-text table, bytes in GiB or MiB."""
        width = max(len(r.label) for r in self.rows)
        lines = list(self.header)
        lines.append(f"  {'':{width}}  {'per GPU':>10}  {'host/node':>10}")
        for r in self.rows:
            lines.append(f"  {r.label:{width}}  {format_bytes(r.gpu):>10}  {format_bytes(r.host):>10}  {r.basis}")
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)

    def check(self, budget_bytes: int | None) -> list[str]:
        """Warning lines, each naming what to change, for every part of the plan that exceeds the per-GPU budget.

        Model states are checked alone, then with each transient peak on top. Empty when everything fits or
        there is no budget.
        """
        if not budget_bytes:
            return []
        over = f"over the {format_bytes(budget_bytes)} budget"
        warnings = []
        states = self.model_states_gpu
        if states > budget_bytes:
            knobs = _unique(k for r in self.rows if r.kind == "state" and r.gpu for k in r.knobs)
            warnings.append(f"semgrpo: warning: the model states need {format_bytes(states)} per GPU, {over}; "
                            f"try {'; '.join(knobs)}")
        for r in self.rows:
            need = states + (r.gpu or 0) + r.alongside
            if r.kind == "peak" and r.gpu and need > budget_bytes:
                warnings.append(f"semgrpo: warning: model states + {r.label} need {format_bytes(need)} per GPU, "
                                f"{over}; try {'; '.join(r.knobs)}")
        return warnings


def _split(ways: int) -> str:
    return f" / {ways}" if ways > 1 else ""


def _unique(items) -> list[str]:
    return list(dict.fromkeys(items))


def format_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    if n == 0:
        return "0"
    if n >= GiB:
        return f"{n / GiB:.2f} GiB"
    return f"{n / MiB:.1f} MiB" if n >= MiB else f"{n / 1024:.1f} KiB"


def format_count(n: int) -> str:
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return str(n)


# ---------------------------------------------------------------------------------------------------
# The model's shape, from config.json on the meta device


def model_shape(path: str, lora: LoraConfig) -> ModelShape:
    """The shape of the model at `path` with the configured LoRA; no weights are read.

    Raises:
        ConfigError: `path` is not a model directory with a config.json that builds a causal LM, or a LoRA
            target is not a module of the model.
    """
    targets = tuple(lora.target_modules) if lora.enabled else ()
    return _model_shape(path, targets, lora.r)


@functools.lru_cache(maxsize=4)  # --plan-only of train_grpo.py with a cold start plans two stages
def _model_shape(path: str, targets: tuple[str, ...], r: int) -> ModelShape:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from semgrpo.modeling import check_model_source

    check_model_source(path, "model.path")
    try:
        config = AutoConfig.from_pretrained(path)
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            model = AutoModelForCausalLM.from_config(config)
    except Exception as exc:  # transformers raises ValueError, OSError, KeyError, ... for a config it cannot use
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"model.path {path!r}: cannot build the model from its config.json "
                          f"({type(exc).__name__}: {first})") from None
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in present]
    if missing:
        raise ConfigError(f"model.lora.target_modules {missing} are not modules of this model")
    lora_params = targeted = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets:
            lora_params += r * (module.in_features + module.out_features)
            targeted += module.weight.numel()
    text = config.get_text_config()
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    output = model.get_output_embeddings()
    return ModelShape(
        name=type(model).__name__,
        params=sum(p.numel() for p in model.parameters()),  # a tied (shared) tensor is yielded once
        largest_layer=max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()),
        layers=text.num_hidden_layers,
        kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        vocab=output.weight.shape[0] if output is not None else text.vocab_size,
        hidden=text.hidden_size,
        lora_params=lora_params,
        lora_targeted=targeted,
    )


# ---------------------------------------------------------------------------------------------------
# What the DeepSpeed JSON says


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


# ---------------------------------------------------------------------------------------------------
# The plan


def plan_for_config(cfg: Config, *, world_size: int, ds_config: dict, dtype: str, num_nodes: int = 1,
                    stage: str = "grpo") -> MemoryPlan:
    """The memory plan of `stage` ("grpo" or "sft") for `cfg` on `world_size` GPUs over `num_nodes` nodes.

    Args:
        ds_config: the DeepSpeed JSON as `ds_config.load_ds_config` returns it (micro batch and accumulation
            filled in).
        dtype: the resolved model.dtype (bf16, fp16, fp32).

    Raises:
        ConfigError: model.path is not usable (see `model_shape`), or the world size and nodes do not divide.
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    if world_size < 1:
        raise ConfigError(f"the world size must be >= 1, got {world_size}")
    if num_nodes < 1 or world_size % num_nodes:
        raise ConfigError(f"{world_size} GPUs cannot be spread evenly over {num_nodes} nodes")
    shape = model_shape(cfg.model.path, cfg.model.lora)
    return build_plan(shape, zero_setup(ds_config, dtype), cfg, world_size=world_size, num_nodes=num_nodes,
                      stage=stage)


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
            f"{format_count(total)} x {wb} B{_split(p_split)}", knobs=tuple(states_knobs)),
        Row("gradients", grads_gpu, grads_host,
            f"{format_count(trainable)} {counted} x {wb} B{_split(g_split)}", knobs=tuple(states_knobs)),
        Row("optimizer states", opt_gpu, opt_host,
            f"{format_count(trainable)} x {OPTIMIZER_BYTES} B (fp32 master, Adam m, v){_split(o_split)}",
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
        pieces.append(f"{extra} B x {format_count(trainable)}{_split(o_split)}")
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
            ref_basis = f"frozen policy copy: {format_count(shape.params)} x {wb} B{_split(p_split)}"
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


# ---------------------------------------------------------------------------------------------------
# Budget and announcement


def gpu_budget(cfg: Config) -> tuple[int | None, str]:
    """(bytes per GPU or None, where it comes from): run.gpu_memory_gib when > 0, else the CUDA device's size."""
    if cfg.run.gpu_memory_gib > 0:
        return int(cfg.run.gpu_memory_gib * GiB), "run.gpu_memory_gib"
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        return int(props.total_memory), f"detected: {props.name}"
    return None, ""


def nodes_from_env(world_size: int) -> int:
    """Nodes of the launched job: DeepSpeed's launcher says CROSS_SIZE, torchrun LOCAL_WORLD_SIZE; else 1."""
    cross = os.environ.get("CROSS_SIZE", "")
    if cross.isdigit() and int(cross) >= 1 and world_size % int(cross) == 0:
        return int(cross)
    local = os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or ""
    if local.isdigit() and int(local) >= 1 and world_size % int(local) == 0:
        return world_size // int(local)
    return 1


def plan_lines(cfg: Config, *, world_size: int, ds_config: dict, dtype: str, num_nodes: int = 1,
               stage: str = "grpo") -> list[str]:
    """The table, the budget line and the warnings, ready to print. Raises as plan_for_config does."""
    plan = plan_for_config(cfg, world_size=world_size, ds_config=ds_config, dtype=dtype, num_nodes=num_nodes,
                           stage=stage)
    budget, source = gpu_budget(cfg)
    if budget:
        verdict = "fits" if plan.peak_gpu <= budget else "does NOT fit"
        budget_line = (f"  budget: {format_bytes(budget)} per GPU ({source}): the peak of "
                       f"{format_bytes(plan.peak_gpu)} {verdict}")
    else:
        budget_line = "  budget: none (no CUDA device; set run.gpu_memory_gib or --gpu-memory GIB to check one)"
    return [plan.format(), budget_line, *plan.check(budget)]


def announce_plan(cfg: Config, *, world_size: int, ds_config: dict, dtype: str, stage: str = "grpo",
                  num_nodes: int | None = None) -> None:
    """Rank 0 prints the memory plan, with a warning line per part that exceeds the GPU budget.

    Advice only: it never stops a run. A model whose shape cannot be worked out gets one line saying so; loading
    the model then reports the real problem.
    """
    if not dist.is_main():
        return
    try:
        lines = plan_lines(cfg, world_size=world_size, ds_config=ds_config, dtype=dtype, stage=stage,
                           num_nodes=num_nodes or nodes_from_env(world_size))
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        lines = [f"semgrpo: no memory plan ({first})"]
    for line in lines:
        print(line, flush=True)
