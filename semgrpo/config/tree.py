"""The configuration tree: every key with its default and its help, written once.

Every knob of the method (paper sections 3-4, Appendix A) lives here with the paper's value as its default;
`configs/*.yaml` only say what differs. A key's help is its field's metadata: `--help-config` prints it and the
README's configuration table is generated from it (config/help.py), so neither is written by hand a second time.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from semgrpo.errors import UserError

PAPER_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class ConfigError(UserError):
    """A user error in the run configuration (unknown key, bad value, missing file)."""


def key(default: Any, help: str) -> Any:
    """A config key: its default and its help (one line, shown by --help-config and in the README's table)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class LoraConfig:
    enabled: bool = key(True, "train a LoRA adapter; false = train every weight (full-parameter)")
    r: int = key(64, "LoRA rank")
    alpha: int = key(128, "LoRA scale numerator: the adapter's update is scaled by alpha / r")
    dropout: float = key(0.05, "dropout on the adapter's input, in [0, 1)")
    target_modules: list[str] = key(PAPER_LORA_TARGETS, "the modules LoRA adapts (not empty while LoRA is enabled)")


@dataclass
class ModelConfig:
    path: str = key("", "the policy: a local directory (or a hub id, only if you name one); empty with the demo")
    tokenizer: str = key("", "tokenizer directory; empty = model.path")
    init_from: str = key("", "output_dir of bin/train_sft.py (stage 1): its adapter is merged into the base weights "
                             "at start, so that the cold-start policy is the GRPO reference")
    dtype: str = key("auto", "auto = bf16 on CUDA, fp32 on CPU; or bf16, fp16, fp32")
    gradient_checkpointing: bool = key(False, "reentrant activation checkpointing (the variant PEFT + ZeRO-3 needs)")
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class DataConfig:
    task: str = key("mt_zh_bo", "mt_bo_zh, mt_zh_bo, hg_bo, or `mt_<source>_<target>` for two CLDR codes (mt_zh_km: "
                                "records with the fields zh and km)")
    train: str = key("", "training records: a JSONL/Parquet file, a folder with `{split}.jsonl`, a `data:<path>` in "
                         "the data root, or a hub id you name")
    dev: str = key("", "dev records, in the same forms (reward.tau=auto is measured on their prompts)")
    max_prompt_length: int = key(256, "records whose prompt has more tokens are dropped")
    max_sample_tokens: int = key(1024, "records whose prompt + reference have more tokens are dropped (paper: 1024)")


@dataclass
class SFTConfig:
    samples: int = key(5000, "stage 1 (cold start) trains on the first this many training records (paper: 5000); "
                             "0 = all of them (the Strong SFT baseline)")
    epochs: float = key(2.0, "epochs of stage 1 (paper: 2; Strong SFT: 3)")
    lr: float = key(2e-5, "peak learning rate of stage 1 (AdamW)")
    scheduler: str = key("cosine", "stage 1's schedule after the warmup: constant, cosine or linear decay")
    warmup_ratio: float = key(0.1, "fraction of stage 1's updates in linear warmup")
    max_length: int = key(1024, "tokens per sequence (prompt + reference + eos), cut at the right")
    before_grpo: bool = key(False, "train_grpo.py runs stage 1 into output_dir/cold_start first (when model.init_from "
                                   "is empty)")


@dataclass
class RewardConfig:
    encoder: str = key("", "reward encoder f: a sentence-transformers directory (frozen during RL)")
    functions: list[str] = key(["semantic", "language"], (
        "the reward's components: semantic, language (the paper's), bleu, length (ablations), a plugin "
        "`package.module:callable` (named after the callable), a remote reward `http://host:port/path` (named "
        "remote); `name=entry` names either (README: Rewards of your own)"))
    weights: dict[str, float] = key({"semantic": 1.5, "language": 1.0, "bleu": 1.0, "length": 1.0},
                                    "weight of each component in the sum, by name; a plugin or remote reward "
                                    "without one weighs 1.0")
    kwargs: dict[str, dict[str, Any]] = key({}, "`{name: {argument: value}}`: constructor arguments of a plugin "
                                                "that is a class")
    remote_timeout: float = key(60.0, "a remote reward's deadline per request in seconds, from connecting to the "
                                      "reply's last byte")
    remote_retries: int = key(2, "a remote reward's retries after a timeout, a refused or reset connection or a 5xx "
                                 "reply (each waits twice as long as the one before, from 1 s)")
    remote_max_bytes: int = key(64 * 2**20, "the longest reply a remote reward reads (64 MiB); a longer one is an "
                                            "error while it is read")
    tau: Any = key("auto", "threshold of R_sim: a number in [0, 1), or auto = the mean similarity of the cold-start "
                           "policy's greedy outputs on tau_samples dev prompts, measured before the first step and "
                           "stored with the run")
    tau_samples: int = key(64, "dev prompts (train prompts when there is no dev set) that tau=auto is measured on")
    script: str = key("", "target script of R_lang: an ISO 15924 code or Unicode name (Tibt, Arab, Khmer...) or a "
                          "set (Hani+Hira+Kana); empty = the task's target script")
    min_script_ratio: float = key(1.0, "R_lang: the least share of a completion's letters in the target script, in "
                                       "(0, 1]")
    max_foreign: int = key(0, "R_lang: the most letters of other scripts a completion may have")
    length_ratio_min: float = key(0.5, "length reward (ablation): 1 when len(completion) / len(reference), in "
                                       "characters, is at least this and at most length_ratio_max")
    length_ratio_max: float = key(2.0, "length reward (ablation): the upper end of that ratio")
    encoder_batch_size: int = key(256, "texts per forward of the reward encoder")


@dataclass
class GRPOConfig:
    group_size: int = key(8, "completions per prompt (G)")
    temperature: float = key(0.8, "sampling temperature; the loss's log-probs use it too")
    top_p: float = key(0.9, "nucleus sampling: the smallest set of tokens holding this probability")
    max_completion_length: int = key(256, "tokens per completion at most")
    beta: float = key(0.0, "KL (k3) coefficient against the reference policy; 0 skips the reference pass entirely")
    eps_low: float = key(0.2, "clip range [1 - eps_low, 1 + eps_high] of the importance ratio")
    eps_high: float = key(0.2, "upper end of the clip range (may exceed 1: clip-higher); for cispo the ratio's "
                               "absolute cap (>= 1; the ScaleRL paper uses 5.0)")
    loss_type: str = key("grpo", "grpo (the paper's), bnpo, dr_grpo, dapo (TRL's default), cispo, sapo, luspo, vespo: "
                                 "TRL 1.16's names and formulas (README: What one update optimizes)")
    importance_sampling_level: str = key("token", "token: an importance ratio per token; sequence: one per "
                                                  "completion, the exp of its mean log-ratio (GSPO)")
    delta: float | None = key(None, "upper bound (> 1) of the unclipped ratio for the clip loss types (two-sided "
                                    "clipping); null = off")
    use_bias_correction_kl: bool = key(True, "multiply the per-token KL by the importance ratio (an unbiased KL "
                                             "gradient; TRL's default); acts only with beta > 0 (the demo sets false)")
    mask_truncated_completions: bool = key(False, "completions cut off at max_completion_length (no eos) get no "
                                                  "token in the loss; they keep their place in the advantages and the "
                                                  "sequence counts, as in TRL")
    sapo_temperature_pos: float = key(1.0, "sapo: the gate's temperature for positive advantages")
    sapo_temperature_neg: float = key(1.05, "sapo: the gate's temperature for the other advantages")
    vespo_k_pos: float = key(2.0, "vespo: k of the gamma weight exp(lambda + k log w - lambda w) of the sequence "
                                  "ratio w, for non-negative advantages")
    vespo_lambda_pos: float = key(3.0, "vespo: lambda of that weight, for non-negative advantages")
    vespo_k_neg: float = key(3.0, "vespo: k of that weight, for negative advantages")
    vespo_lambda_neg: float = key(2.0, "vespo: lambda of that weight, for negative advantages")
    scale_rewards: str = key("group", "the advantage (r - group mean) is divided by the group's std (group), the "
                                      "global batch's (batch), or not at all (none)")
    advantage_eps: float = key(1e-4, "added to the std in the advantage's denominator (TRL's 1e-4)")
    num_iterations: int = key(1, "optimizer updates per generated batch (mu); old log-probs are computed only when > 1")
    generation_batch_size: int = key(0, "completions sampled per call of generate; 0 = all of this rank's")
    gather_for_generation: bool = key(True, "under ZeRO-3, gather the full parameters once per step for generation, "
                                            "rewards and the old/reference log-probs (fast); false = synced_gpus "
                                            "generation that gathers layer by layer (a model too large for one "
                                            "device)")
    merge_adapter_for_generation: bool = key(False, "sample with the LoRA adapter merged into a temporary copy of the "
                                                    "base weights: faster decoding for one extra copy of the targeted "
                                                    "weights during the rollout")
    gathered_policy_pass: bool = key(True, "under ZeRO-3 with gather_for_generation, run the step's first policy "
                                           "forward/backward on the weights still gathered (hooks off) instead of "
                                           "fetching them layer by layer again; false if full weights plus "
                                           "activations do not fit")
    lr: float = key(5e-7, "peak learning rate of stage 2 (AdamW; stage 1 has sft.lr)")
    scheduler: str = key("constant", "stage 2's schedule after the warmup: constant, cosine or linear decay")
    warmup_ratio: float = key(0.0, "fraction of stage 2's updates in linear warmup")
    epochs: float = key(1.0, "epochs of stage 2 over the training prompts (when max_steps is -1 or 0)")
    max_steps: int = key(-1, "> 0: stage 2 runs this many steps, whatever epochs says; a step is one generated batch "
                             "and num_iterations optimizer updates")
    dynamic_sampling: bool = key(False, "when groups come back flat (every completion scored the same), sample the "
                                        "next prompts again until each rank holds its full number of informative "
                                        "groups (README: Groups that always teach)")
    max_resample: int = key(4, "dynamic sampling: extra sampling rounds per step at most")


@dataclass
class RunConfig:
    deepspeed: str = key("ds_configs/zero3.json", "DeepSpeed JSON of both stages, pure DeepSpeed: micro batch and "
                                                  "accumulation are read from it")
    weight_decay: float = key(0.0, "AdamW weight decay (both stages)")
    save_every: int = key(50, "steps between checkpoints (atomic; both stages)")
    keep_last: int = key(2, "checkpoints kept")
    log_every: int = key(1, "steps between logged scalars")
    sample_every: int = key(10, "GRPO steps between completion samples written to the trackers (0 = never)")
    report_to: list[str] = key(["tensorboard"], "trackers besides metrics.jsonl (always written): any of tensorboard, "
                                                "wandb (offline when there is no network), jsonl (adds samples.jsonl), "
                                                "or `[none]` (README: What a run logs)")
    gpu_memory_gib: float = key(0.0, "GPU memory per device (GiB) the memory plan checks; 0 = the first CUDA "
                                     "device's size, no check without one (--gpu-memory sets it)")


@dataclass
class TaxMeterConfig:
    every_steps: int = key(0, "live alignment-tax meter every this many GRPO steps: OOD token NLL and "
                              "KL(reference || policy) on fixed passages, logged as `tax/*` (0 = off; the demo: 25)")
    ood_passages: str = key("", "CMRC/SQuAD JSON (its contexts), JSONL with text/context, or a text file (a passage "
                                "per line), a path or `data:<path>`; empty with the demo = its plain source-language "
                                "CLDR text")
    ood_samples: int = key(32, "passages measured (a fixed subset)")
    ood_max_tokens: int = key(128, "tokens per passage")
    batch_size: int = key(8, "passages per forward")


@dataclass
class DemoConfig:
    enabled: bool = key(False, "build the offline demo (CLDR pairs, tiny tokenizer, policy and encoder) and fill the "
                               "unset paths from it; `demo: true` / `demo=true` is short for it")
    language: str = key("bo", "CLDR code of the language the demo teaches (bo, ug, am, km...; README: Another "
                              "language)")
    source: str = key("zh", "CLDR code of the language it translates from (zh or en)")


@dataclass
class Config:
    output_dir: str = key("runs/grpo", "the run folder: checkpoints, logs, metrics.jsonl, summary.json")
    resume: str = key("auto", 'auto = continue from the newest intact checkpoint in output_dir, if any; a checkpoint '
                              'path; "" = a fresh start')
    overwrite: bool = key(False, 'a fresh start (resume: "") into an output_dir that holds checkpoints is refused '
                                 "unless this is true; then the old run's checkpoints and logs are deleted first")
    seed: int = key(0, "model init, data order, sampling; 0 to 4294967295 (what numpy and torch take)")
    demo: DemoConfig = field(default_factory=DemoConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    run: RunConfig = field(default_factory=RunConfig)
    tax_meter: TaxMeterConfig = field(default_factory=TaxMeterConfig)
