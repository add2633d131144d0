"""The values every choice key of the config may take, in one place.

The code that acts on a choice imports its list from here (the ops their loss types, importance-sampling levels and
reward scalings, the tracker its tracker names), so a config is checked against exactly what runs. Plain tuples,
importing nothing: validating a config loads neither torch nor Triton.
"""

# Every loss type of TRL 1.16's GRPOTrainer (the clipped surrogate of grpo/bnpo/dr_grpo/dapo/luspo, cispo's capped
# importance weight, sapo's soft gate, vespo's gamma weight; see ops/policy_loss.py).
TRL_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")
# How group advantages are scaled (ops/advantage.py): by the group's std, the global batch's, or not at all.
SCALE_REWARDS = ("group", "batch", "none")
# Learning-rate schedules after the linear warmup (modeling.lr_lambda).
SCHEDULERS = ("constant", "cosine", "linear")
# model.dtype: auto = bf16 on CUDA, fp32 on CPU.
DTYPES = ("auto", "bf16", "fp16", "fp32")
# Where a run's scalars go besides metrics.jsonl (tracking/); run.report_to may also be ["none"].
TRACKERS = ("tensorboard", "wandb", "jsonl")
REPORT_TO = (*TRACKERS, "none")
