"""semgrpo.data_root: `data:` paths in configs and flags, the missing-file error of every reader, and no pointer
outside the repository in the project's code, configs and README."""
from pathlib import Path

import pytest
import yaml
from _helpers import REPO, run_cli

from semgrpo.data import load_records
from semgrpo.data_root import DataRootError, data_root, resolve_data_path
from semgrpo.eval.generation import load_cmrc
from semgrpo.eval.ood import load_passages
from semgrpo.getdata.manifest import load_manifest

FILES = {f.rel for f in load_manifest().files}


def test_root_is_the_env_var_else_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("SEMGRPO_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_root() == tmp_path / "home" / ".cache" / "semgrpo" / "data"
    monkeypatch.setenv("SEMGRPO_DATA", "~/elsewhere")
    assert data_root() == tmp_path / "home" / "elsewhere"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SEMGRPO_DATA", "rel")
    assert data_root() == tmp_path / "rel"


def test_data_paths_resolve_in_the_root_and_plain_paths_stay(monkeypatch, tmp_path):
    monkeypatch.setenv("SEMGRPO_DATA", str(tmp_path))
    (tmp_path / "cmrc2018").mkdir()
    (tmp_path / "cmrc2018" / "dev.json").write_text("{}")
    assert resolve_data_path("data:cmrc2018/dev.json") == tmp_path / "cmrc2018" / "dev.json"
    assert resolve_data_path("data:cmrc2018") == tmp_path / "cmrc2018"
    assert resolve_data_path("relative/dev.json") == Path("relative/dev.json")  # not checked here
    assert resolve_data_path("./data:odd") == Path("data:odd")
    for bad in ("data:", "data:../outside.json", "data:/etc/passwd", "data:cmrc2018/../../x"):
        with pytest.raises(DataRootError, match="names a file or folder inside the data root"):
            resolve_data_path(bad)


def test_a_missing_data_file_names_the_file_and_the_command_that_fetches_it(monkeypatch, tmp_path):
    monkeypatch.setenv("SEMGRPO_DATA", str(tmp_path / "root"))
    want = str(tmp_path / "root" / "cmrc2018" / "dev.json")
    readers = [lambda v: load_records(v, task="mt_zh_bo"), load_cmrc, load_passages]
    for read in readers:
        with pytest.raises(DataRootError) as err:
            read("data:cmrc2018/dev.json")
        assert str(err.value) == (f"data:cmrc2018/dev.json: {want} does not exist (data root $SEMGRPO_DATA, else "
                                  "~/.cache/semgrpo/data); fetch it with: python bin/get_data.py --only cmrc2018")
    with pytest.raises(DataRootError, match="python bin/get_data.py fetches only bo_zh_openpecha, bo_title_openpecha"):
        resolve_data_path("data:mine/x.jsonl", what="data.train")


def test_readers_take_data_paths(monkeypatch, real_data_root):
    monkeypatch.setenv("SEMGRPO_DATA", str(real_data_root))
    assert len(load_records("data:bo_zh_openpecha", task="mt_zh_bo", split="dev")) == 244
    assert len(load_records("data:bo_title_openpecha/dev.jsonl", task="hg_bo")) == 105
    assert load_cmrc("data:cmrc2018/trial.json")["data"]
    assert len(load_passages("data:cmrc2018/dev.json", limit=3)) == 3


@pytest.mark.parametrize("script, args, flag", [
    ("evaluate.py", ["--base", "/nonexistent-model", "--data", "t.jsonl", "--cmrc", "data:cmrc2018/dev.json"], "--cmrc"),
    ("evaluate.py", ["--base", "/nonexistent-model", "--data", "data:bo_zh_openpecha/dev.jsonl"], "--data"),
    ("train_embedder.py", ["--model", "{tmp}", "--output", "{tmp}/out", "--data", "data:bo_zh_openpecha/train.jsonl"],
     "--data"),
])
def test_entry_points_name_a_missing_data_file_in_one_line(script, args, flag, tmp_path):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r = run_cli(script, *args, timeout=120, env={"SEMGRPO_DATA": str(tmp_path / "empty")})
    value = args[args.index(flag) + 1]
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    dataset = value.split(":")[1].split("/")[0]
    assert r.stderr.startswith(f"{script}: error: {flag} {value}: {tmp_path / 'empty' / value[5:]} does not exist")
    assert r.stderr.rstrip().endswith(f"fetch it with: python bin/get_data.py --only {dataset}")


def test_training_names_a_missing_data_file_before_loading_anything(monkeypatch, tmp_path, demo_assets):
    from semgrpo.config import load_config
    from semgrpo.session import prepare

    monkeypatch.setenv("SEMGRPO_DATA", str(tmp_path))
    cfg = load_config(REPO / "configs" / "demo.yaml", ["data.dev=data:bo_zh_openpecha/dev.jsonl"])
    with pytest.raises(DataRootError, match=r"^data.dev data:bo_zh_openpecha/dev.jsonl: .* python bin/get_data.py "
                                            r"--only bo_zh_openpecha$"):
        prepare(cfg, need_encoder=False)


def test_configs_read_the_data_root():
    """Each task config's data is a file bin/get_data.py installs."""
    named = 0
    for path in sorted((REPO / "configs").glob("*.yaml")):
        data = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("data") or {}
        for key in ("train", "dev"):
            if data.get(key):
                assert data[key].startswith("data:") and data[key][5:] in FILES, (path.name, key, data[key])
                named += 1
    assert named == 6  # mt_bo_zh, mt_zh_bo, hg_bo: train and dev


def test_nothing_points_outside_the_repository():
    """Users have the repository only: no code, config or README line may lead to the team's ../shared."""
    offenders = []
    for top in ("README.md", "configs", "semgrpo", "bin", "benchmarks"):
        paths = [REPO / top] if (REPO / top).is_file() else sorted((REPO / top).rglob("*"))
        for path in paths:
            if path.is_file() and path.suffix in (".py", ".md", ".yaml", ".json", ".txt", ".c", ".csv", ""):
                text = path.read_text(encoding="utf-8", errors="replace")
                offenders += [f"{path.relative_to(REPO)}:{n}" for n, line in enumerate(text.splitlines(), 1)
                              if "../shared" in line]
    assert offenders == []
