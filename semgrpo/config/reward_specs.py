"""What an entry of `reward.functions` names: a built-in component, a plugin callable, or a remote reward.

    semantic                        built-in (semgrpo/rewards/builtin.py)
    my_rewards:length_penalty       plugin: `callable` from an importable module, named `length_penalty`
    http://127.0.0.1:8000/score     remote: POST a JSON batch, read a JSON list back, named `remote`
    kiwi=comet_rewards:CometKiwi    any of them under the name `kiwi`

The name keys `reward.weights.<name>`, `reward.kwargs.<name>` and the logged `reward/<name>`. Parsing needs
no import: the config is checked before anything is loaded.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

BUILTIN_REWARDS = ("semantic", "language", "bleu", "length")
# Names the step already logs under reward/ for the total.
RESERVED_NAMES = ("mean", "std", "frac_zero_std_groups", "group_std_mean")

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


@dataclass(frozen=True)
class RewardSpec:
    name: str
    kind: str  # "builtin" | "plugin" | "remote"
    target: str  # the built-in's name, "module:attribute", or the URL


def parse_reward_spec(entry: str) -> RewardSpec:
    """The spec of one `reward.functions` entry; ValueError (the caller adds the key) when it is none."""
    name, body = None, entry.strip()
    head, sep, rest = body.partition("=")
    if sep and _NAME.fullmatch(head.strip()):  # `name=spec`; a URL's query string has '=' after ':' or '/'
        name, body = head.strip(), rest.strip()
    if body.startswith(("http://", "https://")):
        if not re.fullmatch(r"https?://[^/\s:]+(:\d+)?(/\S*)?", body):
            raise ValueError(f"{entry!r} is not a URL of the form http://host:port/path")
        return RewardSpec(name or "remote", "remote", body)
    if ":" in body:
        module, _, attr = body.partition(":")
        if not _MODULE.fullmatch(module) or not _NAME.fullmatch(attr):
            raise ValueError(f"{entry!r} is not of the form package.module:callable")
        return RewardSpec(name or attr, "plugin", body)
    if body in BUILTIN_REWARDS:
        if name is not None:  # the trainer looks the built-ins up by their own names
            raise ValueError(f"{entry!r}: a built-in reward keeps its own name; write {body}")
        return RewardSpec(body, "builtin", body)
    raise ValueError(f"{entry!r} is none of {', '.join(BUILTIN_REWARDS)}, a plugin package.module:callable "
                     "or a remote http://host:port/path")


def reward_specs(functions: list[str]) -> list[RewardSpec]:
    """The specs of `reward.functions`, checked: names valid, not reserved, not repeated (ValueError)."""
    specs = [parse_reward_spec(entry) for entry in functions]
    seen = set()
    for spec in specs:
        if not _NAME.fullmatch(spec.name) or spec.name in RESERVED_NAMES:
            raise ValueError(f"{spec.name!r} cannot name a reward (reserved or not an identifier); "
                             f"give one with name=spec")
        if spec.name in seen:
            raise ValueError(f"two rewards are named {spec.name!r}; give one another name with name=spec")
        seen.add(spec.name)
    return specs
