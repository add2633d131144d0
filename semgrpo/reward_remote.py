"""A reward computed by a server: `http://host:port/path` entries of `reward.functions`.

Each call POSTs one JSON object `{"prompts": [...], "completions": [...], "references": [...]}` (UTF-8) and
expects a JSON list back, one number or null per completion, in order. A timeout, a refused or reset
connection and a 5xx reply are retried `retries` times, waiting `backoff` seconds ($SEMGRPO_REMOTE_BACKOFF,
default 1) before the first retry and twice as long before each next one; a 4xx reply is not retried. Every
failure is one RewardError line naming the URL. Only the standard library is used, and the proxy variables
(http_proxy, no_proxy) apply as in urllib.

`RemoteReward` has the TRL reward shape, so another trainer can use it as it is:
`GRPOTrainer(reward_funcs=[RemoteReward("http://127.0.0.1:8000/score")], ...)`.
"""
from __future__ import annotations

import http.client
import json
import math
import os
import time
import urllib.error
import urllib.request

from semgrpo.rewards import RewardError, _checked_values

BACKOFF_ENV = "SEMGRPO_REMOTE_BACKOFF"  # seconds before the first retry (default 1)


class _Failure(Exception):
    """One failed attempt: what happened, what to check, and whether another attempt may succeed."""

    def __init__(self, what: str, hint: str, *, retry: bool):
        super().__init__(what)
        self.what, self.hint, self.retry = what, hint, retry


class RemoteReward:
    """POST the batch to `url`, read one score (or None) per completion back."""

    def __init__(self, url: str, *, name: str = "remote", timeout: float = 60.0, retries: int = 2):
        self.url, self.timeout, self.retries = url, float(timeout), int(retries)
        self.__name__ = name
        self.backoff = _backoff_from_env()

    def __call__(self, prompts, completions, references=None, **kwargs) -> list:
        if references is None:  # TRL passes dataset columns as keywords: a `reference` column, if there is one
            references = kwargs.get("reference", [None] * len(completions))
        body = json.dumps({"prompts": list(prompts), "completions": list(completions),
                           "references": list(references)}, ensure_ascii=False).encode("utf-8")
        reply = self._post_with_retries(body)
        try:
            values = json.loads(reply)
        except ValueError:
            raise RewardError(f"remote reward {self.__name__!r}: {self.url} replied with something that is not "
                              f"JSON ({_excerpt(reply)!r}); it must reply with a JSON list of one number or "
                              "null per completion") from None
        try:
            _checked_values(self.__name__, values, len(completions))
        except RewardError as exc:
            raise RewardError(f"{exc} (the reply of {self.url})") from None
        return values

    def _post_with_retries(self, body: bytes) -> bytes:
        attempt = 1
        while True:
            try:
                return self._post(body)
            except _Failure as failure:
                if not failure.retry or attempt > self.retries:
                    tries = f"{attempt} attempt{'s' if attempt > 1 else ''}"
                    raise RewardError(f"remote reward {self.__name__!r}: POST {self.url} failed: {failure.what} "
                                      f"({tries}); {failure.hint}") from None
            time.sleep(self.backoff * 2 ** (attempt - 1))
            attempt += 1

    def _post(self, body: bytes) -> bytes:
        request = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Content-Type": "application/json; charset=utf-8", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            what = f"HTTP {exc.code} {exc.reason}: {_excerpt(_body_of(exc))!r}"
            if exc.code >= 500:
                raise _Failure(what, "check the server's log", retry=True) from None
            raise _Failure(what, "check the URL and that the server accepts a JSON batch of prompts, completions "
                           "and references", retry=False) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            if isinstance(reason, TimeoutError):
                raise _Failure(f"timed out after {self.timeout:g} s", "make the server answer sooner or raise "
                               "reward.remote_timeout", retry=True) from None
            if isinstance(reason, ConnectionRefusedError):
                raise _Failure("connection refused", "check that the server is running and listens at that "
                               "host and port", retry=True) from None
            if isinstance(reason, (ConnectionError, http.client.HTTPException)):  # reset, closed mid-reply
                raise _Failure(f"connection lost ({reason})", "check the server's log", retry=True) from None
            raise _Failure(str(reason), "check the URL's host and port", retry=False) from None


def _body_of(error: urllib.error.HTTPError) -> bytes:
    try:
        return error.read()
    except (OSError, http.client.HTTPException):
        return b""


def _excerpt(data: bytes, limit: int = 200) -> str:
    """The start of a reply body on one line."""
    text = " ".join(data.decode("utf-8", errors="replace").split())
    return text if len(text) <= limit else text[:limit] + "..."


def _backoff_from_env() -> float:
    raw = os.environ.get(BACKOFF_ENV, "1")
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value >= 0):
        raise RewardError(f"{BACKOFF_ENV} must be a number of seconds >= 0, got {raw!r}")
    return value
