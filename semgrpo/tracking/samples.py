"""Completion samples and free text as the trackers show them: checked rows, and Markdown TensorBoard renders
verbatim.
"""
from __future__ import annotations

from typing import Any

from semgrpo.tracking.wandb_run import SAMPLE_COLUMNS

_MD_SPECIAL = set("\\`*_{}[]()#+-.!|<>~")


def escape_markdown(text: str) -> str:
    """Escape `text` so TensorBoard's markdown renderer shows it verbatim, line breaks included.

    Markdown punctuation gets a backslash, `&` becomes `&amp;`, and every newline becomes a hard line
    break (two spaces before it).
    """
    if not isinstance(text, str):
        raise TypeError(f"text has type {type(text).__name__}; expected str")
    out = []
    for ch in text.replace("\r\n", "\n"):
        if ch == "&":
            out.append("&amp;")
        elif ch in _MD_SPECIAL:
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("  \n")
        else:
            out.append(ch)
    return "".join(out)


def as_float(key: str, value: Any) -> float:
    if isinstance(value, bool):
        return float(value)
    try:
        return float(value)  # ints, floats, numpy scalars, one-element tensors
    except (TypeError, ValueError):
        raise ValueError(f"scalar {key!r}={value!r} is not a number") from None


def check_samples(samples: Any) -> list[dict[str, Any]]:
    """`samples` as rows of SAMPLE_COLUMNS (reward a float), or a ValueError naming the bad row."""
    if not isinstance(samples, (list, tuple)):
        raise ValueError(f"samples has type {type(samples).__name__}; expected a list of dicts")
    rows = []
    for i, s in enumerate(samples):
        if not isinstance(s, dict) or any(k not in s for k in SAMPLE_COLUMNS):
            raise ValueError(f"samples[{i}]={s!r}; expected a dict with keys {', '.join(SAMPLE_COLUMNS)}")
        bad = next((k for k in SAMPLE_COLUMNS[:3] if not isinstance(s[k], str)), None)
        if bad is not None:
            raise ValueError(f"samples[{i}][{bad!r}] has type {type(s[bad]).__name__}; expected str")
        rows.append({**{k: s[k] for k in SAMPLE_COLUMNS[:3]}, "reward": as_float("reward", s["reward"])})
    return rows


def samples_markdown(rows: list[dict[str, Any]]) -> str:
    """Completions as a Markdown table (TensorBoard renders text as Markdown), cells escaped.

    One prompt shared by every row (one group) is written once above the table; else it is a column.
    """
    cell = lambda text: escape_markdown(text.replace("\r\n", " ").replace("\n", " "))
    one_prompt = len({r["prompt"] for r in rows}) == 1
    keys = ("completion", "reference") if one_prompt else ("prompt", "completion", "reference")
    lines = ["| reward | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for r in rows:
        lines.append(f"| {r['reward']:.3f} | " + " | ".join(cell(r[k]) for k in keys) + " |")
    table = "\n".join(lines)
    return f"prompt: {escape_markdown(rows[0]['prompt'])}\n\n{table}" if one_prompt else table
