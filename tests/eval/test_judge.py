"""semgrpo.eval.judge against a scripted OpenAI-compatible stub server on loopback."""
import json
import math
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from semgrpo.eval.judge import (
    JudgeClient,
    JudgeError,
    JudgeUnavailable,
    judge_pairs,
    judge_prompt,
    parse_verdict,
    wilson_interval,
)

MARK = "GOOD"


def reply(content):
    return 200, json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]})


def candidates(body):
    """(candidate 1, candidate 2) as the judge sees them in the request."""
    user = body["messages"][-1]["content"]
    return tuple(re.search(rf"<candidate_{k}>\n(.*?)\n</candidate_{k}>", user, re.S).group(1) for k in (1, 2))


def prefer_mark(body):
    if "<candidate_1>" not in body["messages"][-1]["content"]:  # a bare complete() call
        return reply("Verdict: 1")
    c1, c2 = candidates(body)
    if MARK in c1 and MARK not in c2:
        return reply("Candidate 1 keeps the meaning.\nVerdict: 1")
    if MARK in c2 and MARK not in c1:
        return reply("**Verdict: 2**")
    return reply("Both equal.\nverdict: TIE")


class Stub:
    """Loopback server; `behave(body) -> (status, text[, delay_s[, trickle_s]])` is set per test."""

    def __init__(self):
        self.requests, self.behave = [], prefer_mark
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.loads(raw)
                stub.requests.append({"path": self.path, "headers": dict(self.headers), "body": body,
                                      "raw": raw})
                status, text, *extra = stub.behave(body)
                if extra:
                    time.sleep(extra[0])
                data = text.encode("utf-8")
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if len(extra) > 1:  # trickle: one byte every extra[1] seconds
                        for k in range(len(data)):
                            self.wfile.write(data[k:k + 1])
                            self.wfile.flush()
                            time.sleep(extra[1])
                    else:
                        self.wfile.write(data)
                except OSError:  # the client gave up (timeout test)
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def client(self, **kw):
        c = JudgeClient(self.url, "judge-model", **kw)
        c.backoff = 0.0  # keep retries instant in tests
        return c


@pytest.fixture
def stub(monkeypatch):
    for var in ("SEMGRPO_JUDGE_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    s = Stub()
    yield s
    s.server.shutdown()
    s.server.server_close()


def test_marker_preferred_whatever_the_order(stub):
    n = 20
    a = [f"{MARK} translation {i}" for i in range(n)]
    b = [f"plain translation {i}" for i in range(n)]
    res = judge_pairs(stub.client(), "mt", [f"src {i}" for i in range(n)], a, b, seed=3, progress=False)
    assert (res["n"], res["wins"], res["ties"], res["losses"], res["errors"]) == (n, n, 0, 0, 0)
    assert res["win_rate"] == 1.0 and res["tie_rate"] == res["loss_rate"] == 0.0
    assert res["ci95"] == pytest.approx(list(wilson_interval(n, n)))
    orders = [r["a_first"] for r in res["records"]]
    assert True in orders and False in orders
    assert [r["index"] for r in res["records"]] == list(range(n))
    assert all(r["verdict"] == "a" and r["error"] is None for r in res["records"])
    # the stub really saw a first whenever a_first says so, and the request carries model and candidates
    for rec, req in zip(res["records"], stub.requests):
        c1, c2 = candidates(req["body"])
        assert (MARK in c1) == rec["a_first"]
        assert req["path"] == "/v1/chat/completions" and req["body"]["model"] == "judge-model"
        assert req["body"]["temperature"] == 0.0
        assert a[rec["index"]] in req["raw"].decode() and b[rec["index"]] in req["raw"].decode()
        assert "Authorization" not in req["headers"]
    # same seed, same orders; b preferred -> all losses
    res2 = judge_pairs(stub.client(), "hg", ["s"] * n, b, a, seed=3, progress=False)
    assert [r["a_first"] for r in res2["records"]] == orders
    assert (res2["losses"], res2["wins"], res2["win_rate"]) == (n, 0, 0.0)


@pytest.mark.parametrize("verdict, a_first, expected", [
    ("1", True, "a"), ("1", False, "b"), ("2", True, "b"), ("2", False, "a"), ("tie", True, "tie"),
    ("tie", False, "tie")])
def test_verdict_mapping(stub, verdict, a_first, expected):
    stub.behave = lambda body: reply(f"Verdict: {verdict}")
    seed = next(s for s in range(100) if judge_pairs(  # a seed whose single draw gives the wanted order
        stub.client(), "mt", ["x"], ["a"], ["b"], seed=s, progress=False)["records"][0]["a_first"] == a_first)
    res = judge_pairs(stub.client(), "mt", ["x"], ["a"], ["b"], seed=seed, progress=False)
    assert res["records"][0]["verdict"] == expected
    assert res[{"a": "wins", "b": "losses", "tie": "ties"}[expected]] == 1 and res["n"] == 1


@pytest.mark.parametrize("text, expected", [
    ("Verdict: 1", "1"), ("verdict:2", "2"), ("VERDICT: TIE", "tie"), ("Verdict: Tie", "tie"),
    ("reasoning...\n**Verdict: 2**", "2"), ("**Verdict:** 1\n", "1"), ("  Verdict :  tie.  ", "tie"),
    ("Verdict: 1\nOn reflection, no.\nVerdict: 2", "2"), ("Verdict: 2\r\nVerdict: tie\r\n", "tie"),
    ("> Verdict: `1`", "1")])
def test_parse_verdict(text, expected):
    assert parse_verdict(text) == expected


@pytest.mark.parametrize("text", ["", "Candidate 1 is better.", "My verdict: 1 because it is fluent",
                                  "Verdict: 3", "Verdict: both"])
def test_parse_verdict_none(text):
    with pytest.raises(JudgeError, match="no verdict line"):
        parse_verdict(text)


def test_no_verdict_message_is_truncated():
    with pytest.raises(JudgeError) as e:
        parse_verdict("x" * 500)
    assert "x" * 80 in str(e.value) and "x" * 81 not in str(e.value)


def test_non_json_reply_retried_then_fails(stub):
    stub.behave = lambda body: (200, "<html>gateway</html>")
    with pytest.raises(JudgeError, match=r"not JSON.*gateway") as e:
        stub.client(retries=2).complete([{"role": "user", "content": "hi"}])
    assert "3 attempts" in str(e.value) and len(stub.requests) == 3


def test_json_without_choices(stub):
    stub.behave = lambda body: (200, json.dumps({"error": "oops"}))
    with pytest.raises(JudgeError, match=r"no choices\[0\]\.message\.content"):
        stub.client(retries=0).complete([{"role": "user", "content": "hi"}])
    stub.behave = lambda body: (200, json.dumps({"choices": [{"message": {"content": None}}]}))
    with pytest.raises(JudgeError, match=r"no choices\[0\]\.message\.content"):
        stub.client(retries=0).complete([{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("status", [500, 502, 429])
def test_transient_http_error_then_success(stub, status):
    stub.behave = lambda body: (status, "busy") if len(stub.requests) == 1 else reply("ok\nVerdict: 1")
    assert stub.client(retries=2).complete([{"role": "user", "content": "hi"}]) == "ok\nVerdict: 1"
    assert len(stub.requests) == 2


def test_http_400_not_retried_and_recorded(stub):
    def behave(body):
        bad = "src 1" in body["messages"][-1]["content"]
        return (400, '{"error": "bad model"}') if bad else prefer_mark(body)
    stub.behave = behave
    with pytest.raises(JudgeError, match="HTTP 400.*bad model"):
        stub.client(retries=2).complete([{"role": "user", "content": "src 1"}])
    assert len(stub.requests) == 1
    res = judge_pairs(stub.client(retries=2), "mt", ["src 0", "src 1", "src 2"], [MARK] * 3, ["x"] * 3,
                      progress=False)
    assert len(stub.requests) == 1 + 3  # still one request for the failing pair
    assert (res["n"], res["wins"], res["errors"]) == (2, 2, 1)
    rec = res["records"][1]
    assert rec["verdict"] is None and "HTTP 400" in rec["error"]


def test_timeout(stub):
    stub.behave = lambda body: (*prefer_mark(body), 1.0) if "SLOW" in body["messages"][-1]["content"] \
        else prefer_mark(body)
    client = stub.client(timeout=0.3, retries=1)
    t0 = time.monotonic()
    with pytest.raises(JudgeError, match=r"timed out after 0\.3 s \(2 attempts\)"):
        client.complete([{"role": "user", "content": "SLOW"}])
    assert time.monotonic() - t0 < 1.5
    res = judge_pairs(client, "mt", ["ok", "SLOW", "ok"], [MARK] * 3, ["x"] * 3, progress=False)
    assert (res["n"], res["wins"], res["errors"]) == (2, 2, 1)
    assert "timed out" in res["records"][1]["error"] and res["records"][1]["verdict"] is None


def test_no_verdict_counts_as_error(stub):
    stub.behave = lambda body: reply("I cannot decide.") if "two" in body["messages"][-1]["content"] \
        else prefer_mark(body)
    res = judge_pairs(stub.client(), "hg", ["one", "two"], [MARK] * 2, ["x"] * 2, progress=False)
    assert res["errors"] == 1 and res["n"] == 1 and "no verdict line" in res["records"][1]["error"]


def test_all_pairs_failing_raises(stub):
    stub.behave = lambda body: (503, "down")
    with pytest.raises(JudgeError, match=r"all 3 judgements failed.*HTTP 503"):
        judge_pairs(stub.client(retries=1), "mt", ["a", "b", "c"], ["1"] * 3, ["2"] * 3, progress=False)


def test_authorization_header(stub, monkeypatch):
    stub.client(api_key="sk-test").complete([{"role": "user", "content": "hi"}])
    assert stub.requests[-1]["headers"]["Authorization"] == "Bearer sk-test"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    stub.client().complete([{"role": "user", "content": "hi"}])
    assert stub.requests[-1]["headers"]["Authorization"] == "Bearer sk-openai"
    monkeypatch.setenv("SEMGRPO_JUDGE_API_KEY", "sk-semgrpo")  # takes precedence over OPENAI_API_KEY
    stub.client().complete([{"role": "user", "content": "hi"}])
    assert stub.requests[-1]["headers"]["Authorization"] == "Bearer sk-semgrpo"


def test_progress_bar_goes_to_stderr(stub, capsys):
    judge_pairs(stub.client(), "mt", ["s"], [MARK], ["x"], progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "judge" in err


def test_wilson_interval():
    z, k, n = 1.959964, 5, 10
    p = k / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert wilson_interval(k, n) == pytest.approx((center - half, center + half))
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((1 - 0.2775, 1.0), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_prompts():
    mt = judge_prompt("mt", "བོད་ཀྱི་ཡི་གེ", "cand one", "cand two")
    assert [m["role"] for m in mt] == ["system", "user"]
    assert "Tibetan source" in mt[1]["content"] and "into Chinese" in mt[0]["content"]
    assert "<reference>" not in mt[1]["content"]
    assert "Verdict: tie" in mt[0]["content"]
    zh = judge_prompt("mt", "藏文翻译", "a", "b", reference="ཡི་གེ")
    assert "into Tibetan" in zh[0]["content"] and "ཡི་གེ" in zh[1]["content"]
    assert "one valid answer among many" in zh[1]["content"]
    hg = judge_prompt("hg", "article", "h1", "h2", reference="title")
    assert "headline" in hg[0]["content"].lower() and "reference headline" in hg[1]["content"]
    assert candidates({"messages": hg}) == ("h1", "h2")


@pytest.mark.parametrize("kw, match", [
    (dict(sources=["s"], outputs_a=["a", "b"], outputs_b=["b"]), r"sources=1, outputs_a=2, outputs_b=1"),
    (dict(sources=[], outputs_a=[], outputs_b=[]), r"non-empty.*sources=0"),
    (dict(sources=["s"], outputs_a=["a"], outputs_b=["b"], references=[]), r"references=0"),
    (dict(sources=["s"], outputs_a=["a"], outputs_b=["b"], task="qa"), r"unknown judge task 'qa'"),
])
def test_bad_pairs_inputs(kw, match):
    client = JudgeClient("http://127.0.0.1:9/v1", "m")  # never contacted
    kw = {"task": "mt", **kw}
    with pytest.raises(ValueError, match=match):
        judge_pairs(client, kw.pop("task"), kw.pop("sources"), kw.pop("outputs_a"), kw.pop("outputs_b"),
                    progress=False, **kw)


def test_bad_task_and_client_args():
    with pytest.raises(ValueError, match="unknown judge task"):
        judge_prompt("summarise", "s", "a", "b")
    for url in ("127.0.0.1:8000/v1", "ftp://host/v1", ""):
        with pytest.raises(ValueError, match="http:// or https://"):
            JudgeClient(url, "m")
    with pytest.raises(ValueError, match="model"):
        JudgeClient("http://127.0.0.1:8000/v1", " ")
    with pytest.raises(ValueError, match="max_failures >= 1"):
        JudgeClient("http://127.0.0.1:8000/v1", "m", max_failures=0)
    assert JudgeClient("https://api.example/v1/", "m").endpoint == "https://api.example/v1/chat/completions"


# ---------------------------------------------------------------- deadline and circuit breaker (issue #12)


def test_trickling_reply_is_cut_at_the_deadline(stub):
    """A byte every 0.1 s keeps each read alive; the wall-clock deadline still ends the attempt."""
    stub.behave = lambda body: (*reply("x" * 40 + "\nVerdict: 1"), 0.0, 0.1)  # ~10 s to send in full
    t0 = time.monotonic()
    with pytest.raises(JudgeError, match=r"timed out after 0\.5 s"):
        stub.client(timeout=0.5, retries=0).complete([{"role": "user", "content": "hi"}])
    assert time.monotonic() - t0 < 2.0 and len(stub.requests) == 1


def test_silent_server_costs_one_deadline_per_attempt(stub):
    """A server that does not answer at all (the reply would start after 5 s) is given up per attempt."""
    stub.behave = lambda body: (*reply("Verdict: 1"), 5.0)
    t0 = time.monotonic()
    with pytest.raises(JudgeError, match="timed out"):
        stub.client(timeout=0.3, retries=1).complete([{"role": "user", "content": "hi"}])
    assert time.monotonic() - t0 < 1.5 and len(stub.requests) == 2


@pytest.mark.parametrize("kind", ["garbage", "500", "401", "silent", "trickle"])
def test_breaker_stops_calling_a_failing_judge(stub, kind):
    behave = {"garbage": lambda body: (200, "\x00\x01 not json at all"),
              "500": lambda body: (500, "internal error"),
              "401": lambda body: (401, '{"error": "invalid api key"}'),
              "silent": lambda body: (*reply("Verdict: 1"), 5.0),
              "trickle": lambda body: (*reply("y" * 40 + "\nVerdict: 1"), 0.0, 0.1)}[kind]
    stub.behave = behave
    client = stub.client(timeout=0.3, retries=1, max_failures=2)
    t0 = time.monotonic()
    with pytest.raises(JudgeUnavailable, match=r"all 10 judgements failed") as e:
        judge_pairs(client, "mt", [f"s{i}" for i in range(10)], ["a"] * 10, ["b"] * 10, progress=False)
    # Two judgements failed (401 is not retried: one request each; the others two each), then no more.
    assert len(stub.requests) == (2 if kind == "401" else 4), len(stub.requests)
    assert time.monotonic() - t0 < 3.0
    assert client.disabled and "2 consecutive failures" in client.disabled
    assert {"garbage": "not JSON", "500": "HTTP 500", "401": "HTTP 401", "silent": "timed out",
            "trickle": "timed out"}[kind] in str(e.value)
    with pytest.raises(JudgeUnavailable, match="judge disabled after 2 consecutive failures"):
        client.complete([{"role": "user", "content": "hi"}])
    assert len(stub.requests) == (2 if kind == "401" else 4)  # the open breaker sends nothing


def test_breaker_counts_only_failures_in_a_row(stub):
    """Isolated failures (here every other pair) never open it; the verdict-less replies count too."""
    stub.behave = lambda body: reply("no idea") if int(re.search(r"src (\d+)", body["messages"][-1]["content"])
                                                        .group(1)) % 2 else prefer_mark(body)
    client = stub.client(max_failures=2)
    res = judge_pairs(client, "mt", [f"src {i}" for i in range(8)], [MARK] * 8, ["x"] * 8, progress=False)
    assert (res["n"], res["errors"], res["aborted"]) == (4, 4, None) and client.disabled is None
    assert len(stub.requests) == 8
    stub.behave = lambda body: reply("no idea")
    with pytest.raises(JudgeUnavailable):
        judge_pairs(client, "mt", [f"src {i}" for i in range(8)], [MARK] * 8, ["x"] * 8, progress=False)
    assert len(stub.requests) == 8 + 1  # src 7 had failed already: one more failure in a row opens it


def test_breaker_keeps_the_pairs_judged_before_it_opened(stub):
    stub.behave = lambda body: prefer_mark(body) if len(stub.requests) <= 3 else (503, "down")
    res = judge_pairs(stub.client(retries=0, max_failures=3), "mt", [f"s{i}" for i in range(10)], [MARK] * 10,
                      ["x"] * 10, progress=False)
    assert (res["n"], res["wins"], res["errors"]) == (3, 3, 7) and len(stub.requests) == 6
    assert "judge disabled after 3 consecutive failures" in res["aborted"]
    assert [r["error"] for r in res["records"][6:]] == [res["aborted"]] * 4


def test_http_proxy_from_the_environment_is_used(stub, monkeypatch):
    """As urllib did before the deadline rewrite: http_proxy routes the request, with the absolute URL."""
    monkeypatch.setenv("http_proxy", stub.url.rsplit("/v1", 1)[0])
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    client = JudgeClient("http://judge.invalid/v1", "judge-model", retries=0)
    assert client.complete([{"role": "user", "content": "hi"}]) == "Verdict: 1"
    assert stub.requests[-1]["path"] == "http://judge.invalid/v1/chat/completions"
