"""Task specifications and prompt templates, one per task.

A task names which record field is the model's input and which is the reference output, the
script the output must be written in (for the language-consistency reward), and the English
instruction placed before the source text. `render_prompt` wraps that instruction in the
tokenizer's chat template when it has one, and in a short plain template otherwise (the offline
demo's tiny tokenizer has no chat template and its tiny model must learn the format quickly).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["TaskSpec", "TASKS", "get_task", "mt_task", "render_prompt", "render_chat"]


@dataclass(frozen=True)
class TaskSpec:
    """What one task reads from a record and asks of the model.

    Attributes:
        name: Task key in `TASKS`, e.g. "mt_bo_zh".
        source_field: Record field holding the model's input text.
        target_field: Record field holding the reference output text.
        required_fields: Fields every record must carry as non-empty strings (besides the
            optional "id").
        target_script: Script the output must be written in ("han", "tibetan", "Khmr", "Hani+Hira+Kana"), as
            understood by `semgrpo.script.script_consistent`.
        instruction: English instruction placed before the source text.
    """

    name: str
    source_field: str
    target_field: str
    required_fields: tuple[str, ...]
    target_script: str
    instruction: str


TASKS: dict[str, TaskSpec] = {
    "mt_bo_zh": TaskSpec(
        name="mt_bo_zh",
        source_field="bo",
        target_field="zh",
        required_fields=("bo", "zh"),
        target_script="han",
        instruction="Translate from Tibetan to Chinese:",
    ),
    "mt_zh_bo": TaskSpec(
        name="mt_zh_bo",
        source_field="zh",
        target_field="bo",
        required_fields=("bo", "zh"),
        target_script="tibetan",
        instruction="Translate from Chinese to Tibetan:",
    ),
    "hg_bo": TaskSpec(
        name="hg_bo",
        source_field="text",
        target_field="title",
        required_fields=("text", "title"),
        target_script="tibetan",
        instruction="Write a Tibetan title for this Tibetan text:",
    ),
}


def get_task(task: str | TaskSpec) -> TaskSpec:
    """Return the `TaskSpec` for a task name (a `TaskSpec` is returned unchanged).

    Besides the keys of `TASKS`, ``mt_<source>_<target>`` names translation between any two CLDR languages
    (`mt_task`), e.g. ``mt_zh_km``: what the demo of another language trains.

    Raises:
        ValueError: `task` is none of these nor a `TaskSpec`.
    """
    if isinstance(task, TaskSpec):
        return task
    if isinstance(task, str) and task in TASKS:
        return TASKS[task]
    spec = mt_task(task) if isinstance(task, str) else None
    if spec is not None:
        return spec
    raise ValueError(f"unknown task {task!r} (expected one of: {', '.join(TASKS)}, or mt_<source>_<target> with "
                     "two CLDR language codes, e.g. mt_zh_km)")


def mt_task(name: str) -> TaskSpec | None:
    """``mt_<source>_<target>``: translation from one CLDR language to another, records ``{source, target}``
    (fields named by the codes), R_lang in the target's script (`semgrpo.script.languages`); None when `name`
    is not two distinct CLDR codes (split at exactly one ``_`` that gives two, as in ``mt_zh_uz_Arab``)."""
    if not name.startswith("mt_"):
        return None
    from semgrpo.script.languages import check_language, language_name, language_script

    def known(code):
        try:
            return check_language(code) == code
        except ValueError:
            return False

    parts = name[3:].split("_")
    splits = [("_".join(parts[:i]), "_".join(parts[i:])) for i in range(1, len(parts))]
    found = [(src, tgt) for src, tgt in splits if src != tgt and known(src) and known(tgt)]
    if len(found) != 1:
        return None
    src, tgt = found[0]
    return TaskSpec(name=name, source_field=src, target_field=tgt, required_fields=(src, tgt),
                    target_script="+".join(language_script(tgt)),
                    instruction=f"Translate from {language_name(src)} to {language_name(tgt)}:")


def render_prompt(task: str | TaskSpec, source_text: str, tokenizer: Any = None) -> str:
    """Render the prompt the policy sees for one source text.

    With a tokenizer whose `chat_template` is set, the instruction and source text become one
    user message rendered with `apply_chat_template(..., add_generation_prompt=True,
    enable_thinking=False)` (Qwen3 templates read `enable_thinking`; others ignore it). Without a
    chat template (or with `tokenizer=None`) the plain form is `"<instruction>\\n<source>\\n"`.

    Args:
        task: Task name (a key of `TASKS`) or a `TaskSpec`.
        source_text: The model's input text; a non-empty string.
        tokenizer: A Hugging Face tokenizer, or None for the plain template.

    Returns:
        The prompt string, to be tokenized without adding special tokens.

    Raises:
        ValueError: Unknown task, or `source_text` not a non-empty string.
    """
    spec = get_task(task)
    if not isinstance(source_text, str) or not source_text:
        got = "empty string" if isinstance(source_text, str) else type(source_text).__name__
        raise ValueError(f"source_text must be a non-empty string, got {got}")
    content = f"{spec.instruction}\n{source_text}"
    rendered = render_chat(tokenizer, content)
    return content + "\n" if rendered is None else rendered


def render_chat(tokenizer: Any, content: str) -> str | None:
    """`content` as one user message through the tokenizer's chat template, ready for the assistant's turn
    (`add_generation_prompt=True, enable_thinking=False`); None when there is no tokenizer or no template.
    """
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return None
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": content}],
        tokenize=False,
        add_generation_prompt=True,
        enable_thinking=False,
    )
    if not isinstance(rendered, str):
        raise TypeError(
            f"tokenizer.apply_chat_template(tokenize=False) returned {type(rendered).__name__}, expected str"
        )
    return rendered
