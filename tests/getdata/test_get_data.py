"""bin/get_data.py: the download path against a loopback server laid out like raw.githubusercontent.com, `--from`,
and every failure (corrupt source, cut download, unreachable or missing URL) leaving the data root as it was."""
from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from _helpers import real_data_source, run_cli
from _openpecha_sources import source_texts

from semgrpo.getdata.download import FetchError, fetch
from semgrpo.getdata.manifest import load_manifest
from semgrpo.getdata.openpecha import source_paths

MANIFEST = load_manifest()
NO_PROXY = {"http_proxy": "", "HTTP_PROXY": "", "https_proxy": "", "HTTPS_PROXY": "", "no_proxy": "*",
            "NO_PROXY": "*"}  # the loopback server must be reached directly


class Sources(http.server.ThreadingHTTPServer):
    """Serves `files` ({url path: bytes}) on 127.0.0.1. `cut` paths get their full Content-Length but half the body
    (then the connection closes) for their first `cut[path]` requests; `slow` paths answer after 2 s."""

    daemon_threads = True

    def __init__(self, files: dict[str, bytes]):
        self.files, self.cut, self.slow, self.requests = files, Counter(), set(), Counter()
        super().__init__(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request, client_address):
        pass  # a client that gave up (the timeout test) leaves a broken pipe behind: not the test's concern


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        srv: Sources = self.server
        srv.requests[self.path] += 1
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        if self.path in srv.slow:
            time.sleep(2)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut[self.path] > 0:
            srv.cut[self.path] -= 1
            body = body[: len(body) // 2]
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def served_files(real_data_root) -> dict[str, bytes]:
    """What the real URLs serve, keyed by URL path: the copied files as published, and the OpenPecha texts rebuilt
    from the pair and title files (tests/_openpecha_sources.py says why that is a faithful check)."""
    texts = source_texts(real_data_root)
    files = {}
    for f in MANIFEST.files:
        prefix = f"/{f.source.repo}/{f.source.commit}/"
        if f.build:
            files.update({prefix + p: texts[p].encode("utf-8") for p in source_paths(f.build, f.ids)})
        else:
            files[prefix + f.path] = (real_data_root / f.rel).read_bytes()
    return files


@pytest.fixture
def server(served_files):
    srv = Sources(dict(served_files))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def get_data(*args):
    return run_cli("get_data.py", *map(str, args), timeout=300, env=NO_PROXY)


def tree(root: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under `root`, hidden ones included; {} when it does not exist."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def assert_root_holds_the_published_files(root: Path, expected_root: Path) -> None:
    assert sorted(tree(root)) == sorted({f.dataset for f in MANIFEST.files} | {f.rel for f in MANIFEST.files})
    for f in MANIFEST.files:
        assert (root / f.rel).read_bytes() == (expected_root / f.rel).read_bytes(), f.rel


def _url_path(rel: str) -> str:
    f = next(f for f in MANIFEST.files if f.rel == rel)
    return f"/{f.source.repo}/{f.source.commit}/{f.path}"


# ----------------------------------------------------------------------------- the paths that work


def test_download_builds_the_published_files_byte_for_byte(server, real_data_root, tmp_path):
    root = tmp_path / "a" / "root"
    r = get_data("--root", root, "--mirror", server.url, "--retries", "0")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert_root_holds_the_published_files(root, real_data_root)
    for n, f in enumerate(MANIFEST.files, 1):  # a progress line per file, with its check
        assert f"[{n}/{len(MANIFEST.files)}] {f.rel}: " in r.stdout
    assert r.stdout.count("sha256 ok") == len(MANIFEST.files)
    assert "licences:" in r.stdout and "non-commercial" in r.stdout
    # every OpenPecha text was fetched once, though the pair and title files share Tibetan texts
    texts = [p for p in server.requests if "/text-pairs/" in p]
    assert len(texts) == len({p for f in MANIFEST.files if f.build for p in source_paths(f.build, f.ids)})
    assert set(server.requests.values()) == {1}

    # A second run finds every file in place and checked: no request at all.
    before = sum(server.requests.values())
    r = get_data("--root", root, "--mirror", server.url)
    assert r.returncode == 0 and r.stdout.count("present, sha256 ok") == len(MANIFEST.files)
    assert sum(server.requests.values()) == before


def test_from_folder_installs_the_published_files(real_data_root, tmp_path):
    source = real_data_source()  # the folder real_data_root itself was installed from
    r = get_data("--root", tmp_path / "root", "--from", source)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.count("sha256 ok") == len(MANIFEST.files) and "copied from" in r.stdout
    assert_root_holds_the_published_files(tmp_path / "root", source)


def test_only_some_datasets_and_a_damaged_file_is_replaced(server, real_data_root, tmp_path):
    root = tmp_path / "root"
    (root / "cmrc2018").mkdir(parents=True)
    (root / "cmrc2018" / "dev.json").write_text("{}")  # not the manifest's file: fetched again
    r = get_data("--root", root, "--mirror", server.url, "--only", "cmrc2018,drcd")
    assert r.returncode == 0, r.stderr
    assert "cmrc2018/dev.json: present but not the manifest's file" in r.stdout
    assert sorted(p for p, v in tree(root).items() if v is not None) == ["cmrc2018/dev.json", "cmrc2018/trial.json",
                                                                         "drcd/dev.json"]
    assert (root / "cmrc2018" / "dev.json").read_bytes() == (real_data_root / "cmrc2018" / "dev.json").read_bytes()
    assert not any("text-pairs" in p for p in server.requests)  # OpenPecha not asked for


# ----------------------------------------------------------------------------- failures: one line, root unchanged


def _populated(root: Path, real_data_root: Path) -> None:
    """A root as a user may have it: one dataset installed, a damaged file, a file of their own."""
    (root / "cmrc2018").mkdir(parents=True)
    (root / "cmrc2018" / "trial.json").write_bytes((real_data_root / "cmrc2018" / "trial.json").read_bytes())
    (root / "drcd").mkdir()
    (root / "drcd" / "dev.json").write_text("damaged")
    (root / "my_notes.txt").write_text("mine")


def _corrupt(data: bytes) -> bytes:
    i = len(data) // 2
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:]


@pytest.mark.parametrize("fault, root_state, message", [
    ("corrupt_copy", "populated", "cmrc2018/dev.json: sha256 "),
    ("corrupt_text", "absent", "bo_zh_openpecha/train.jsonl: sha256 "),
    ("cut", "absent", "partial download of "),
    ("unreachable", "populated", "cannot reach http://127.0.0.1:"),
    ("missing", "populated", "HTTP 404"),
    ("from_corrupt", "populated", "drcd/dev.json: sha256 "),
    ("from_missing", "absent", "not found (the folder must be laid out like the data root"),
])
def test_a_failure_is_one_line_exit_2_and_leaves_the_root_as_it_was(fault, root_state, message, server,
                                                                   real_data_root, tmp_path):
    root = tmp_path / "parent" / "root"
    if root_state == "populated":
        _populated(root, real_data_root)
    before = tree(tmp_path)
    mirror = server.url
    # Without OpenPecha (1,350 texts) where it plays no part; drcd/dev.json is fetched and passes its check first.
    args = ["--only", "drcd,cmrc2018"]
    if fault == "corrupt_copy":
        server.files[_url_path("cmrc2018/dev.json")] = _corrupt(server.files[_url_path("cmrc2018/dev.json")])
    elif fault == "corrupt_text":  # one letter of the first pair's Tibetan line: the built pair file differs
        first = json.loads((real_data_root / "bo_zh_openpecha" / "train.jsonl").read_text(encoding="utf-8")
                           .splitlines()[0])
        f = MANIFEST.files[0]
        path = f"/{f.source.repo}/{f.source.commit}/text-pairs/{first['id'].split(':')[0]}-bo.txt"
        line = first["bo"].encode()
        assert server.files[path].count(line) == 1
        server.files[path] = server.files[path].replace(line, _corrupt(line[:3]) + line[3:])
        args = []
    elif fault == "cut":
        server.cut[_url_path("cmrc2018/trial.json")] = 99
    elif fault == "unreachable":
        mirror = "http://127.0.0.1:9"  # the discard port: nothing listens there
    elif fault == "missing":
        del server.files[_url_path("cmrc2018/dev.json")]
    else:
        source = tmp_path / "copy"
        for f in MANIFEST.files:
            (source / f.dataset).mkdir(parents=True, exist_ok=True)
            (source / f.rel).write_bytes((real_data_root / f.rel).read_bytes())
        if fault == "from_corrupt":
            (source / "drcd" / "dev.json").write_bytes(_corrupt((source / "drcd" / "dev.json").read_bytes()))
        else:
            (source / "bo_title_openpecha" / "dev.jsonl").unlink()
        before = tree(tmp_path)
        args = ["--from", source]
    r = get_data("--root", root, "--mirror", mirror, "--retries", "0", "--timeout", "10", *args)
    assert r.returncode == 2, (r.stdout[-2000:], r.stderr)
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("get_data.py: error: "), r.stderr
    assert message in r.stderr
    assert tree(tmp_path) == before  # the root, its parents, the source copy: all as they were


def test_a_cut_download_is_named_with_its_sizes_and_retried(server, tmp_path):
    path = _url_path("drcd/dev.json")
    size = len(server.files[path])
    server.cut[path] = 1
    assert fetch(server.url + path, tmp_path / "a", timeout=10, retries=1) == size  # the second try is whole
    assert server.requests[path] == 2 and (tmp_path / "a").read_bytes() == server.files[path]
    server.cut[path] = 2
    with pytest.raises(FetchError, match=rf"partial download of .*DRCD_dev.json: got {size // 2} of {size} bytes "
                                         r"\(2 tries\)"):
        fetch(server.url + path, tmp_path / "b", timeout=10, retries=1)


def test_a_silent_server_times_out(server, tmp_path):
    path = _url_path("cmrc2018/trial.json")
    server.slow.add(path)
    with pytest.raises(FetchError, match=r"no data for 0.5 s \(timed out; see --timeout\)"):
        fetch(server.url + path, tmp_path / "a", timeout=0.5, retries=0)


def test_bad_flags_are_one_line(tmp_path):
    for args, message in ((["--only", "nope"], "--only nope: no such dataset; choose from bo_zh_openpecha"),
                          (["--from", tmp_path / "nowhere"], "not a folder"),
                          (["--jobs", "0"], "--jobs >= 1")):
        r = get_data("--root", tmp_path / "root", *args)
        assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and message in r.stderr, r.stderr
    assert not (tmp_path / "root").exists()


# ----------------------------------------------------------------------------- the committed lists


def test_committed_manifest_and_ids_are_those_of_the_published_files(real_data_root):
    """The id lists and checksums are what `python -m semgrpo.getdata.derive` derives from the real files."""
    from semgrpo.getdata.derive import derive
    from semgrpo.getdata.manifest import MANIFEST as MANIFEST_FILE
    from semgrpo.getdata.manifest import OPENPECHA_IDS

    manifest, ids = derive(real_data_root)
    assert manifest == json.loads(MANIFEST_FILE.read_text(encoding="utf-8"))
    assert ids == json.loads(OPENPECHA_IDS.read_text(encoding="utf-8"))
    for f in MANIFEST.files:
        assert re.fullmatch("[0-9a-f]{40}", f.source.commit), f.source.commit
        assert hashlib.sha256((real_data_root / f.rel).read_bytes()).hexdigest() == f.sha256
    assert os.path.commonprefix([f.source.url("x") for f in MANIFEST.files]) == "https://raw.githubusercontent.com/"
