"""A reward computed by a server: `http://host:port/path` entries of `reward.functions`.

Each call POSTs one JSON object `{"prompts": [...], "completions": [...], "references": [...]}` (UTF-8) and
expects a JSON list back, one number or null per completion, in order. Every attempt has a wall-clock
deadline, `timeout` seconds from its start to the reply's last byte, however slowly a server trickles;
a reply longer than `max_bytes` is refused while it is read, and an error reply's body is read only as
far as its quoted excerpt. A timeout, a refused or reset connection and a 5xx reply are retried `retries`
times, waiting `backoff` seconds ($SEMGRPO_REMOTE_BACKOFF, default 1) before the first retry and twice as
long before each next one; a 4xx reply is not retried. A redirect is followed (re-sending the POST) only
to http or https on the same host. Every failure is one RewardError line naming the URL. Only the
standard library is used, and the proxy variables (http_proxy, no_proxy) apply as in urllib.

`RemoteReward` has the TRL reward shape, so another trainer can use it as it is:
`GRPOTrainer(reward_funcs=[RemoteReward("http://127.0.0.1:8000/score")], ...)`.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from semgrpo.config import RewardConfig
from semgrpo.rewards.scoring import RewardError, checked_values

BACKOFF_ENV = "SEMGRPO_REMOTE_BACKOFF"  # seconds before the first retry (default 1)
DEFAULT_MAX_BYTES = RewardConfig.remote_max_bytes  # 64 MiB; a score takes about 20 bytes
MAX_BRACKETS = 32  # a reply is one flat list: JSON with more `[` or `{` is refused unparsed
MAX_NUMBER_CHARS = 64  # float32's largest value has 39 digits; a float's repr has at most 24 characters
MAX_REDIRECTS = 5
_CHUNK = 2**20  # bytes read at a time
_EXCERPT_BYTES = 4096  # what is read of an error reply's body, and decoded of any body, to quote it


class _Failure(Exception):
    """One failed attempt: what happened, what to check, and whether another attempt may succeed."""

    def __init__(self, what: str, hint: str, *, retry: bool):
        super().__init__(what)
        self.what, self.hint, self.retry = what, hint, retry


class RemoteReward:
    """POST the batch to `url`, read one score (or None) per completion back."""

    def __init__(self, url: str, *, name: str = "remote", timeout: float = 60.0, retries: int = 2,
                 max_bytes: int = DEFAULT_MAX_BYTES):
        self.url, self.timeout, self.retries, self.max_bytes = url, float(timeout), int(retries), int(max_bytes)
        self.__name__ = name
        self.backoff = _backoff_from_env()

    def __call__(self, prompts, completions, references=None, **kwargs) -> list:
        if references is None:  # TRL passes dataset columns as keywords: a `reference` column, if there is one
            references = kwargs.get("reference", [None] * len(completions))
        body = json.dumps({"prompts": list(prompts), "completions": list(completions),
                           "references": list(references)}, ensure_ascii=False).encode("utf-8")
        reply = self._post_with_retries(body)
        try:
            values = _parse_reply(reply)
        except ValueError as exc:
            raise RewardError(f"remote reward {self.__name__!r}: {self.url} replied with {exc}; it must reply "
                              "with a JSON list of one number or null per completion") from None
        try:
            checked_values(self.__name__, values, len(completions))
        except RewardError as exc:
            raise RewardError(f"{exc} (the reply of {self.url})") from None
        return values

    def _post_with_retries(self, body: bytes) -> bytearray:
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

    def _post(self, body: bytes) -> bytearray:
        """One attempt, redirects included, ended by the deadline wherever it is."""
        deadline = _Deadline(self.timeout)
        opener = urllib.request.build_opener(_HTTPHandler(deadline), _HTTPSHandler(deadline),
                                             _SameHostRedirects(self.url))
        request = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Content-Type": "application/json; charset=utf-8", "Accept": "application/json"})
        try:
            with opener.open(request, timeout=self.timeout) as response:
                reply = self._read(response)
            if deadline.expired:  # a connection closed by the deadline can look like a complete reply
                raise self._timed_out()
            return reply
        except _Failure:
            raise
        except urllib.error.HTTPError as exc:
            what = f"HTTP {exc.code} {exc.reason}: {_excerpt(_start_of(exc))!r}"
            if deadline.expired:
                raise self._timed_out() from None
            if exc.code >= 500:
                raise _Failure(what, "check the server's log", retry=True) from None
            raise _Failure(what, "check the URL and that the server accepts a JSON batch of prompts, completions "
                           "and references", retry=False) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
            if deadline.expired:
                raise self._timed_out() from None
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            if isinstance(reason, TimeoutError):
                raise self._timed_out() from None
            if isinstance(reason, ConnectionRefusedError):
                raise _Failure("connection refused", "check that the server is running and listens at that "
                               "host and port", retry=True) from None
            if isinstance(reason, (ConnectionError, http.client.HTTPException)):  # reset, closed mid-reply
                raise _Failure(f"connection lost ({_described(reason)})", "check the server's log",
                               retry=True) from None
            raise _Failure(_described(reason), "check the URL's host and port", retry=False) from None
        finally:
            deadline.cancel()

    def _read(self, response) -> bytearray:
        """The reply's body, refused as soon as it is known to exceed `max_bytes`."""
        announced = response.getheader("Content-Length")
        if announced is not None and announced.strip().isdigit() and int(announced) > self.max_bytes:
            raise self._too_large(f"announces {int(announced)} bytes, more than")
        body = bytearray()
        while chunk := response.read(min(_CHUNK, self.max_bytes + 1 - len(body))):
            body += chunk
            if len(body) > self.max_bytes:
                raise self._too_large("sent more than")
        return body

    def _too_large(self, what: str) -> _Failure:
        return _Failure(f"the reply {what} reward.remote_max_bytes allows ({self.max_bytes} bytes)",
                        "make the server reply with one number or null per completion, or raise "
                        "reward.remote_max_bytes", retry=False)

    def _timed_out(self) -> _Failure:
        return _Failure(f"timed out after {self.timeout:g} s", "make the server answer sooner or raise "
                        "reward.remote_timeout", retry=True)


class _Deadline:
    """Ends an attempt at a wall-clock time: shuts down every connection the attempt opened.

    A socket timeout alone restarts with every byte received, so a server sending one byte at a time could
    hold a step forever. A shut-down connection wakes any blocked read at once, at whatever stage the attempt
    is (connecting aside: that has the socket timeout, which never exceeds the deadline). Each connection is
    watched through a duplicate of its socket, taken as it is created: TLS wraps the original into another
    object, and the duplicate, open until `cancel`, can never name a reused file descriptor.
    """

    def __init__(self, seconds: float):
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets.append(sock.dup())
            if self.expired:
                _shut(self._sockets[-1])
        return sock

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)

    def cancel(self) -> None:
        self._timer.cancel()
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # the connection is gone already
        sock.shutdown(socket.SHUT_RDWR)


def _watched(connection_class, deadline: _Deadline):
    """`connection_class` whose sockets `deadline` watches (created before any TLS handshake on them)."""
    class Watched(connection_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            create = self._create_connection
            self._create_connection = lambda *a, **kw: deadline.watch(create(*a, **kw))

    return Watched


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline):
        super().__init__()
        self._connection = _watched(http.client.HTTPConnection, deadline)

    def http_open(self, req):
        return self.do_open(self._connection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline):
        super().__init__()
        self._connection = _watched(http.client.HTTPSConnection, deadline)

    def https_open(self, req):
        return self.do_open(self._connection, req, context=self._context)


class _SameHostRedirects(urllib.request.HTTPRedirectHandler):
    """Follows 301, 302, 307 and 308 to http(s) on the URL's own host, POSTing the same body again (a reward
    request means nothing as a GET); any other redirect is a failure naming where it pointed."""

    max_redirections = MAX_REDIRECTS

    def __init__(self, url: str):
        super().__init__()
        self._host = (urllib.parse.urlsplit(url).hostname or "").lower()

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        target = urllib.parse.urlsplit(newurl)
        if code not in (301, 302, 307, 308) or target.scheme not in ("http", "https") \
                or (target.hostname or "").lower() != self._host:
            fp.close()
            raise _Failure(f"HTTP {code} {msg}: redirected to {_excerpt(newurl.encode())!r}",
                           f"only redirects to http(s) on {self._host} are followed; use the final URL",
                           retry=False)
        return urllib.request.Request(newurl, data=req.data, method="POST", headers=dict(req.headers),
                                      origin_req_host=req.origin_req_host, unverifiable=True)


def _parse_reply(reply: bytearray):
    """The reply as JSON, bounded: at most MAX_BRACKETS `[` or `{` (so nesting cannot go deeper) and numbers
    at most MAX_NUMBER_CHARS long, both checked without decoding the reply.

    Raises:
        ValueError: what the reply is instead, with an excerpt.
    """
    if not _LIST_START.match(reply):  # not a list: no need to decode it all to say so
        raise ValueError(f"something that is not a JSON list ({_excerpt(reply)!r})")
    brackets = reply.count(b"[") + reply.count(b"{")
    if brackets > MAX_BRACKETS:
        raise ValueError(f"JSON holding {brackets} '[' or '{{' ({_excerpt(reply)!r}), not one flat list (more than "
                         f"{MAX_BRACKETS} is not parsed)")
    try:
        return json.loads(reply, parse_int=_bounded(int), parse_float=_bounded(float))
    except _TooLong as exc:
        raise ValueError(str(exc)) from None
    except ValueError as exc:
        raise ValueError(f"something that is not JSON ({_excerpt(reply)!r}: {exc})") from None


_LIST_START = re.compile(rb"(?:\xef\xbb\xbf)?[ \t\r\n]*\[")  # JSON whitespace, after an optional UTF-8 BOM


class _TooLong(ValueError):
    pass


def _bounded(convert):
    """A json number hook that refuses numbers written with more than MAX_NUMBER_CHARS characters."""
    def parse(text: str):
        if len(text) > MAX_NUMBER_CHARS:
            raise _TooLong(f"a number written with {len(text)} characters ({text[:20]}...), beyond any reward")
        return convert(text)

    return parse


def _start_of(error: urllib.error.HTTPError) -> bytes:
    """The first bytes of an error reply's body: enough to quote, never the whole of it."""
    try:
        return error.read(_EXCERPT_BYTES)
    except (OSError, http.client.HTTPException, ValueError):
        return b""
    finally:
        error.close()  # the rest of the body is never read: the connection goes


def _excerpt(data: bytes | bytearray, limit: int = 200) -> str:
    """The start of a reply body on one line; only its first bytes are decoded."""
    text = " ".join(bytes(data[:_EXCERPT_BYTES]).decode("utf-8", errors="replace").split())
    return text if len(text) <= limit else text[:limit] + "..."


def _described(reason) -> str:
    """An exception's text, or its type when it has none (some socket errors carry no message)."""
    text = " ".join(str(reason).split())
    return text or type(reason).__name__


def _backoff_from_env() -> float:
    raw = os.environ.get(BACKOFF_ENV, "1")
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value >= 0):
        raise RewardError(f"{BACKOFF_ENV} must be a number of seconds >= 0, got {raw!r}")
    return value
