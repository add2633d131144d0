"""Blind pairwise LLM judge (paper sec. 4.3, "LLM-Judge Win") over an OpenAI-compatible endpoint.

Each pair of outputs is shown to the judge in a random order, without model names; the judge ends its
reply with `Verdict: 1`, `Verdict: 2` or `Verdict: tie`. Standard library only, so evaluation needs no
extra client package.
"""
from __future__ import annotations

import http.client
import json
import math
import os
import random
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Sequence

__all__ = ["JudgeError", "JudgeClient", "judge_prompt", "parse_verdict", "judge_pairs", "wilson_interval"]


class JudgeError(RuntimeError):
    """One judgement failed (HTTP error, timeout, malformed reply)."""


def _snippet(text: str, n: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n] + "..."


class _Failure(Exception):
    """One failed attempt: what went wrong (head), the evidence (detail), and whether to try again."""

    def __init__(self, head: str, detail: str = "", retryable: bool = True):
        super().__init__(head)
        self.head, self.detail, self.retryable = head, detail, retryable


class JudgeClient:
    """Minimal chat-completions client: POST `{url}/chat/completions`, return the first message."""

    def __init__(self, url: str, model: str, *, api_key: str | None = None, timeout: float = 60.0,
                 retries: int = 2, temperature: float = 0.0):
        scheme = urllib.parse.urlsplit(url or "").scheme
        if scheme not in ("http", "https"):
            raise ValueError(f"judge url must start with http:// or https:// (got {url!r}); "
                             "pass the API base, e.g. http://127.0.0.1:8000/v1")
        if not model or not model.strip():
            raise ValueError("judge model name must be non-empty")
        if retries < 0 or timeout <= 0:
            raise ValueError(f"need retries >= 0 and timeout > 0 (got retries={retries}, timeout={timeout})")
        self.url, self.model = url.rstrip("/"), model
        self.endpoint = self.url + "/chat/completions"
        self.api_key = api_key or os.environ.get("SEMGRPO_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY")
        self.timeout, self.retries, self.temperature = float(timeout), int(retries), float(temperature)
        self.backoff = 0.5  # seconds before the first retry, doubled each time; tests set it to 0

    def _post(self, payload: bytes) -> str:
        """One attempt; raises _Failure."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.endpoint, data=payload, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read().decode("utf-8", errors="replace")
        except urllib.error.HTTPError as e:
            try:
                body = e.read().decode("utf-8", errors="replace") if e.fp else ""
            except OSError:  # the error body is only evidence; its loss must not hide the status
                body = ""
            # 5xx and rate limits are transient; other 4xx mean a bad request that a retry cannot fix.
            raise _Failure(f"judge at {self.endpoint} returned HTTP {e.code}", _snippet(body, 200),
                           retryable=e.code >= 500 or e.code == 429) from e
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            # A timeout surfaces bare from getresponse()/read(), or wrapped in URLError from connect().
            reason = getattr(e, "reason", e)
            if isinstance(e, TimeoutError) or isinstance(reason, TimeoutError):
                raise _Failure(f"judge at {self.endpoint} timed out after {self.timeout} s") from e
            raise _Failure(f"judge at {self.endpoint} could not be reached", str(reason)) from e
        try:
            data = json.loads(raw)
        except ValueError as e:
            raise _Failure("judge reply is not JSON", repr(_snippet(raw))) from e
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            content = None
        if not isinstance(content, str):
            raise _Failure("judge reply has no choices[0].message.content", repr(_snippet(raw)))
        return content

    def complete(self, messages: list[dict]) -> str:
        """Return `choices[0].message.content`, retrying transient failures `retries` times."""
        payload = json.dumps({"model": self.model, "messages": messages, "temperature": self.temperature},
                             ensure_ascii=False).encode("utf-8")
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._post(payload)
            except _Failure as f:
                if not f.retryable or attempt > self.retries:
                    tries = f" ({attempt} attempts)" if attempt > 1 else ""
                    raise JudgeError(f.head + (f": {f.detail}" if f.detail else "") + tries) from f.__cause__
                time.sleep(self.backoff * 2 ** (attempt - 1))


_TIBETAN = re.compile(r"[\u0f00-\u0fff]")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")

_FORMAT = ("Compare the two candidates on these criteria, then decide which one is better overall. "
           "If neither is clearly better, answer tie. The candidates are anonymous and shown in an "
           "arbitrary order: judge only their content, not their position or length. You may give brief "
           "reasoning first, but your reply must end with one line that is exactly `Verdict: 1`, "
           "`Verdict: 2` or `Verdict: tie`.")


def _mt_system(src: str, tgt: str) -> str:
    return (f"You are an expert {src}-{tgt} translator evaluating two candidate translations of the same "
            f"{src} source text into {tgt}.\n\nCriteria:\n"
            "1. Fidelity: the translation conveys the full meaning of the source, with nothing left out, "
            "added or distorted.\n"
            f"2. Fluency: it reads as natural, grammatical {tgt}.\n"
            f"3. Language: it is written entirely in {tgt} and its script, with no untranslated source "
            "text, no mixing of languages, and no commentary beyond the translation.\n"
            "4. Terminology: names, terms and numbers are rendered correctly and consistently.\n\n" + _FORMAT)


_HG_SYSTEM = ("You are an expert Tibetan editor evaluating two candidate headlines written for the same "
              "Tibetan news article.\n\nCriteria:\n"
              "1. Main point: the headline captures the central event or message of the article.\n"
              "2. Faithfulness: it states nothing that the article does not support (no invented facts).\n"
              "3. Style: it is concise and reads as a headline, not as a summary or a copy of the first "
              "sentence.\n"
              "4. Language: it is well-formed Tibetan in Tibetan script, with no other language mixed in "
              "and no commentary.\n\n" + _FORMAT)


def judge_prompt(task: str, source: str, candidate_1: str, candidate_2: str,
                 reference: str | None = None) -> list[dict]:
    """Chat messages asking for a blind comparison; `task` is "mt" or "hg"."""
    if task == "mt":
        # Direction from the source's script: the caller's task names ("mt_bo_zh") stay out of the judge.
        bo = len(_TIBETAN.findall(source)) >= len(_HAN.findall(source))
        src, tgt = ("Tibetan", "Chinese") if bo else ("Chinese", "Tibetan")
        system, what, ref_what = _mt_system(src, tgt), f"{src} source text", "reference translation"
    elif task == "hg":
        system, what, ref_what = _HG_SYSTEM, "Tibetan article", "reference headline"
    else:
        raise ValueError(f"unknown judge task {task!r} (expected 'mt' or 'hg')")
    parts = [f"{what[0].upper()}{what[1:]}:\n<source>\n{source}\n</source>"]
    if reference is not None:
        parts.append(f"A {ref_what}, given for orientation only: it is one valid answer among many, and a "
                     "candidate that differs from it can still be better.\n"
                     f"<reference>\n{reference}\n</reference>")
    parts.append(f"Candidate 1:\n<candidate_1>\n{candidate_1}\n</candidate_1>")
    parts.append(f"Candidate 2:\n<candidate_2>\n{candidate_2}\n</candidate_2>")
    parts.append("Which candidate is better? End with `Verdict: 1`, `Verdict: 2` or `Verdict: tie`.")
    return [{"role": "system", "content": system}, {"role": "user", "content": "\n\n".join(parts)}]


# A whole line such as "Verdict: 1", "**Verdict:** tie", "verdict : **2**." (markdown marks tolerated).
_VERDICT = re.compile(r"^[\s*_`#>]*verdict[\s*_`]*:[\s*_`]*(?:candidate\s*)?(1|2|tie)[\s*_`.!]*$", re.I)


def parse_verdict(text: str) -> str:
    """"1", "2" or "tie" from the last verdict line of a judge reply."""
    found = [m.group(1).lower() for m in map(_VERDICT.match, (text or "").splitlines()) if m]
    if not found:
        raise JudgeError(f"judge reply has no verdict line: {_snippet(text or '')!r}")
    return found[-1]


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a proportion k/n (the whole [0, 1] when n = 0)."""
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n (got k={k}, n={n})")
    if n == 0:
        return 0.0, 1.0
    p, z2 = k / n, z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def judge_pairs(client: JudgeClient, task: str, sources: Sequence[str], outputs_a: Sequence[str],
                outputs_b: Sequence[str], *, references: Sequence[str] | None = None, seed: int = 0,
                progress: bool = True) -> dict:
    """Judge a against b on every source; win/tie/loss rates are for a over the decided pairs."""
    lens = {"sources": len(sources), "outputs_a": len(outputs_a), "outputs_b": len(outputs_b)}
    if references is not None:
        lens["references"] = len(references)
    if len(set(lens.values())) != 1 or not lens["sources"]:
        raise ValueError("judge_pairs needs equal, non-empty lengths (got "
                         + ", ".join(f"{k}={v}" for k, v in lens.items()) + ")")
    if task not in ("mt", "hg"):
        raise ValueError(f"unknown judge task {task!r} (expected 'mt' or 'hg')")
    rng = random.Random(seed)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(sources), desc="judge", file=sys.stderr, dynamic_ncols=True)
    records, counts = [], {"a": 0, "b": 0, "tie": 0}
    try:
        for i, source in enumerate(sources):
            # One draw per pair, before the call, so the order sequence does not depend on failures.
            a_first = rng.random() < 0.5
            first, second = (outputs_a[i], outputs_b[i]) if a_first else (outputs_b[i], outputs_a[i])
            ref = references[i] if references is not None else None
            verdict, error = None, None
            try:
                v = parse_verdict(client.complete(judge_prompt(task, source, first, second, ref)))
                verdict = "tie" if v == "tie" else ("a" if (v == "1") == a_first else "b")
                counts[verdict] += 1
            except JudgeError as e:
                error = str(e)
            records.append({"index": i, "a_first": a_first, "verdict": verdict, "error": error})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(a=counts["a"], b=counts["b"], tie=counts["tie"],
                                err=sum(r["error"] is not None for r in records), refresh=False)
    finally:
        if bar is not None:
            bar.close()
    errors = [r["error"] for r in records if r["error"] is not None]
    if len(errors) == len(records):
        raise JudgeError(f"all {len(records)} judgements failed; first: {errors[0]}")
    wins, ties, losses = counts["a"], counts["tie"], counts["b"]
    n = wins + ties + losses
    lo, hi = wilson_interval(wins, n)
    return {"n": n, "wins": wins, "ties": ties, "losses": losses, "errors": len(errors),
            "win_rate": wins / n, "tie_rate": ties / n, "loss_rate": losses / n, "ci95": [lo, hi],
            "records": records}
