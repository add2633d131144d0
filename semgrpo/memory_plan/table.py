"""The memory plan's table: its rows, how a plan is printed and checked against a budget, and the byte counts every
row is built from."""
from __future__ import annotations

from dataclasses import dataclass, field

GiB, MiB = 2**30, 2**20
OPTIMIZER_BYTES = 12  # fp32 master copy + Adam m and v, per trainable parameter
# Bytes per element of an SFT micro-batch's logits [micro, length, vocab] at the peak of the loss's backward:
# the logits in the model dtype, HF cross-entropy's fp32 copy and that copy's fp32 gradient.
LOSS_FP32_BYTES = 4 + 4
WEIGHT_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


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
            knobs = unique(k for r in self.rows if r.kind == "state" and r.gpu for k in r.knobs)
            warnings.append(f"semgrpo: warning: the model states need {format_bytes(states)} per GPU, {over}; "
                            f"try {'; '.join(knobs)}")
        for r in self.rows:
            need = states + (r.gpu or 0) + r.alongside
            if r.kind == "peak" and r.gpu and need > budget_bytes:
                warnings.append(f"semgrpo: warning: model states + {r.label} need {format_bytes(need)} per GPU, "
                                f"{over}; try {'; '.join(r.knobs)}")
        return warnings


def split_note(ways: int) -> str:
    return f" / {ways}" if ways > 1 else ""


def unique(items) -> list[str]:
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
