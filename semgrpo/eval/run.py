"""One evaluation: every model on the task, on CMRC 2018 and on OOD text, optionally judged pairwise.

`run_evaluation(settings)` loads the base once (`models.ModelBench`), then per model: greedy task
outputs -> BLEU/chrF/chrF++/ROUGE-L, semantic similarity, script consistency; CMRC answers by generation ->
EM/F1/Avg; OOD passages -> token NLL and KL vs the base. Then the LLM judge (when a URL is given) and
the files: `eval.json` (schema "semgrpo.eval/1", see `report`), `outputs.jsonl`, `ood_tokens.npz`,
`eval.md` and the plots.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from semgrpo.config import ConfigError
from semgrpo.data import build_examples, load_records
from semgrpo.data_root import resolve_data_path
from semgrpo.eval.generation import cmrc_prompt_ids, cmrc_questions, first_answer_line, generate_texts, load_cmrc
from semgrpo.eval.metrics import bleu, chrf, chrf_pp, cmrc_scores, nll_kl_summary, rouge_l, similarity_stats
from semgrpo.eval.models import ModelBench, ModelSpec, check_adapter
from semgrpo.eval.ood import drift_of_models, encode_windows, load_passages, script_token_mask
from semgrpo.eval.report import write_report
from semgrpo.files import write_json_atomic, write_jsonl_atomic
from semgrpo.prompts import get_task
from semgrpo.script import script_consistent

SCHEMA = "semgrpo.eval/1"


@dataclass
class EvalSettings:
    """Everything one evaluation needs; bin/evaluate.py fills it from flags and the run's config.json."""

    output: str
    base: str
    tokenizer: str
    models: list[ModelSpec]
    task: str
    data: str
    limit: int = 0
    encoder: str = ""
    # A second encoder, trained apart from the reward's: similarity that GRPO did not optimise, with each output
    # cut to its reference's length in tokens, so that a longer output cannot score higher by length alone.
    independent_encoder: str = ""
    max_new_tokens: int = 256
    max_prompt_length: int = 1024
    batch_size: int = 16
    cmrc: str = ""
    cmrc_limit: int = 0
    cmrc_max_new_tokens: int = 64
    ood: str = ""
    ood_samples: int = 200
    ood_max_tokens: int = 256
    judge_url: str = ""
    judge_model: str = ""
    judge_pairs: list[tuple[str, str]] = field(default_factory=list)
    judge_samples: int = 200
    judge_timeout: float = 60.0  # wall-clock seconds per judge request attempt
    judge_max_failures: int = 3  # consecutive failed judgements before the judge is no longer called
    seed: int = 0
    dtype: str = "auto"
    kind: str = "evaluation"


def _progress(desc: str):
    from tqdm.auto import tqdm

    return lambda it: tqdm(it, desc=desc, file=sys.stderr, leave=False)


def _say(msg: str) -> None:
    print(f"evaluate: {msg}", file=sys.stderr, flush=True)


def run_evaluation(s: EvalSettings) -> dict:
    """Evaluate every model of `s`; write the files into `s.output`; return the eval.json dict."""
    from semgrpo.modeling import load_reward_encoder, load_tokenizer_from, resolve_dtype
    from semgrpo.rewards import SemanticSimilarity
    from semgrpo.session import eos_ids

    started = time.perf_counter()
    task = get_task(s.task)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = resolve_dtype(s.dtype)
    tok = load_tokenizer_from(s.tokenizer, "--tokenizer")
    eos = eos_ids(tok)
    # Everything the user named is read and checked before the first model is loaded.
    records = load_records(s.data, task=task, split="dev")
    examples = build_examples(records, task=task, tokenizer=tok, max_prompt_length=s.max_prompt_length,
                              source=s.data, log=_say)
    examples = examples[: s.limit] if s.limit > 0 else examples
    source_text = {str(r.get("id", f"{s.data}:{i}")): r[task.source_field] for i, r in enumerate(records, 1)}
    questions, cmrc_data = [], None
    if s.cmrc:
        if not resolve_data_path(s.cmrc, what="--cmrc").is_file():
            raise ConfigError(f"--cmrc {s.cmrc!r} does not exist")
        cmrc_data = load_cmrc(s.cmrc)
        questions = cmrc_questions(cmrc_data, limit=s.cmrc_limit)
        cmrc_data = _asked_only(cmrc_data, {q["id"] for q in questions})  # score only what was asked
    ood_source = s.ood or s.cmrc
    windows = encode_windows(tok, load_passages(ood_source, limit=s.ood_samples), max_tokens=s.ood_max_tokens) \
        if ood_source else []
    judge = None
    if s.judge_url:
        from semgrpo.eval.judge import JudgeClient

        judge = JudgeClient(s.judge_url, s.judge_model, timeout=s.judge_timeout, max_failures=s.judge_max_failures)
    for spec in s.models:
        for adapter in spec.adapters:
            check_adapter(adapter)
    similarity = SemanticSimilarity(load_reward_encoder(s.encoder, device=device)) if s.encoder else None
    independent = (SemanticSimilarity(load_reward_encoder(s.independent_encoder, device=device))
                   if s.independent_encoder else None)
    Path(s.output).mkdir(parents=True, exist_ok=True)

    for spec in s.models:
        _say(f"{spec.name}: {_describe(spec, s.base)}")
    out = Path(s.output)
    models, outputs, tokens = {}, {}, {}
    result = {"schema": SCHEMA, "kind": s.kind, "task": task.name,
              "task_metric": "rouge_l" if task.name.startswith("hg") else "bleu",
              "baseline": s.models[0].name, "complete": False, "models": models, "judge": None}

    def settings() -> dict:
        return {"base": s.base, "data": s.data, "samples": len(examples), "decoding": "greedy",
                "max_new_tokens": s.max_new_tokens, "cmrc": s.cmrc or None, "cmrc_questions": len(questions),
                "ood": ood_source or None, "ood_passages": len(windows), "ood_max_tokens": s.ood_max_tokens,
                "dtype": dtype, "device": str(device), "seed": s.seed,
                "wall_seconds": round(time.perf_counter() - started, 1)}

    bench = ModelBench(s.base, dtype=dtype, device=device)
    for spec in s.models:
        _say(f"{spec.name}: {len(examples)} task prompts, {len(questions)} CMRC questions, "
             f"{len(windows)} OOD passages")
        with bench.use(spec) as (model, _):
            texts, lengths, capped = generate_texts(model, tok, [ex.prompt_ids for ex in examples], eos_ids=eos,
                                                    max_new_tokens=s.max_new_tokens, batch_size=s.batch_size,
                                                    device=device, progress=_progress(f"{spec.name}: task"),
                                                    with_lengths=True)
            outputs[spec.name] = texts
            entry = {"source": spec.source, "checkpoint": _checkpoint_of(spec),
                     "adapters": [str(a) for a in spec.adapters],
                     "task": _task_scores(texts, examples, task.target_script, similarity)}
            entry["task"]["length"] = {"mean_tokens": float(np.mean(lengths)) if lengths else 0.0,
                                       "capped_share": float(np.mean(capped)) if capped else 0.0}
            entry["task"]["similarity_independent"] = (
                similarity_stats(independent.similarity(_cut_to_references(texts, examples, tok),
                                                        [ex.reference for ex in examples]))
                if independent is not None else None)
            entry["cmrc"] = _cmrc(model, tok, questions, cmrc_data, s, eos, device, spec.name) if questions else None
            entry["ood"] = None
        models[spec.name] = entry
        _say(f"{spec.name}: " + _headline(entry))
        result["settings"] = settings()
        _write_progress(out, result, outputs, examples)  # what is done survives a later failure
    if windows:  # every model against one base forward per batch of windows
        _say(f"OOD drift of {len(s.models)} models on {len(windows)} passages")
        script_mask = script_token_mask(tok, task.target_script)
        with bench.use_all(s.models) as (fns, base_logits):
            drift = drift_of_models(fns, base_logits, windows, pad_id=tok.pad_token_id, batch_size=s.batch_size,
                                    device=device, script_mask=script_mask, progress=_progress("OOD"))
        for name, per_token in drift.items():
            models[name]["ood"] = _ood_entry(per_token)
            tokens[name] = {"nll": per_token["nll_adapted"], "kl": per_token["kl"]}
            _say(f"{name}: " + _headline(models[name]))
        result["settings"] = settings()
        _write_progress(out, result, outputs, examples)

    if judge:
        sources = [source_text[ex.id] for ex in examples]
        result["judge"] = _judge(judge, s, task.name, sources, examples, outputs,
                                 save=lambda: _write_progress(out, result, outputs, examples))
    result["complete"] = True
    result["settings"] = settings()
    _write(out, result, outputs, examples, tokens)
    return result


def _ood_entry(per_token: dict) -> dict:
    """The OOD numbers of one model: NLL, KL and ΔNLL (mean, median, p90), and the ΔNLL split into the mass the
    taught script took (script_shift) and the NLL renormalised over the other tokens (forgetting)."""
    summary = nll_kl_summary(per_token)
    split = {k: float(np.mean(per_token[k] - per_token[k + "_base"])) for k in ("script_shift", "nll_renormalised")
             if k in per_token}
    return {"tokens": int(len(per_token["kl"])), "nll": summary["nll_adapted"], "kl": summary["kl"],
            "delta_nll": summary["delta"], "delta_nll_split": split or None}


def _cut_to_references(texts: list[str], examples, tok) -> list[str]:
    """Each output cut to its reference's length in tokens (decoded back to text)."""
    out = []
    for text, ex in zip(texts, examples):
        n = len(tok(ex.reference, add_special_tokens=False)["input_ids"])
        out.append(tok.decode(tok(text, add_special_tokens=False)["input_ids"][:max(n, 1)]))
    return out


def _checkpoint_of(spec: ModelSpec) -> str | None:
    """The checkpoint (or adapter folder) a stage is evaluated from; None for the base itself."""
    if spec.full_path:
        return spec.full_path
    if not spec.adapters:
        return None
    last = Path(spec.adapters[-1])
    return str(last.parent if last.name == "adapter" and last.parent.name.startswith("step-") else last)


def _describe(spec: ModelSpec, base: str) -> str:
    if spec.full_path:
        return f"full model {spec.full_path}"
    if not spec.adapters:
        return f"the base model {base}"
    chain = " + ".join(str(a) for a in spec.adapters)
    return f"checkpoint {_checkpoint_of(spec)} (base {base} + adapters {chain})"


def _task_scores(texts, examples, script, similarity) -> dict:
    refs = [ex.reference for ex in examples]
    # the metrics count each script's own units (semgrpo.eval.metrics.metric_scheme)
    out = {"n": len(texts), "bleu": bleu(texts, refs, script=script),
           "chrf": chrf(texts, refs, script=script), "chrf_pp": chrf_pp(texts, refs, script=script),
           "rouge_l": rouge_l(texts, refs, script=script),
           "script_consistent": float(np.mean(script_consistent(texts, script=script))), "similarity": None}
    if similarity is not None:
        out["similarity"] = similarity_stats(similarity.similarity(texts, refs))
    return out


def _cmrc(model, tok, questions, dataset, s: EvalSettings, eos, device, name) -> dict:
    prompts = [cmrc_prompt_ids(q, tok, max_prompt_tokens=s.max_prompt_length) for q in questions]
    answers = generate_texts(model, tok, prompts, eos_ids=eos, max_new_tokens=s.cmrc_max_new_tokens,
                             batch_size=s.batch_size, device=device, progress=_progress(f"{name}: CMRC"))
    predictions = {q["id"]: first_answer_line(a) for q, a in zip(questions, answers)}
    return cmrc_scores(dataset, predictions)


def _asked_only(dataset: dict, asked: set[str]) -> dict:
    """The CMRC dataset restricted to the questions in `asked` (with --cmrc-limit)."""
    return {"data": [{"paragraphs": [{"context": p["context"],
                                      "qas": [qa for qa in p["qas"] if str(qa["id"]).strip() in asked]}
                                     for p in art["paragraphs"]]} for art in dataset["data"]]}


def _judge(client, s: EvalSettings, task_name: str, sources, examples, outputs, save=None) -> dict:
    """Every judge pair; a pair whose judgements all failed, or that the breaker cut short, is recorded
    with its error (and the first such error under "error"), not raised: the metrics stay."""
    from semgrpo.eval.judge import JudgeError, judge_pairs

    n = min(len(examples), s.judge_samples)
    src, refs = sources[:n], [ex.reference for ex in examples[:n]]
    judged = {"model": s.judge_model, "url": s.judge_url, "pairs": [], "error": None}
    for a, b in s.judge_pairs:
        if client.disabled:
            judged["pairs"].append({"a": a, "b": b, "error": client.disabled})
            continue
        _say(f"judge: {a} vs {b} on {n} samples ({s.judge_model})")
        try:
            res = judge_pairs(client, "hg" if task_name.startswith("hg") else "mt", src, outputs[a][:n],
                              outputs[b][:n], references=refs, seed=s.seed)
        except JudgeError as exc:
            judged["pairs"].append({"a": a, "b": b, "error": str(exc)})
            judged["error"] = judged["error"] or f"{a} vs {b}: {exc}"
        else:
            judged["pairs"].append({"a": a, "b": b, **{k: v for k, v in res.items() if k != "records"}})
            if res.get("aborted"):
                judged["error"] = judged["error"] or f"{a} vs {b}: {res['aborted']}"
        if save is not None:
            save()
    return judged


def _headline(entry: dict) -> str:
    t, parts = entry["task"], []
    parts.append(f"BLEU {t['bleu']:.2f} chrF {t['chrf']:.2f} chrF++ {t['chrf_pp']:.2f} ROUGE-L {t['rouge_l']:.2f}")
    if t["similarity"]:
        parts.append(f"similarity {t['similarity']['mean']:.4f}")
    if entry["cmrc"]:
        parts.append(f"CMRC Avg {entry['cmrc']['avg']:.2f} F1 {entry['cmrc']['f1']:.2f}")
    if entry["ood"]:
        parts.append(f"OOD NLL {entry['ood']['nll']['mean']:.3f} KL {entry['ood']['kl']['mean']:.4f}")
    return ", ".join(parts)


def _write_progress(out: Path, result: dict, outputs: dict, examples) -> None:
    """eval.json and outputs.jsonl as they stand, each replaced atomically (never seen half written)."""
    write_json_atomic(out / "eval.json", result, sort_keys=False)  # model order = table row order
    write_jsonl_atomic(out / "outputs.jsonl", (
        {"id": ex.id, "reference": ex.reference, **{name: texts[i] for name, texts in outputs.items()}}
        for i, ex in enumerate(examples)))


def _write(out: Path, result: dict, outputs: dict, examples, tokens: dict) -> None:
    _write_progress(out, result, outputs, examples)
    if tokens:
        np.savez_compressed(out / "ood_tokens.npz", **{f"{m}/{k}": v for m, d in tokens.items() for k, v in d.items()})
    write_report(result, out, tokens=tokens or None)
