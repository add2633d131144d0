"""Rewards beyond the built-ins: plugin callables (`module:callable`) and remote rewards (`http://...`), each
checked against values the test computes itself, and every way they can go wrong as one clear error."""
import json
import math
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from semgrpo.config import ConfigError, load_config
from semgrpo.rewards import RewardError, build_reward_functions, score
from semgrpo.rewards.remote import RemoteReward

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "rewards"

PROMPTS = ["p1", "p2", "p3", "p4"]
COMPLETIONS = ["ཀ་ཁ་ག", "abcabc", "", "ཀཀཀཀ"]
REFERENCES = ["ཀཁ", "xyz", "ref", ""]
LENGTHS = [float(len(c)) for c in COMPLETIONS]

PLUGIN_MODULE = "rp_sample_plugins"
PLUGIN_SOURCE = '''
import asyncio
import math

BUILT = []


def char_count(prompts, completions, references):
    return [float(len(c)) for c in completions]


class Scaled:
    def __init__(self, factor, offset=0.0):
        BUILT.append(self)
        self.factor, self.offset = factor, offset

    def __call__(self, prompts, completions, references):
        return [self.factor * len(c) + self.offset for c in completions]


async def async_count(prompts, completions, references):
    await asyncio.sleep(0)
    return [float(len(c)) for c in completions]


class AsyncCall:
    async def __call__(self, prompts, completions, references):
        await asyncio.sleep(0)
        return [float(len(r)) for r in references]


def trl_style(prompts, completions, **kwargs):
    return [float(len(r) - len(c)) for c, r in zip(completions, kwargs["references"])]


def none_when_empty(prompts, completions, references):
    return [None if not c else 1.0 for c in completions]


def wrong_count(prompts, completions, references):
    return [1.0]


def a_string(prompts, completions, references):
    return ["high"] * len(completions)


def infinite(prompts, completions, references):
    return [math.inf] * len(completions)


def a_bool(prompts, completions, references):
    return [bool(c) for c in completions]


def numpy_scalars(prompts, completions, references):
    import numpy as np
    return [np.float32(0.5), np.int64(2), np.float16(0.25), np.float64(-1.5)]


def tensor_scalars(prompts, completions, references):
    import torch
    return [torch.tensor(0.5), torch.tensor(2), torch.tensor(float("nan")), torch.tensor(0.25, dtype=torch.bfloat16)]


def huge_int(prompts, completions, references):
    return [1.0, 10**400] + [1.0] * (len(completions) - 2)


def beyond_float32(prompts, completions, references):
    return [1e39] * len(completions)


def numpy_inf(prompts, completions, references):
    import numpy as np
    return [np.float32(0.5), np.float32("inf")] + [1.0] * (len(completions) - 2)


def tensor_rows(prompts, completions, references):
    import torch
    return [torch.tensor([1.0, 2.0])] * len(completions)


class Picky:
    def __init__(self, size):
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")

    def __call__(self, prompts, completions, references):
        return [1.0] * len(completions)


NOT_CALLABLE = 3
'''


@pytest.fixture(scope="module", autouse=True)
def plugin_module(tmp_path_factory):
    """PLUGIN_SOURCE as an importable module, and the examples folder on sys.path."""
    folder = tmp_path_factory.mktemp("plugins")
    (folder / f"{PLUGIN_MODULE}.py").write_text(PLUGIN_SOURCE)
    sys.path[:0] = [str(folder), str(EXAMPLES)]
    yield
    for path in (str(folder), str(EXAMPLES)):
        sys.path.remove(path)
    for name in (PLUGIN_MODULE, "length_plugin", "reward_server"):
        sys.modules.pop(name, None)


def _rewards(*functions, overrides=()):
    """(config, reward functions) for `reward.functions=[functions]` plus overrides, as the trainer builds them."""
    cfg = load_config(None, [f"reward.functions=[{', '.join(functions)}]", *overrides])
    return cfg, build_reward_functions(cfg.reward, encoder=None, script="tibetan")


def _score(cfg, functions):
    total, per_fn = score(functions, cfg.reward.weights, PROMPTS, COMPLETIONS, REFERENCES)
    return total.tolist(), {name: values.tolist() for name, values in per_fn.items()}


def _language():
    """R_lang of COMPLETIONS, by hand: Tibetan letters and nothing else."""
    return [1.0, 0.0, 0.0, 1.0]


# --- plugins ----------------------------------------------------------------------------------------------


def test_a_plugin_function_is_named_after_the_callable_and_weighs_1_by_default():
    cfg, fns = _rewards("language", f"{PLUGIN_MODULE}:char_count")
    assert list(fns) == ["language", "char_count"] and fns["char_count"].__name__ == "char_count"
    total, per_fn = _score(cfg, fns)
    assert per_fn == {"language": _language(), "char_count": LENGTHS}
    assert total == pytest.approx([lang + n for lang, n in zip(_language(), LENGTHS)])


def test_a_plugin_class_is_built_once_with_its_kwargs_and_weighted_by_name():
    module = pytest.importorskip(PLUGIN_MODULE)
    module.BUILT.clear()
    cfg, fns = _rewards("language", f"scaled={PLUGIN_MODULE}:Scaled",
                        overrides=["reward.kwargs.scaled={factor: 2.0, offset: 0.5}", "reward.weights.scaled=0.25"])
    for _ in range(2):
        total, per_fn = _score(cfg, fns)
        assert per_fn["scaled"] == pytest.approx([2.0 * n + 0.5 for n in LENGTHS])
        assert total == pytest.approx([lang + 0.25 * (2.0 * n + 0.5) for lang, n in zip(_language(), LENGTHS)])
    assert len(module.BUILT) == 1


def test_async_plugins_are_awaited():
    cfg, fns = _rewards(f"{PLUGIN_MODULE}:async_count", f"{PLUGIN_MODULE}:AsyncCall")
    _, per_fn = _score(cfg, fns)
    assert per_fn == {"async_count": LENGTHS, "AsyncCall": [float(len(r)) for r in REFERENCES]}


def test_a_trl_style_function_finds_the_references_in_its_kwargs():
    cfg, fns = _rewards(f"{PLUGIN_MODULE}:trl_style")
    _, per_fn = _score(cfg, fns)
    assert per_fn["trl_style"] == [float(len(r) - len(c)) for c, r in zip(COMPLETIONS, REFERENCES)]


def test_none_leaves_a_sample_out_of_that_component_only():
    cfg, fns = _rewards("language", f"{PLUGIN_MODULE}:none_when_empty", overrides=["reward.weights.none_when_empty=3"])
    total, per_fn = _score(cfg, fns)
    assert math.isnan(per_fn["none_when_empty"][2])
    assert total == pytest.approx([lang + (0.0 if not c else 3.0) for lang, c in zip(_language(), COMPLETIONS)])


def test_the_plugin_example_scores_the_length_match_it_documents():
    cfg, fns = _rewards("lenmatch=length_plugin:LengthMatch", overrides=["reward.kwargs.lenmatch={tolerance: 0.5}"])
    _, per_fn = _score(cfg, fns)
    expected = [max(0.0, 1 - abs(len(c) - len(r)) / (0.5 * len(r))) if r else math.nan
                for c, r in zip(COMPLETIONS, REFERENCES)]
    assert per_fn["lenmatch"] == pytest.approx(expected, nan_ok=True)


@pytest.mark.parametrize("entry, overrides, message", [
    ("no_such_module_rp:fn", [], "cannot import 'no_such_module_rp'"),
    (f"{PLUGIN_MODULE}:missing", [], "has no attribute 'missing'"),
    (f"{PLUGIN_MODULE}:char_count", ["reward.kwargs.char_count={factor: 2}"], "is not a class"),
    (f"{PLUGIN_MODULE}:Scaled", ["reward.kwargs.Scaled={size: 2}"], "building Scaled(**reward.kwargs.Scaled) failed"),
    (f"{PLUGIN_MODULE}:NOT_CALLABLE", [], "not a callable"),
    (f"{PLUGIN_MODULE}:Picky", ["reward.kwargs.Picky={size: 0}"], "failed: size must be >= 1, got 0"),
])
def test_a_plugin_that_cannot_be_used_is_one_config_error(entry, overrides, message):
    with pytest.raises(ConfigError) as err:
        _rewards(entry, overrides=overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("entry, message", [
    ("wrong_count", "returned 1 values for 4 completions"),
    ("a_string", "returned 'high' at position 0"),
    ("infinite", "returned inf at position 0"),
    ("a_bool", "returned True at position 0; expected a finite number or None (return 1.0 / 0.0"),
    ("huge_int", "returned an integer of about 401 digits at position 1; expected a finite number or None (too large "
                 "for a float)"),
    ("beyond_float32", "returned 1e+39 at position 0; expected a finite number or None (beyond the float32 range"),
    ("numpy_inf", "returned inf at position 1"),
    ("tensor_rows", "returned tensor([1., 2.]) at position 0"),
])
def test_unusable_plugin_output_is_one_reward_error(entry, message):
    cfg, fns = _rewards(f"{PLUGIN_MODULE}:{entry}")
    with pytest.raises(RewardError) as err:
        _score(cfg, fns)
    assert f"reward {entry!r}" in str(err.value) and message in str(err.value) and "\n" not in str(err.value)


def test_any_real_number_is_a_value_numpy_scalars_and_0d_tensors_included():
    cfg, fns = _rewards(f"{PLUGIN_MODULE}:numpy_scalars", f"{PLUGIN_MODULE}:tensor_scalars")
    _, per_fn = _score(cfg, fns)
    assert per_fn["numpy_scalars"] == [0.5, 2.0, 0.25, -1.5]
    assert per_fn["tensor_scalars"] == pytest.approx([0.5, 2.0, math.nan, 0.25], nan_ok=True)


@pytest.mark.parametrize("functions, overrides, message", [
    (["language"], ["reward.weights.ghost=1"], "reward.weights.ghost names no reward"),
    (["language", f"{PLUGIN_MODULE}:char_count"], ["reward.kwargs.language={a: 1}"],
     "reward.kwargs.language names no plugin reward; the plugins are char_count"),
    ([f"mean={PLUGIN_MODULE}:char_count"], [], "'mean' cannot name a reward"),
    ([f"{PLUGIN_MODULE}:char_count", f"char_count={PLUGIN_MODULE}:Scaled"], [], "two rewards are named 'char_count'"),
    (["http://reward host/score"], [], "is not a URL of the form http://host:port/path"),
    (["remote=semantic"], [], "a built-in reward keeps its own name"),
    (["semantic=semantic"], [], "a built-in reward keeps its own name; write semantic"),
])
def test_reward_config_mistakes_are_one_config_error(functions, overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"reward.functions=[{', '.join(functions)}]", *overrides])
    assert message in str(err.value) and "\n" not in str(err.value)


# --- remote rewards ---------------------------------------------------------------------------------------


def distinct_share(completions):
    """The example server's score, computed here on its own: distinct characters / characters, None if empty."""
    return [len(set(c)) / len(c) if c else None for c in completions]


class RewardStub:
    """A loopback reward server in a thread that follows a script: `plan[i]` is what it does with request i
    (the last entry repeats). "ok" answers with the example server's scores; "500" and "404" fail with that
    status; "sleep" answers after `sleep` seconds; "short" drops the last score; "text" is not JSON. Hostile
    replies: "trickle" sends the scores one byte every 0.5 s, "trickle_head" its status line too; "junk:N"
    streams N MiB that are not JSON without announcing a length, "junk_announced:N" with a Content-Length;
    "500_big:N" fails with an N MiB body; "nested" is 100,000 `[`; "huge_int" has a 400-digit integer for the
    second score; "redirect:CODE:URL" redirects there. `batches` holds every request body it read, failed
    ones included; `sent` the bytes of each streamed reply it managed to send before the client left."""

    def __init__(self, plan=("ok",), sleep=2.0, tls=None):
        from reward_server import score as example_score

        self.plan, self.sleep, self.batches, self.sent = list(plan), sleep, [], []
        lock, stub = threading.Lock(), self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                batch = json.loads(self.rfile.read(int(self.headers["Content-Length"])).decode("utf-8"))
                with lock:
                    action = stub.plan[min(len(stub.batches), len(stub.plan) - 1)]
                    stub.batches.append(batch)
                kind, _, arg = action.partition(":")
                if action in ("500", "404"):
                    return self._reply(int(action), b"scorer crashed:\n  KeyError 'x'")
                if action == "text":
                    return self._reply(200, b"<html>not a reward</html>")
                if action == "sleep":
                    time.sleep(stub.sleep)
                scores = example_score(batch["prompts"], batch["completions"], batch["references"])
                if kind == "redirect":
                    code, _, url = arg.partition(":")
                    return self._reply(int(code), b"", location=url)
                if action == "nested":
                    return self._reply(200, b"[" * 100_000)
                if action == "huge_int":
                    return self._reply(200, json.dumps([scores[0], 10**400, *scores[2:]]).encode())
                if kind in ("junk", "junk_announced", "500_big"):
                    return self._stream(500 if kind == "500_big" else 200, int(arg) * 2**20,
                                        announce=kind != "junk")
                body = json.dumps(scores[:-1] if action == "short" else scores).encode()
                if kind in ("trickle", "trickle_head"):
                    return self._trickle(body, head=kind == "trickle_head")
                self._reply(200, body)

            def _reply(self, status, body, location=None):
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(body)))
                    if location:
                        self.send_header("Location", location)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

            def _stream(self, status, size, *, announce):
                """`size` bytes of junk, 1 MiB at a time; without `announce` the body ends when the connection
                closes (HTTP/1.0)."""
                chunk, sent = b"junk! " * (2**20 // 6) + b"!" * (2**20 % 6), 0
                try:
                    self.send_response(status)
                    if announce:
                        self.send_header("Content-Length", str(size))
                    self.end_headers()
                    while sent < size:
                        self.wfile.write(chunk)
                        sent += len(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                stub.sent.append(sent)

            def _trickle(self, body, *, head):
                head_bytes = f"HTTP/1.0 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                if not head:
                    self.wfile.write(head_bytes)
                try:
                    for i in range(0 if head else len(head_bytes), len(head_bytes) + len(body)):
                        self.wfile.write((head_bytes + body)[i:i + 1])
                        time.sleep(0.5)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:  # (certificate file, key file): serve https
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}/score"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _remote(url, *, timeout=5.0, retries=2):
    reward = RemoteReward(url, name="remote", timeout=timeout, retries=retries)
    reward.backoff = 0.01
    return reward


def test_a_remote_reward_sends_the_batch_and_returns_the_servers_scores():
    with RewardStub() as stub:
        values = _remote(stub.url)(PROMPTS, COMPLETIONS, REFERENCES)
    assert values == distinct_share(COMPLETIONS)
    assert stub.batches == [{"prompts": PROMPTS, "completions": COMPLETIONS, "references": REFERENCES}]


def test_a_remote_reward_in_the_weighted_sum_and_under_its_own_name():
    with RewardStub() as stub:
        cfg, fns = _rewards("language", f"novelty={stub.url}", overrides=["reward.weights.novelty=2",
                                                                          "reward.remote_retries=0"])
        assert fns["novelty"].__name__ == "novelty" and fns["novelty"].retries == 0
        total, per_fn = _score(cfg, fns)
    share = [math.nan if v is None else v for v in distinct_share(COMPLETIONS)]
    assert per_fn["novelty"] == pytest.approx(share, nan_ok=True)
    assert total == pytest.approx([lang + (0.0 if math.isnan(s) else 2 * s) for lang, s in zip(_language(), share)])


def test_a_remote_reward_works_with_trls_call():
    with RewardStub() as stub:
        values = _remote(stub.url)(prompts=PROMPTS, completions=COMPLETIONS, completion_ids=[[1]] * 4,
                                   reference=REFERENCES, trainer_state=None)
    assert values == distinct_share(COMPLETIONS) and stub.batches[0]["references"] == REFERENCES


def test_a_5xx_reply_is_retried():
    with RewardStub(plan=["500", "500", "ok"]) as stub:
        values = _remote(stub.url, retries=2)(PROMPTS, COMPLETIONS, REFERENCES)
    assert values == distinct_share(COMPLETIONS) and len(stub.batches) == 3


def test_a_server_that_keeps_failing_is_one_error_after_every_attempt():
    with RewardStub(plan=["500"]) as stub, pytest.raises(RewardError) as err:
        _remote(stub.url, retries=2)(PROMPTS, COMPLETIONS, REFERENCES)
    message = str(err.value)
    assert len(stub.batches) == 3 and "\n" not in message
    assert stub.url in message and "HTTP 500" in message and "scorer crashed: KeyError" in message
    assert "(3 attempts)" in message and "server's log" in message


def test_a_4xx_reply_is_not_retried():
    with RewardStub(plan=["404"]) as stub, pytest.raises(RewardError, match=r"HTTP 404 .*\(1 attempt\); check the URL"):
        _remote(stub.url, retries=3)(PROMPTS, COMPLETIONS, REFERENCES)
    assert len(stub.batches) == 1


def test_a_server_slower_than_the_timeout_is_retried_then_one_error():
    with RewardStub(plan=["sleep"], sleep=3.0) as stub:
        start = time.monotonic()
        with pytest.raises(RewardError) as err:
            _remote(stub.url, timeout=0.3, retries=1)(PROMPTS, COMPLETIONS, REFERENCES)
        took = time.monotonic() - start
    assert "timed out after 0.3 s (2 attempts)" in str(err.value) and stub.url in str(err.value)
    assert len(stub.batches) == 2 and took < 2.5  # it did not wait for the slow reply


def test_a_slow_first_reply_then_a_fast_one_succeeds():
    with RewardStub(plan=["sleep", "ok"], sleep=3.0) as stub:
        assert _remote(stub.url, timeout=1.0, retries=1)(PROMPTS, COMPLETIONS, REFERENCES) == distinct_share(COMPLETIONS)


def _free_port():
    """A loopback port that nobody listens on (once this socket is closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_refused_connection_is_retried_then_one_error():
    url = f"http://127.0.0.1:{_free_port()}/score"
    with pytest.raises(RewardError, match=r"connection refused \(2 attempts\); check that the server is running"):
        _remote(url, retries=1)(PROMPTS, COMPLETIONS, REFERENCES)


@pytest.mark.parametrize("action, message", [
    ("short", "returned 3 values for 4 completions (the reply of {url})"),
    ("text", "{url} replied with something that is not a JSON list ('<html>not a reward</html>')"),
    # issue 27: a RecursionError and an OverflowError (tracebacks) before
    ("nested", "{url} replied with JSON holding 100000 '[' or '{{'"),
    ("huge_int", "{url} replied with a number written with 401 characters"),
])
def test_a_reply_of_the_wrong_shape_is_one_error_naming_the_url(action, message):
    with RewardStub(plan=[action]) as stub, pytest.raises(RewardError) as err:
        _remote(stub.url)(PROMPTS, COMPLETIONS, REFERENCES)
    assert message.format(url=stub.url) in str(err.value) and len(stub.batches) == 1
    assert "\n" not in str(err.value) and len(str(err.value)) < 800  # one line, the reply quoted short


# --- remote rewards: slow, large and hostile replies --------------------------------------------------------


@pytest.mark.parametrize("action", ["trickle", "trickle_head"])
def test_a_trickling_server_is_cut_off_at_the_deadline(action):
    """One byte every 0.5 s restarts a socket timeout each time; the deadline counts from the attempt's start."""
    with RewardStub(plan=[action]) as stub:
        start = time.monotonic()
        with pytest.raises(RewardError) as err:
            _remote(stub.url, timeout=1.0, retries=0)(PROMPTS, COMPLETIONS, REFERENCES)
        took = time.monotonic() - start
    assert "timed out after 1 s (1 attempt)" in str(err.value), str(err.value)
    assert took < 1.0 + 1.0, took


@pytest.fixture
def tls(tmp_path, monkeypatch):
    """A self-signed certificate for 127.0.0.1, trusted by this process's default TLS context."""
    import datetime
    import ipaddress

    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    return str(cert_file), str(key_file)


def test_https_replies_redirects_and_the_deadline(tls):
    """The deadline also ends a trickle over TLS (the connection is watched from before its handshake)."""
    with RewardStub(tls=tls) as good, RewardStub(plan=[f"redirect:308:{good.url}"], tls=tls) as moved:
        assert _remote(moved.url)(PROMPTS, COMPLETIONS, REFERENCES) == distinct_share(COMPLETIONS)
    assert len(good.batches) == 1
    with RewardStub(plan=["trickle"], tls=tls) as stub:
        start = time.monotonic()
        with pytest.raises(RewardError, match=r"timed out after 1 s \(1 attempt\)"):
            _remote(stub.url, timeout=1.0, retries=0)(PROMPTS, COMPLETIONS, REFERENCES)
        assert time.monotonic() - start < 1.0 + 1.0


def test_a_reply_larger_than_the_limit_is_refused_while_it_is_read():
    with RewardStub(plan=["junk:20"]) as stub:
        reward = _remote(stub.url, retries=2)
        reward.max_bytes = 2**20
        with pytest.raises(RewardError) as err:
            reward(PROMPTS, COMPLETIONS, REFERENCES)
        sent = _sent(stub)
    message = str(err.value)
    assert "the reply sent more than reward.remote_max_bytes allows (1048576 bytes) (1 attempt)" in message, message
    assert len(stub.batches) == 1 and "\n" not in message
    assert sent < 20 * 2**20  # reading stopped early: the server could not send it all


def _sent(stub) -> int:
    """The bytes the stub's streamed reply got out before the client left (it notices a moment later)."""
    deadline = time.monotonic() + 10
    while not stub.sent and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stub.sent, "the client never closed the connection"
    return stub.sent[0]


def test_a_reply_that_announces_more_than_the_limit_is_refused_unread():
    with RewardStub(plan=["junk_announced:100"]) as stub:
        with pytest.raises(RewardError) as err:
            _remote(stub.url)(PROMPTS, COMPLETIONS, REFERENCES)
        sent = _sent(stub)
    message = str(err.value)
    assert (f"the reply announces {100 * 2**20} bytes, more than reward.remote_max_bytes allows (67108864 bytes) "
            "(1 attempt)") in message, message
    assert sent < 100 * 2**20


def _peak_while(call) -> int:
    """Peak bytes Python allocated (tracemalloc, every thread) while `call()` ran, above what was live before."""
    import tracemalloc

    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        with pytest.raises(RewardError) as err:
            call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - before, str(err.value)


def test_a_100_mb_junk_reply_costs_less_than_100_mb():
    """The default limit (64 MiB) ends the read; nothing of the junk is decoded but the excerpt's bytes."""
    with RewardStub(plan=["junk:100"]) as stub:
        extra, message = _peak_while(lambda: _remote(stub.url, timeout=60)(PROMPTS, COMPLETIONS, REFERENCES))
    print(f"100 MiB junk reply: +{extra / 2**20:.1f} MiB peak")
    assert "more than reward.remote_max_bytes allows (67108864 bytes)" in message, message
    assert extra < 100 * 10**6, extra


def test_junk_under_the_limit_is_quoted_without_decoding_it_all():
    with RewardStub(plan=["junk:30"]) as stub:
        extra, message = _peak_while(lambda: _remote(stub.url, timeout=60)(PROMPTS, COMPLETIONS, REFERENCES))
    print(f"30 MiB junk reply: +{extra / 2**20:.1f} MiB peak")
    assert "replied with something that is not a JSON list ('junk! junk! junk!" in message, message
    # the 30 MiB body read once (a bytearray grows by about 1/8), and no decoded copy of it
    assert extra < 30 * 2**20 * 1.25 + 2 * 2**20, extra


def test_an_error_reply_is_read_only_as_far_as_its_excerpt():
    with RewardStub(plan=["500_big:50"]) as stub:
        extra, message = _peak_while(lambda: _remote(stub.url, retries=1)(PROMPTS, COMPLETIONS, REFERENCES))
    assert "HTTP 500 " in message and "'junk! junk!" in message and "(2 attempts)" in message, message
    assert len(stub.batches) == 2 and extra < 4 * 2**20, extra


def test_a_redirect_to_the_same_host_is_followed_with_the_post():
    with RewardStub() as target, RewardStub(plan=[f"redirect:307:http://127.0.0.1:{target.port}/moved"]) as stub:
        values = _remote(stub.url)(PROMPTS, COMPLETIONS, REFERENCES)
    assert values == distinct_share(COMPLETIONS)
    assert target.batches == [{"prompts": PROMPTS, "completions": COMPLETIONS, "references": REFERENCES}]


def test_a_redirect_elsewhere_is_refused_without_connecting():
    """ftp:// (which urllib follows after a 302), another host name and a 303 (the answer is elsewhere, to GET)
    are refused, and nothing connects to where they point."""
    with socket.socket() as listener, RewardStub() as target:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.2)
        ftp = f"ftp://127.0.0.1:{listener.getsockname()[1]}/score"
        cases = [(302, ftp, f"HTTP 302 Found: redirected to {ftp!r}"),
                 (307, f"http://localhost:{target.port}/score", "redirected to 'http://localhost:"),
                 (303, f"http://127.0.0.1:{target.port}/see-other", "HTTP 303 See Other: redirected to")]
        for code, url, expected in cases:
            with RewardStub(plan=[f"redirect:{code}:{url}"]) as stub, pytest.raises(RewardError) as err:
                _remote(stub.url)(PROMPTS, COMPLETIONS, REFERENCES)
            message = str(err.value)
            assert expected in message and "(1 attempt)" in message, message
            assert "only redirects to http(s) on 127.0.0.1 are followed" in message, message
        with pytest.raises(OSError):  # socket.timeout: nobody connected
            listener.accept()
    assert target.batches == []


def test_the_backoff_doubles_from_its_base(monkeypatch):
    slept = []
    monkeypatch.setattr("semgrpo.rewards.remote.time.sleep", slept.append)
    monkeypatch.setenv("SEMGRPO_REMOTE_BACKOFF", "0.25")
    with RewardStub(plan=["500"]) as stub, pytest.raises(RewardError, match=r"\(4 attempts\)"):
        RemoteReward(stub.url, name="remote", timeout=5, retries=3)(PROMPTS, COMPLETIONS, REFERENCES)
    assert slept == [0.25, 0.5, 1.0]
    monkeypatch.setenv("SEMGRPO_REMOTE_BACKOFF", "soon")
    with pytest.raises(RewardError, match="SEMGRPO_REMOTE_BACKOFF must be a number of seconds >= 0, got 'soon'"):
        RemoteReward(stub.url, name="remote", timeout=5, retries=3)


def test_the_example_server_script_answers_a_batch():
    port = _free_port()
    server = subprocess.Popen([sys.executable, str(EXAMPLES / "reward_server.py"), str(port)],
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while server.poll() is None and time.monotonic() < deadline:  # until it listens
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        assert _remote(f"http://127.0.0.1:{port}/score")(PROMPTS, COMPLETIONS, REFERENCES) == distinct_share(COMPLETIONS)
    finally:
        server.kill()
        server.wait()



def test_the_readmes_reward_examples_are_the_files_the_tests_run(tmp_path):
    readme = (EXAMPLES.parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Rewards of your own"):readme.index("## What a run logs")]
    blocks = [block.split("```", 1)[0] for block in section.split("```python\n")[1:]]
    assert len(blocks) == 2
    for block, name in zip(blocks, ("length_plugin.py", "reward_server.py")):
        assert block in (EXAMPLES / name).read_text(encoding="utf-8"), name
    (tmp_path / "my_run.yaml").write_text(section.split("```yaml\n")[1].split("```")[0])
    cfg = load_config(tmp_path / "my_run.yaml")
    assert list(build_reward_functions(cfg.reward, encoder=object(), script="tibetan")) == ["semantic", "language",
                                                                                               "lenmatch"]
    assert cfg.reward.weights["lenmatch"] == 0.5 and cfg.reward.kwargs == {"lenmatch": {"tolerance": 0.3}}
