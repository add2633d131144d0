"""semgrpo: semantic-reward GRPO for low-resource language expansion on DeepSpeed ZeRO-3."""

__version__ = "0.1.0"
