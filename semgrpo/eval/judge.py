"""Blind pairwise LLM judge (paper sec. 4.3, "LLM-Judge Win") over an OpenAI-compatible endpoint.

Each pair of outputs is shown to the judge in a random order, without model names; the judge ends its
reply with `Verdict: 1`, `Verdict: 2` or `Verdict: tie`. Standard library only, so evaluation needs no
extra client package.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import random
import re
import socket
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence

from semgrpo.errors import UserError

__all__ = ["JudgeError", "JudgeUnavailable", "JudgeClient", "judge_prompt", "parse_verdict", "judge_pairs",
           "wilson_interval"]


class JudgeError(UserError):
    """One judgement failed (HTTP error, timeout, malformed reply)."""


class JudgeUnavailable(JudgeError):
    """The circuit breaker is open: the judge failed too often in a row and is no longer called."""


def _snippet(text: str, n: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n] + "..."


class _Failure(Exception):
    """One failed attempt: what went wrong (head), the evidence (detail), and whether to try again."""

    def __init__(self, head: str, detail: str = "", retryable: bool = True):
        super().__init__(head)
        self.head, self.detail, self.retryable = head, detail, retryable


class JudgeClient:
    """Minimal chat-completions client: POST `{url}/chat/completions`, return the first message.

    `timeout` is a wall-clock deadline for one attempt as a whole (connect, send, status line, headers
    and every byte of the body): a server that trickles its reply is cut off when it expires, not only
    one that stays silent. After `max_failures` calls of `complete` in a row that failed (all retries
    spent), or judgements the caller reported with `note_failure`, the client stops calling the judge:
    every later `complete` raises `JudgeUnavailable` at once, without a request.
    """

    def __init__(self, url: str, model: str, *, api_key: str | None = None, timeout: float = 60.0,
                 retries: int = 2, temperature: float = 0.0, max_failures: int = 3):
        parts = urllib.parse.urlsplit(url or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"judge url must start with http:// or https:// (got {url!r}); "
                             "pass the API base, e.g. http://127.0.0.1:8000/v1")
        if not model or not model.strip():
            raise ValueError("judge model name must be non-empty")
        if retries < 0 or timeout <= 0 or max_failures < 1:
            raise ValueError("need retries >= 0, timeout > 0 and max_failures >= 1 (got retries="
                             f"{retries}, timeout={timeout}, max_failures={max_failures})")
        self.url, self.model = url.rstrip("/"), model
        self.endpoint = self.url + "/chat/completions"
        self.api_key = api_key or os.environ.get("SEMGRPO_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY")
        self.timeout, self.retries, self.temperature = float(timeout), int(retries), float(temperature)
        self.backoff = 0.5  # seconds before the first retry, doubled each time; tests set it to 0
        self.max_failures = int(max_failures)
        self.consecutive_failures = 0
        self.disabled: str | None = None  # why the breaker opened; None while the judge is in use

    def note_failure(self, reason: str) -> None:
        """Count one failed judgement; open the breaker at `max_failures` in a row."""
        self.consecutive_failures += 1
        if self.consecutive_failures >= self.max_failures and self.disabled is None:
            self.disabled = (f"judge disabled after {self.consecutive_failures} consecutive failures; "
                             f"last: {reason}")

    def note_success(self) -> None:
        self.consecutive_failures = 0

    def _post(self, payload: bytes) -> str:
        """One attempt under the wall-clock deadline `self.timeout`; raises _Failure."""
        parts = urllib.parse.urlsplit(self.endpoint)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        # The proxy from the environment, as urllib would use it (http_proxy / https_proxy / no_proxy).
        proxy = urllib.request.getproxies().get(parts.scheme)
        if proxy and not urllib.request.proxy_bypass(parts.hostname):
            via = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
            if parts.scheme == "https":
                conn = cls(via.hostname, via.port, timeout=self.timeout)
                conn.set_tunnel(parts.hostname, parts.port)
            else:
                conn = cls(via.hostname, via.port or 80, timeout=self.timeout)
                path = self.endpoint
        else:
            conn = cls(parts.hostname, parts.port, timeout=self.timeout)
        expired, held = threading.Event(), []

        def expire():  # unblocks any read in progress: the socket is shut down under it
            expired.set()
            for sock in held:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

        timer = threading.Timer(self.timeout, expire)
        timer.daemon = True
        timer.start()
        timed_out = _Failure(f"judge at {self.endpoint} timed out after {self.timeout:g} s")
        try:
            conn.connect()  # bounded by the socket timeout, itself the deadline
            # Kept here: http.client forgets conn.sock once the status line says the server will close.
            held.append(conn.sock)
            if expired.is_set():
                raise TimeoutError
            conn.request("POST", path, body=payload, headers=headers)
            resp = conn.getresponse()
            status, raw = resp.status, resp.read()
        except (OSError, http.client.HTTPException) as e:
            if expired.is_set() or isinstance(e, TimeoutError):
                raise timed_out from e
            raise _Failure(f"judge at {self.endpoint} could not be reached", str(e)) from e
        finally:
            timer.cancel()
            conn.close()
        if expired.is_set():  # the shutdown may end a body without Content-Length quietly
            raise timed_out
        text = raw.decode("utf-8", errors="replace")
        if status >= 400:
            # 5xx and rate limits are transient; other 4xx mean a bad request that a retry cannot fix.
            raise _Failure(f"judge at {self.endpoint} returned HTTP {status}", _snippet(text, 200),
                           retryable=status >= 500 or status == 429)
        try:
            data = json.loads(text)
        except ValueError as e:
            raise _Failure("judge reply is not JSON", repr(_snippet(text))) from e
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            content = None
        if not isinstance(content, str):
            raise _Failure("judge reply has no choices[0].message.content", repr(_snippet(text)))
        return content

    def complete(self, messages: list[dict], *, count_success: bool = True) -> str:
        """Return `choices[0].message.content`, retrying transient failures `retries` times.

        A failure counts towards the breaker; a reply resets the count unless `count_success` is False
        (a caller that still has to check the reply calls `note_success` or `note_failure` itself).
        """
        if self.disabled is not None:
            raise JudgeUnavailable(self.disabled)
        payload = json.dumps({"model": self.model, "messages": messages, "temperature": self.temperature},
                             ensure_ascii=False).encode("utf-8")
        attempt = 0
        while True:
            attempt += 1
            try:
                content = self._post(payload)
            except _Failure as f:
                if not f.retryable or attempt > self.retries:
                    tries = f" ({attempt} attempts)" if attempt > 1 else ""
                    message = f.head + (f": {f.detail}" if f.detail else "") + tries
                    self.note_failure(message)
                    raise JudgeError(message) from f.__cause__
                time.sleep(self.backoff * 2 ** (attempt - 1))
            else:
                if count_success:
                    self.note_success()
                return content


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
    records, counts, aborted = [], {"a": 0, "b": 0, "tie": 0}, None
    try:
        for i, source in enumerate(sources):
            # One draw per pair, before the call, so the order sequence does not depend on failures.
            a_first = rng.random() < 0.5
            first, second = (outputs_a[i], outputs_b[i]) if a_first else (outputs_b[i], outputs_a[i])
            ref = references[i] if references is not None else None
            verdict, error = None, None
            try:
                reply = client.complete(judge_prompt(task, source, first, second, ref), count_success=False)
            except JudgeUnavailable as e:  # the breaker is open: the remaining pairs are not judged
                aborted = str(e)
                records += [{"index": k, "a_first": None, "verdict": None, "error": aborted}
                            for k in range(i, len(sources))]
                break
            except JudgeError as e:
                error = str(e)
            else:
                try:
                    v = parse_verdict(reply)
                    verdict = "tie" if v == "tie" else ("a" if (v == "1") == a_first else "b")
                    counts[verdict] += 1
                    client.note_success()
                except JudgeError as e:
                    error = str(e)
                    client.note_failure(error)  # a judge that never gives a verdict is as broken
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
        if aborted:
            raise JudgeUnavailable(f"all {len(records)} judgements failed: {aborted}")
        raise JudgeError(f"all {len(records)} judgements failed; first: {errors[0]}")
    wins, ties, losses = counts["a"], counts["tie"], counts["b"]
    n = wins + ties + losses
    lo, hi = wilson_interval(wins, n)
    return {"n": n, "wins": wins, "ties": ties, "losses": losses, "errors": len(errors),
            "win_rate": wins / n, "tie_rate": ties / n, "loss_rate": losses / n, "ci95": [lo, hi],
            "aborted": aborted, "records": records}
