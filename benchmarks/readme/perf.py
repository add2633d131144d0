"""The README's Performance figures, from the benchmark CSVs of benchmarks/results/ (p50 of each row)."""
from __future__ import annotations

from readme.sources import RESULTS, column, p50

KERNELS = f"{RESULTS}/bench_kernels_NVIDIA_H100_80GB_HBM3.csv"
FUSED_LINEAR = f"{RESULTS}/bench_kernels_fused_linear_cpu.csv"
SCRIPT = f"{RESULTS}/bench_script_cpu_2core.csv"
# bench_train.py's four invocations, in the table's row order (README "Reproduce:" says how each was run)
TRAIN = {"options_off": f"{RESULTS}/bench_train_cpu_options_off.csv", "default": f"{RESULTS}/bench_train_cpu.csv",
         "micro16": f"{RESULTS}/bench_train_cpu_micro16.csv", "zero2": f"{RESULTS}/bench_train_cpu_zero2.csv"}


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("|" + "|".join(f" {c} " if c else " " for c in r) + "|" for r in lines)  # an empty cell: "| |"


def _mb(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}"


def measured(rel: str) -> str:
    """'2026-11-23 (b291f59)': the day and git sha of a CSV's rows (all of one run)."""
    days, shas = sorted({t[:10] for t in column(rel, "timestamp")}), sorted(column(rel, "git_sha"))
    return f"{', '.join(days)} ({', '.join(shas)})"


def device(rel: str) -> str:
    return ", ".join(sorted(column(rel, "device")))


# ------------------------------------------------------------------------------- kernels on the H100

_BIG = "N=16384,V=151936,"


def _k(op, provider, mode, metric, shape=_BIG) -> float:
    return p50(KERNELS, op=op, provider=provider, mode=mode, metric=metric, shape=shape)


def kernels_table() -> str:
    def loss_cell(provider, first=False):
        t, pct = _k("grpo_loss", provider, "fwd+bwd", "time"), _k("grpo_loss", provider, "fwd+bwd", "pct_peak_bw")
        return f"{t:#.3g} ms ({pct:.1f}%{' of peak' if first else ''})"

    def small(op, provider, shape):
        return f"{_k(op, provider, 'fwd', 'time', shape):.3f} ms"

    loss = [loss_cell("ours", first=True), loss_cell("ours_inplace"), loss_cell("liger"),
            f"{_k('grpo_loss', 'eager', 'fwd+bwd', 'time'):#.3g} ms",
            f"{_k('grpo_loss', 'compile', 'fwd+bwd', 'time'):#.3g} ms"]
    memory = [f"{_mb(_k('grpo_loss', p, 'fwd+bwd', 'peak_extra_mem'))} MB" for p in
              ("ours", "ours_inplace", "liger", "eager", "compile")]
    memory[0] += " (a gradient buffer)"
    ours_lp = _k("token_logprobs", "ours", "fwd", "time")
    logprobs = [f"{ours_lp:.2f} ms ({_k('token_logprobs', 'ours', 'fwd', 'pct_peak_bw'):.1f}%)", "", "",
                f"{_k('token_logprobs', 'eager', 'fwd', 'time') / ours_lp:.0f}x slower", ""]
    adv, reward = "B=4096,G=8", "N=32768,D=1024,"
    rows = [["grpo_loss fwd+bwd, N=16384, V=151936", *loss], ["its extra memory", *memory],
            ["token_logprobs, same shape", *logprobs],
            ["group_advantages, 4096 x 8", small("group_advantages", "ours", adv), "", "",
             small("group_advantages", "eager", adv), small("group_advantages", "compile", adv)],
            ["semantic_reward, 32768 x 1024", small("semantic_reward", "ours", reward), "", "",
             small("semantic_reward", "eager", reward), small("semantic_reward", "compile", reward)]]
    return _table(["op, shape", "semgrpo", "semgrpo in place", "Liger 0.8.5", "torch eager", "torch.compile"], rows)


# --------------------------------------------------------------------- GRPO loss from hidden states (CPU)

_FUSED = {"ours": "semgrpo `linear_grpo_loss` (chunked torch)",
          "trl_chunked": "TRL 1.16 `ChunkedLogProbFunction` + torch loss",
          "liger": "Liger 0.8.5 `LigerFusedLinearGRPOLoss` (compiled=False)",
          "eager": "torch eager (materialised logits)"}


def _f(provider, metric) -> float:
    return p50(FUSED_LINEAR, provider=provider, mode="fwd+bwd", metric=metric)


def fused_linear_table() -> str:
    rows = []
    for provider, label in _FUSED.items():
        errors = "reference" if provider == "eager" else " / ".join(
            f"{_f(provider, f'max_abs_err_{k}'):.1e}" for k in ("loss", "grad_hidden", "grad_weight"))
        rows.append([label, f"{_f(provider, 'time') / 1000:.1f} s", f"{_f(provider, 'peak_extra_mem'):,.0f} MB",
                     errors])
    return _table(["method", "fwd+bwd", "peak extra memory", "max abs error loss / grad_hidden / grad_weight"], rows)


def fused_linear_ratios() -> str:
    return (f"{_f('ours', 'time_ratio_vs_trl_chunked'):.2f}x TRL's time, {_f('ours', 'mem_ratio_vs_trl_chunked'):.2f}x "
            f"its memory and {_f('ours', 'mem_ratio_vs_eager'):.3f}x eager's memory")


# ------------------------------------------------------------------------------------ script checker

def _s(provider, threads) -> float:
    return p50(SCRIPT, provider=provider, mode=threads, metric="throughput")


def script_table() -> str:
    labels = {"c": "C extension (`semgrpo._script_check`, GIL released)", "regex": "`regex` fallback",
              "python": "plain Python loop"}
    rows = []
    for provider, label in labels.items():
        one, two = _s(provider, "1thread"), _s(provider, "2threads")
        speedup = f" (x{two / one:.2f})" if provider == "c" else ""
        rows.append([label, f"{_mb(one)} MB/s", f"{_mb(two)} MB/s{speedup}"])
    return _table(["path", "1 thread", "2 threads"], rows)


def script_c_over_regex() -> str:
    return f"{_s('c', '1thread') / _s('regex', '1thread'):.0f}x"


# ----------------------------------------------------------------------------- a GRPO step against TRL

_TRAIN_ROWS = {"options_off": "ZeRO-3, micro 8 x accumulation 2, merged sampling and gathered policy pass off",
               "default": "ZeRO-3, micro 8 x 2: the defaults plus the demo's merged sampling",
               "micro16": "ZeRO-3, micro 16 x 1, the same",
               "zero2": "ZeRO-2, micro 8 x 2, merged sampling (measured at {sha}; the ZeRO-3-only gathered pass does "
                        "not apply)"}
_PHASES = ("generation", "logprobs", "policy_fwd_bwd", "optimizer", "step")


def train(run: str, provider: str, metric: str) -> float:
    return p50(TRAIN[run], provider=provider, metric=metric)


def train_table() -> str:
    rows = []
    for run, label in _TRAIN_ROWS.items():
        cells = [f"{train(run, 'semgrpo', f'{p}_seconds'):.3f} / {train(run, 'trl', f'{p}_seconds'):.3f}"
                 for p in _PHASES]
        cells += [f"{train(run, 'semgrpo/trl', m):.2f}x"
                  for m in ("samples_per_second", "completion_tokens_per_second")]
        rows.append([label.format(sha=", ".join(sorted(column(TRAIN[run], "git_sha")))), *cells])
    return _table(["our DeepSpeed config", "generation", "log-probs", "policy fwd+bwd", "optimizer", "step",
                   "samples/s ours/TRL", "tokens/s ours/TRL"], rows)


def train_measured() -> str:
    """'2026-11-23 (6acbf81; ZeRO-2 row 5593af5)'."""
    shas = {run: ", ".join(sorted(column(rel, "git_sha"))) for run, rel in TRAIN.items()}
    days = sorted({t[:10] for rel in TRAIN.values() for t in column(rel, "timestamp")})
    zero3 = sorted({shas[r] for r in ("options_off", "default", "micro16")})
    return f"{', '.join(days)} ({', '.join(zero3)}; ZeRO-2 row {shas['zero2']})"


def _range(values, fmt: str, unit: str) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:{fmt}}{unit}" if f"{lo:{fmt}}" == f"{hi:{fmt}}" else f"{lo:{fmt}}-{hi:{fmt}}{unit}"


def train_rss(provider: str) -> str:
    return _range([train(run, provider, "peak_rss") for run in TRAIN], ".0f", " MiB")


def train_trl_step_range() -> str:
    return _range([train(run, "trl", "step_seconds") for run in TRAIN], ".3f", " s")


def train_lengths() -> str:
    return (f"{train('default', 'semgrpo', 'mean_completion_length'):.2f} vs "
            f"{train('default', 'trl', 'mean_completion_length'):.2f}")


FIGURES = {
    "perf.kernels.table": kernels_table,
    "perf.kernels.device": lambda: device(KERNELS),
    "perf.kernels.measured": lambda: measured(KERNELS),
    "perf.fused_linear.table": fused_linear_table,
    "perf.fused_linear.ratios": fused_linear_ratios,
    "perf.fused_linear.measured": lambda: measured(FUSED_LINEAR),
    "perf.script.table": script_table,
    "perf.script.c_over_regex": script_c_over_regex,
    "perf.script.measured": lambda: measured(SCRIPT),
    "perf.train.table": train_table,
    "perf.train.measured": train_measured,
    "perf.train.policy_hooked": lambda: f"{train('options_off', 'semgrpo', 'policy_fwd_bwd_seconds'):.2f} s",
    "perf.train.policy_gathered": lambda: f"{train('default', 'semgrpo', 'policy_fwd_bwd_seconds'):.2f} s",
    "perf.train.step_zero3": lambda: f"{train('default', 'semgrpo', 'step_seconds'):.3f} s",
    "perf.train.step_zero2": lambda: f"{train('zero2', 'semgrpo', 'step_seconds'):.3f} s",
    "perf.train.zero3_over_zero2": lambda: (
        f"{train('default', 'semgrpo', 'step_seconds') / train('zero2', 'semgrpo', 'step_seconds'):.1f}x"),
    "perf.train.lengths": train_lengths,
    "perf.train.rss_ours": lambda: train_rss("semgrpo"),
    "perf.train.rss_trl": lambda: train_rss("trl"),
    "perf.train.samples_zero3": lambda: f"{train('default', 'semgrpo/trl', 'samples_per_second'):.2f}x",
    "perf.train.samples_zero2": lambda: f"{train('zero2', 'semgrpo/trl', 'samples_per_second'):.2f}x",
    "perf.train.trl_step_range": train_trl_step_range,
}
