"""What gpu_check's steps read back (JUnit XML, pytest logs, the Triton cache, the benchmarks' CSVs) and the
Markdown and CSV they write from it."""

from __future__ import annotations

import csv
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

CASE_COLUMNS = ("nodeid", "outcome", "seconds", "cuda_allocations", "message")
MAX_TRACEBACKS, TRACEBACK_LINES = 8, 15  # failures whose traceback ends go into the report
_OUTCOMES = ("passed", "failed", "error", "skipped")


# ---- test cases ----------------------------------------------------------------------------------------------------


def junit_cases(path: Path) -> list[dict]:
    """One dict per test case of a pytest JUnit XML: node id, outcome, seconds, CUDA allocations, message."""
    cases = []
    for tc in ET.parse(path).getroot().iter("testcase"):
        module = tc.get("classname", "").replace(".", "/")
        nodeid = f"{module}.py::{tc.get('name')}" if module else tc.get("name", "?")
        outcome, message, detail = "passed", "", ""
        for tag in ("failure", "error", "skipped"):
            el = tc.find(tag)
            if el is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                message = (el.get("message") or el.text or "").strip()
                detail = (el.text or "").strip()
                break
        props = {p.get("name"): p.get("value") for p in tc.iter("property")}
        cases.append(dict(nodeid=nodeid, outcome=outcome, seconds=float(tc.get("time") or 0.0),
                          cuda_allocations=int(props.get("cuda_allocations") or 0), message=message,
                          detail=detail))
    return cases


_LOG_LINE = re.compile(r"(?:(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED))|(?:(PASSED|FAILED|ERROR|SKIPPED) (\S+::\S+))")


def log_cases(text: str) -> list[dict]:
    """Cases from pytest's verbose lines (``node PASSED`` serially, ``[gw0] [ 5%] PASSED node`` with xdist), for a
    run killed before it wrote its XML; no timings or allocations are known then."""
    seen = {}
    for m in _LOG_LINE.finditer(text):
        nodeid, word = (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(3))
        outcome = {"PASSED": "passed", "FAILED": "failed", "ERROR": "error", "SKIPPED": "skipped"}[word]
        seen[nodeid] = dict(nodeid=nodeid, outcome=outcome, seconds=0.0, cuda_allocations=0, detail="",
                            message="(from the log: the run was stopped before pytest wrote its XML)")
    return list(seen.values())


def case_counts(cases: list[dict]) -> dict:
    counts = {k: sum(c["outcome"] == k for c in cases) for k in _OUTCOMES}
    counts["on_cuda"] = sum(c["cuda_allocations"] > 0 for c in cases)
    return counts


def write_cases_csv(path: Path, cases: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CASE_COLUMNS)
        w.writeheader()
        for c in cases:
            w.writerow({k: c[k] for k in CASE_COLUMNS} | dict(message=_first_line(c["message"], 300)))


def cases_markdown(cases: list[dict], log: str, *, list_all: bool = False) -> str:
    """Counts per test file, then every failure (first line of its message) and the skip reasons."""
    lines = ["| test file | passed | failed | errors | skipped | ran on CUDA | seconds |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    files = sorted({c["nodeid"].split("::")[0] for c in cases})
    for name in files:
        group = [c for c in cases if c["nodeid"].split("::")[0] == name]
        n = case_counts(group)
        lines.append(f"| `{name}` | {n['passed']} | {n['failed']} | {n['error']} | {n['skipped']} | {n['on_cuda']} "
                     f"| {sum(c['seconds'] for c in group):.1f} |")
    if not cases:
        lines = ["No test results: pytest did not get as far as running tests. End of its output:", "",
                 "```", log[-3000:], "```"]
    bad = [c for c in cases if c["outcome"] in ("failed", "error")]
    if bad:
        lines += ["", "Failures (first line of each message; every traceback is in the step's pytest log):", ""]
        lines += [f"- `{c['nodeid']}`: {_first_line(c['message'])}" for c in bad]
        for c in bad[:MAX_TRACEBACKS]:  # the report may be all that comes back from a GPU window
            tail = "\n".join(c["detail"].splitlines()[-TRACEBACK_LINES:])
            lines += ["", f"`{c['nodeid']}`:", "", "```", tail or c["message"], "```"]
    if list_all and cases:
        lines += ["", "| case | outcome | CUDA allocations |", "| --- | --- | --- |"]
        lines += [f"| `{c['nodeid'].split('::')[-1]}` | {c['outcome']} | {c['cuda_allocations']} |" for c in cases]
    reasons = sorted({_first_line(c["message"]) for c in cases if c["outcome"] == "skipped"})
    if reasons:
        lines += ["", "Skipped because: " + "; ".join(reasons)]
    return "\n".join(lines) + "\n"


def _first_line(text: str, limit: int = 240) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line[:limit].replace("|", "\\|")


# ---- Triton kernels ------------------------------------------------------------------------------------------------


def triton_kernels(source_dir: Path) -> list[str]:
    """Names of the ``@triton.jit`` functions of ``source_dir`` that are launched (``name[grid](...)``); the others
    are device functions inlined into them."""
    texts = [p.read_text() for p in sorted(source_dir.glob("*.py"))]
    jitted = {m for t in texts for m in re.findall(r"@triton\.jit\s*\n\s*def (\w+)\(", t)}
    return sorted(n for n in jitted if any(re.search(rf"\b{n}\[", t) for t in texts))


def compiled_kernels(source_dir: Path, cache_dir: Path) -> dict[str, int]:
    """{kernel: compiled variants found in the Triton cache} (Triton keeps ``__grp__<kernel>.json`` per variant)."""
    found = {}
    for name in triton_kernels(source_dir):
        found[name] = sum(1 for _ in cache_dir.rglob(f"__grp__{name}.json")) if cache_dir.is_dir() else 0
    return found


def kernels_markdown(kernels: dict[str, int], smoke: bool) -> str:
    if smoke:
        return (f"Kernels launched by `semgrpo/ops`: {', '.join(f'`{k}`' for k in kernels)} (smoke: the Triton "
                "interpreter compiles nothing).\n")
    lines = ["| Triton kernel | variants compiled (fresh cache) |", "| --- | --- |"]
    lines += [f"| `{k}` | {n if n else 'NOT COMPILED'} |" for k, n in kernels.items()]
    return "\n".join(lines) + "\n"


# ---- benchmark CSVs ------------------------------------------------------------------------------------------------


def read_rows(folder: Path, pattern: str, exclude: str | None = None) -> list[dict]:
    rows = []
    for path in sorted(folder.glob(pattern)):
        if exclude and exclude in path.name:
            continue
        with open(path, newline="") as f:
            rows += list(csv.DictReader(f))
    return rows


def _value(rows, op, provider, metric, mode=None):
    for r in rows:
        if r["op"] == op and r["provider"] == provider and r["metric"] == metric and mode in (None, r["mode"]):
            return float(r["p50"])
    return None


def _fmt(x, spec: str) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _missing(provider: str, peers: dict) -> str:
    return "not installed" if peers.get(provider) is False else "no result (failed: see the step's log)"


FUSED_NAMES = {"ours": "semgrpo `linear_grpo_loss`", "trl_chunked": "TRL `ChunkedLogProbFunction` + torch loss",
               "liger": "Liger `LigerFusedLinearGRPOLoss` (compiled=False)",
               "eager": "torch eager (materialised logits)"}


def fused_linear_markdown(rows: list[dict], peers: dict) -> str:
    shape = rows[0]["shape"] if rows else "no rows"
    op = "linear_grpo_loss"
    lines = [f"GRPO loss from hidden states, forward+backward ({shape}; TRL's default dapo, beta 0.04):", "",
             "| method | ms (p50) | % of matmul peak | peak extra MB | max abs err loss / grad_hidden / grad_weight |",
             "| --- | --- | --- | --- | --- |"]
    for key, label in FUSED_NAMES.items():
        ms = _value(rows, op, key, "time")
        if ms is None:
            lines.append(f"| {label} | {_missing(key, peers)} | | | |")
            continue
        errs = " / ".join(_fmt(_value(rows, op, key, f"max_abs_err_{e}"), ".2e")
                          for e in ("loss", "grad_hidden", "grad_weight"))
        lines.append(f"| {label} | {ms:.2f} | {_fmt(_value(rows, op, key, 'pct_matmul_peak'), '.1f')} "
                     f"| {_fmt(_value(rows, op, key, 'peak_extra_mem'), '.1f')} | {errs} |")
    mm_ms, tflops = _value(rows, "matmul", "torch.mm", "time"), _value(rows, "matmul", "torch.mm", "tflops")
    if mm_ms is not None:
        lines += ["", f"Matmul peak, measured: `torch.mm` [N, H] x [H, V] in the same dtype, {mm_ms:.2f} ms = "
                      f"{tflops:.3g} TFLOP/s; a method's % counts 8*N*H*V FLOPs per forward+backward."]
    ratios = [(m, _value(rows, op, "ours", m)) for m in ("mem_ratio_vs_eager", "mem_ratio_vs_trl_chunked",
                                                           "time_ratio_vs_trl_chunked")]
    if any(v is not None for _, v in ratios):
        lines += ["", "Ours against the others: " + ", ".join(f"{m} {v:.3f}" for m, v in ratios if v is not None)
                  + " (targets: memory <= 1/8 of eager's and <= TRL's, time <= 1.2x TRL's)."]
    return "\n".join(lines) + "\n"


LOGIT_CASES = (("grpo_loss", "fwd"), ("grpo_loss", "fwd+bwd"), ("token_logprobs", "fwd"))
LOGIT_PROVIDERS = ("ours", "ours_inplace", "liger", "eager")


def logits_markdown(rows: list[dict], peers: dict) -> str:
    shape = next((r["shape"] for r in rows if r["op"] == "grpo_loss"), "no rows")
    lines = [f"Logits-level ops ({shape}):", "",
             "| op | mode | provider | ms (p50) | % of peak bandwidth | x eager | peak extra MB |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for op, mode in LOGIT_CASES:
        for prov in LOGIT_PROVIDERS:
            if prov == "ours_inplace" and mode != "fwd+bwd":  # in place only replaces a backward's buffer
                continue
            ms = _value(rows, op, prov, "time", mode)
            if ms is None:
                lines.append(f"| {op} | {mode} | {prov} | {_missing(prov, peers)} | | | |")
                continue
            lines.append(f"| {op} | {mode} | {prov} | {ms:.3f}"
                         f" | {_fmt(_value(rows, op, prov, 'pct_peak_bw', mode), '.1f')}"
                         f" | {_fmt(_value(rows, op, prov, 'speedup_vs_eager', mode), '.2f')}"
                         f" | {_fmt(_value(rows, op, prov, 'peak_extra_mem', mode), '.1f')} |")
    return "\n".join(lines) + "\n"


def ours_figures(fused_rows: list[dict], logit_rows: list[dict]) -> dict:
    """The headline figures of our ops (None where the benchmark gave none)."""
    def ms(rows, op, mode=None):
        v = _value(rows, op, "ours", "time", mode)
        return None if v is None else f"{v:.2f} ms"

    pct = _value(fused_rows, "linear_grpo_loss", "ours", "pct_matmul_peak")
    fl = ms(fused_rows, "linear_grpo_loss")
    return {"linear_grpo_loss": None if fl is None else fl + (f" ({pct:.1f}% of matmul peak)" if pct else ""),
            "grpo_loss fwd+bwd": ms(logit_rows, "grpo_loss", "fwd+bwd"),
            "token_logprobs": ms(logit_rows, "token_logprobs", "fwd")}


# ---- the demo ------------------------------------------------------------------------------------------------------


def write_metrics_csv(path: Path, metrics: list[dict]) -> None:
    """Every numeric metric of every logged step (one row per metrics.jsonl line)."""
    keys = sorted({k for m in metrics for k, v in m.items() if isinstance(v, (int, float))} - {"step"})
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", *keys])
        for m in metrics:
            w.writerow([m.get("step", ""), *(m.get(k, "") for k in keys)])


def demo_markdown(checks, probe: dict, run_summary: dict, wall: float, p50: float, overrides: str) -> str:
    lines = [f"`SEMGRPO_FORCE_COLLECTIVES=1 python bin/train_grpo.py --config configs/demo.yaml {overrides}`", "",
             "| check | expected | seen | met |", "| --- | --- | --- | --- |"]
    lines += [f"| {c} | {e} | {s} | {'yes' if ok else 'NO'} |" for c, e, s, ok in checks]
    figures = [f"wall {wall:.0f} s", f"p50 {p50:.3f} s per GRPO step"]
    for key in ("tau", "reward_mean_first_20pct", "reward_mean_last_20pct"):
        if isinstance(run_summary.get(key), (int, float)):
            figures.append(f"{key} {run_summary[key]:.3f}")
    if probe.get("peak_gpu_memory_bytes"):
        figures.append(f"peak GPU memory {probe['peak_gpu_memory_bytes'] / 2**20:.0f} MiB")
    lines += ["", "Run: " + ", ".join(figures) + "."]
    coll = probe.get("semgrpo_collectives", [])
    if coll:
        lines += ["", "| semgrpo.dist collective | tensor device | dtype | backend | reached torch.distributed "
                      "| calls |", "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {c['op']} | {c['device']} | {c['dtype']} | {c['backend']} | {c['reached_torch']} "
                  f"| {c['calls']} |" for c in coll]
    totals: dict = {}
    for c in probe.get("torch_collectives", []):
        key = (c["op"], c["device"], c["backend"])
        totals[key] = totals.get(key, 0) + c["calls"]
    if totals:
        lines += ["", "torch.distributed calls (semgrpo's and DeepSpeed's): " + ", ".join(
            f"{op} on {dev} via {be} x{n}" for (op, dev, be), n in sorted(totals.items())) + "."]
    return "\n".join(lines) + "\n"
