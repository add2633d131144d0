"""One file over HTTP(S) with the standard library: a timeout on every socket operation, retries of what may
pass on a second try, and a check that the whole body arrived."""
from __future__ import annotations

import http.client
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from semgrpo import __version__
from semgrpo.errors import UserError

CHUNK = 1 << 16
USER_AGENT = f"semgrpo-get-data/{__version__}"


class FetchError(UserError):
    """A source that cannot be fetched, a partial download, or a file whose sha256 is not the manifest's."""


class _Retryable(Exception):
    """A failure a later try may not meet (a refused or reset connection, a timeout, a 5xx, a cut body)."""


def one_line(text: object) -> str:
    """`text` with its whitespace runs (newlines included) folded to one space: an error stays one line."""
    return " ".join(str(text).split())


def fetch(url: str, dest: Path, *, timeout: float, retries: int) -> int:
    """Download `url` into `dest` (overwritten); returns its size in bytes.

    Args:
        timeout: Seconds any one connect or read may wait.
        retries: Further tries after a retryable failure, waiting 1 s, 2 s, 4 s... between them.

    Raises:
        FetchError: An HTTP error status (4xx at once, 5xx after the retries), an unreachable host, a timeout
            or a body shorter than its Content-Length after the retries; one line naming the URL.
    """
    for attempt in range(retries + 1):
        try:
            return _fetch_once(url, dest, timeout)
        except _Retryable as exc:
            reason = str(exc)
            if attempt < retries:
                time.sleep(min(2.0**attempt, 8.0))
    tries = f" ({retries + 1} tries)" if retries else ""
    raise FetchError(one_line(f"{reason}{tries}"))


def _fetch_once(url: str, dest: Path, timeout: float) -> int:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(dest, "wb") as out:
            expected = response.headers.get("Content-Length")
            got = 0
            while chunk := response.read(CHUNK):
                out.write(chunk)
                got += len(chunk)
            out.flush()
            os.fsync(out.fileno())
    except urllib.error.HTTPError as exc:
        message = f"{url}: HTTP {exc.code} {exc.reason}"
        if exc.code >= 500:
            raise _Retryable(message) from None
        raise FetchError(one_line(message)) from None
    except urllib.error.URLError as exc:
        raise _Retryable(f"cannot reach {url}: {getattr(exc.reason, 'strerror', None) or exc.reason}") from None
    except http.client.IncompleteRead as exc:  # a chunked body cut short
        raise _Retryable(f"partial download of {url}: the connection closed after {len(exc.partial)} bytes "
                         "of a chunk") from None
    except TimeoutError:
        raise _Retryable(f"{url}: no data for {timeout:g} s (timed out; see --timeout)") from None
    except (ConnectionError, http.client.HTTPException) as exc:
        raise _Retryable(f"{url}: {type(exc).__name__}: {exc}") from None
    if expected is not None and got != int(expected):  # urllib returns a cut body as if it were whole
        raise _Retryable(f"partial download of {url}: got {got} of {int(expected)} bytes")
    return got
