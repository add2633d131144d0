"""Rewards: the components a GRPO step scores completions with, and their weighted sum.

    scoring.py   call every component, check what it returned, the weighted sum (on every rank)
    builtin.py   the built-ins: semantic (R_sim), language (R_lang), bleu, length
    plugins.py   a user's callable: `package.module:callable` entries of reward.functions
    remote.py    a reward server: `http://host:port/path` entries (RemoteReward, usable in TRL as it is)

Every component has TRL's reward signature `(prompts, completions, references) -> list[float | None]`. What an entry
of `reward.functions` names is parsed, before anything loads, by semgrpo/config/reward_specs.py.
"""
from __future__ import annotations

from semgrpo.config import ConfigError, RewardConfig
from semgrpo.config.reward_specs import reward_specs
from semgrpo.rewards.builtin import LanguageConsistency, LengthConstraint, SemanticSimilarity, SentenceBLEU
from semgrpo.rewards.plugins import PluginReward, load_plugin
from semgrpo.rewards.remote import RemoteReward
from semgrpo.rewards.scoring import RewardError, RewardFn, checked_values, score, score_on_every_rank

__all__ = [
    "LanguageConsistency", "LengthConstraint", "PluginReward", "RemoteReward", "RewardError", "RewardFn",
    "SemanticSimilarity", "SentenceBLEU", "build_reward_functions", "checked_values", "load_plugin", "score",
    "score_on_every_rank",
]


def build_reward_functions(cfg: RewardConfig, *, encoder, script: str) -> dict[str, RewardFn]:
    """The configured components, in config order, keyed by name (plugins imported, classes built once)."""
    tau = None if cfg.tau == "auto" else float(cfg.tau)
    makers = {
        "semantic": lambda: SemanticSimilarity(encoder, tau=tau, batch_size=cfg.encoder_batch_size),
        "language": lambda: LanguageConsistency(script, min_ratio=cfg.min_script_ratio,
                                                max_foreign=cfg.max_foreign),
        "bleu": lambda: SentenceBLEU(script),
        "length": lambda: LengthConstraint(cfg.length_ratio_min, cfg.length_ratio_max),
    }
    if "semantic" in cfg.functions and encoder is None:
        raise ConfigError("reward.functions has 'semantic' but reward.encoder is not set")
    functions = {}
    for spec in reward_specs(cfg.functions):  # the config checks already named a bad entry
        if spec.kind == "builtin":
            functions[spec.name] = makers[spec.name]()
        elif spec.kind == "plugin":
            functions[spec.name] = load_plugin(spec, cfg.kwargs.get(spec.name, {}))
        else:
            functions[spec.name] = RemoteReward(spec.target, name=spec.name, timeout=cfg.remote_timeout,
                                                retries=cfg.remote_retries, max_bytes=cfg.remote_max_bytes)
    return functions
