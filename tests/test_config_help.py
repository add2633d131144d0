"""Config help from one source: each key's help is its field's metadata (semgrpo/config/tree.py); `--help-config`
prints every key with its default and help; the README's configuration table says the same (keys, defaults, help)."""
import re
import subprocess
import sys

import pytest
import yaml
from _helpers import REPO, user_env

from semgrpo.config import Config, get_key, set_key, valid_keys
from semgrpo.config.help import TABLE_END, TABLE_START, format_value, key_help, markdown_table
from semgrpo.config.keys import key_fields

README = REPO / "README.md"


def readme_table() -> dict[str, tuple[str, str]]:
    """key -> (default, meaning) of the README's configuration table, as written there."""
    text = README.read_text(encoding="utf-8")
    assert text.count(TABLE_START) == 1 and text.count(TABLE_END) == 1, "the README's table markers are missing"
    block = text[text.index(TABLE_START) + len(TABLE_START): text.index(TABLE_END)]
    rows = {}
    for line in block.strip().splitlines()[2:]:  # after the header and the --- line
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        assert len(cells) == 3, f"not a row of three cells: {line!r}"
        key, default, meaning = cells
        assert key.startswith("`") and key.endswith("`"), line
        assert key[1:-1] not in rows, f"{key} is in the table twice"
        rows[key[1:-1]] = (default.strip("`"), meaning)
    return rows


def test_every_key_has_one_line_of_help():
    fields = key_fields()
    assert [k for k, _ in fields] == valid_keys() and len(fields) > 80
    for dotted, f in fields:
        text = f.metadata.get("help", "")
        assert text.strip() and "\n" not in text and len(text) < 400, f"{dotted}: help {text!r}"


def test_readme_table_has_every_key_with_its_default_and_help():
    table = readme_table()
    keys = valid_keys()
    assert sorted(set(keys) - set(table)) == [], "keys missing from the README's table"
    assert sorted(set(table) - set(keys)) == [], "the README's table names keys the config does not have"
    assert list(table) == keys, "the README's table is not in the tree's order"
    helps = {dotted: (default, text) for dotted, default, text in key_help()}
    wrong = {k: (table[k][0], helps[k][0]) for k in keys if table[k][0] != helps[k][0]}
    assert not wrong, f"README defaults differ (README, config): {wrong}"
    wrong = [k for k in keys if table[k][1] != helps[k][1]]
    assert not wrong, f"README help differs from the field metadata for {wrong}; regenerate the table"
    block = README.read_text(encoding="utf-8")
    assert markdown_table() in block  # byte for byte what --help-config=markdown prints


def test_readme_defaults_typed_back_give_the_defaults():
    """An independent check of the defaults: each as written in the README, given as `key=value` the way a user
    would, sets exactly the default (so the table never shows a value the config would read differently)."""
    defaults = Config()
    for dotted, (default, _) in readme_table().items():
        cfg = Config()
        set_key(cfg, dotted, yaml.safe_load(default))
        assert get_key(cfg, dotted) == get_key(defaults, dotted), (dotted, default)


@pytest.mark.parametrize("value, shown", [
    (True, "true"), (None, "null"), ("", '""'), (5e-7, "5e-07"), (0.0001, "0.0001"), (64, "64"),
    (["a", "b"], "[a, b]"), ({"x": 1.5}, "{x: 1.5}"), ({}, "{}"),
])
def test_format_value(value, shown):
    assert format_value(value) == shown


def test_help_config_prints_every_key_and_starts_nothing():
    """`python bin/train_grpo.py --help-config` exits 0 having imported neither DeepSpeed nor torch (-X importtime
    lists every module imported), with each key, its default and the start of its help."""
    proc = subprocess.run([sys.executable, "-X", "importtime", str(REPO / "bin" / "train_grpo.py"), "--help-config",
                           "--config", "no-such-file.yaml"], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=user_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time")}
    assert "semgrpo.config.help" in imported  # the import list is really there
    assert not {m for m in imported if m.split(".")[0] in ("deepspeed", "torch", "triton")}
    out = proc.stdout
    for dotted, default, text in key_help():
        assert f"\n{dotted} = {default}\n    {text.replace('`', '').split()[0]}" in out, dotted
    md = subprocess.run([sys.executable, str(REPO / "bin" / "train_grpo.py"), "--help-config=markdown"], cwd=REPO,
                        capture_output=True, text=True, timeout=120, env=user_env())
    assert md.returncode == 0 and md.stdout.strip() == markdown_table()


def test_help_config_into_a_closed_pipe_is_quiet():
    """`--help-config | head -1`: the reader leaves early; no BrokenPipeError traceback, exit 0."""
    proc = subprocess.Popen([sys.executable, str(REPO / "bin" / "train_grpo.py"), "--help-config"], cwd=REPO,
                            env=user_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the child writes: its first write meets a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and "Traceback" not in err, err[-2000:]
