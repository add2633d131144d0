"""The README's commands, as written: each runs in a copy of the checkout right after the demo, or is listed in
NOT_RUN with the reason (a cluster, the network, an hour of CPU) and, where it exists, the test that covers it.

Every command of the README's fenced shell blocks is one of the two: a command added or changed fails
`test_every_readme_command_is_run_or_says_why_not` until it is placed. The two substitutions the shared test
machine needs are made and said: `--master_port` after `deepspeed` (DeepSpeed's default port may be another job's), and the
reward server's port 8000 when another process holds it.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from _helpers import REPO, assert_clean_launch, free_port, user_env

FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", re.M | re.S)
DEMO = "deepspeed bin/train_grpo.py"

# What each command the test runs must leave behind (besides exit status 0), under the copy of the checkout.
RUN = {
    "python bin/get_data.py --only cmrc2018": ["$DATA/cmrc2018/dev.json"],
    "python bin/evaluate.py --run runs/demo --cmrc data:cmrc2018/dev.json --cmrc-limit 100":
        ["runs/demo/eval/eval.json", "runs/demo/eval/eval.md"],
    "python bin/get_data.py": ["$DATA/bo_title_openpecha/train.jsonl", "$DATA/drcd/dev.json"],
    "python bin/get_data.py --only bo_zh_openpecha": ["$DATA/bo_zh_openpecha/dev.jsonl"],
    "PYTHONPATH=examples/rewards deepspeed bin/train_grpo.py --config configs/demo.yaml --config my_run.yaml "
    "output_dir=runs/demo_lenmatch model.init_from=runs/demo/cold_start sft.before_grpo=false grpo.max_steps=50":
        ["runs/demo_lenmatch/summary.json"],
    "PYTHONPATH=examples/rewards deepspeed bin/train_grpo.py output_dir=runs/demo_lenmatch "
    "model.init_from=runs/demo/cold_start sft.before_grpo=false grpo.max_steps=50 "
    "\"reward.functions=[semantic, language, lenmatch=length_plugin:LengthMatch]\" reward.weights.lenmatch=0.5 "
    "\"reward.kwargs.lenmatch={tolerance: 0.3}\"": ["runs/demo_lenmatch/summary.json"],
    "python examples/rewards/reward_server.py 8000 & "
    "deepspeed bin/train_grpo.py output_dir=runs/demo_remote model.init_from=runs/demo/cold_start "
    "sft.before_grpo=false grpo.max_steps=50 \"reward.functions=[semantic, language, http://127.0.0.1:8000/score]\" "
    "reward.weights.remote=0.5 reward.remote_timeout=30 ; kill %1": ["runs/demo_remote/summary.json"],
}
NEEDS_MODELS = "needs /models/... (a real base model or encoder) and a GPU cluster"
NOT_RUN = {
    "pip install torch==2.13.0": "installs packages (this environment is the installed one)",
    "pip install -e .": "installs packages (the copy runs from its bin/, which puts its own semgrpo first)",
    DEMO: "the demo: the module's fixture runs it first, as written",
    "deepspeed bin/train_grpo.py demo.language=km output_dir=runs/demo_km":
        "a whole demo of another language, assets included (the demo's time again); "
        "tests/demo/test_demo_language.py trains Khmer from the command line",
    "deepspeed bin/train_grpo.py demo.language=ug demo.source=en output_dir=runs/demo_ug": "as demo.language=km",
    "pip install -e \".[test]\"": "installs packages",
    "ruff check .": "the linter (the suite's own checks, not a command of the user's runs)",
    "python -m pytest -q tests": "the test suite itself",
    "python bin/get_data.py --from DIR": "DIR is a placeholder; tests/getdata/test_get_data.py installs with --from",
    "python bin/train_embedder.py --model /models/cino-base-v2-st --data data:bo_zh_openpecha/train.jsonl "
    "--dev data:bo_zh_openpecha/dev.jsonl --src-field bo --tgt-field zh --output /models/cino-bo-zh-encoder":
        NEEDS_MODELS,
    "deepspeed bin/train_sft.py --config configs/mt_zh_bo.yaml output_dir=runs/mt_zh_bo_sft "
    "model.path=/models/Qwen3-4B-Instruct-2507": NEEDS_MODELS,
    "deepspeed bin/train_grpo.py --config configs/mt_zh_bo.yaml model.init_from=runs/mt_zh_bo_sft "
    "model.path=/models/Qwen3-4B-Instruct-2507 reward.encoder=/models/cino-bo-zh-encoder": NEEDS_MODELS,
    "deepspeed bin/train_sft.py --config configs/mt_zh_bo.yaml output_dir=runs/mt_zh_bo_strong_sft "
    "model.path=/models/Qwen3-4B-Instruct-2507 sft.samples=0 sft.epochs=3": NEEDS_MODELS,
    "cat hosts": "a cluster's hostfile",
    "deepspeed --hostfile hosts bin/train_grpo.py --config configs/mt_zh_bo.yaml ...": "several nodes",
    "python bin/train_grpo.py --config configs/mt_zh_bo.yaml --plan-only --world-size 8 --gpu-memory 16 "
    "model.path=/models/Qwen3-4B model.lora.enabled=false":
        "tests/test_memory_plan.py::test_plan_only_as_a_user_runs_it runs it on Qwen3-4B's config.json",
    "python bin/export.py runs/mt_zh_bo exports/mt_zh_bo": "exports the real run above (tests/test_export.py exports "
                                                            "demo-sized runs)",
    "python bin/export.py runs/mt_zh_bo exports/mt_zh_bo-bf16 --dtype bf16": "as above",
    "python bin/export.py runs/mt_zh_bo exports/mt_zh_bo-step400 --checkpoint step-00000400": "as above",
    "python bin/export.py runs/mt_zh_bo exports/mt_zh_bo-lora --adapter-only": "as above",
    "vllm serve exports/mt_zh_bo": "serves the export of the real run (vLLM is not part of the suite)",
    "vllm serve /models/Qwen3-4B-Instruct-2507 --enable-lora --lora-modules mt_zh_bo=exports/mt_zh_bo-lora "
    "--max-lora-rank 128": "as vllm serve exports/mt_zh_bo",
    "python bin/transfer.py --from mt_sft=runs/mt_zh_bo_strong_sft --from mt_rl=runs/mt_zh_bo --config "
    "configs/hg_bo.yaml --samples 1000 --output runs/transfer --launcher \"deepspeed --num_gpus 8\"":
        "the real runs above on 8 GPUs; tests/eval/test_transfer.py runs transfer on demo-sized runs",
    "python benchmarks/reproduce_paper.py": "over an hour on CPU; test_reproduce_paper.py runs its --quick form",
    "python benchmarks/reproduce_paper.py --seeds 0": "one seed of the above: still a long CPU run",
    "mkdir -p wheels": "prepares wheels for a GPU machine (network)",
    "PLAT=\"--python-version 3.12 --implementation cp --only-binary=:all: --platform manylinux_2_28_x86_64 "
    "--platform manylinux_2_17_x86_64\"": "as mkdir -p wheels",
    "pip download --no-deps $PLAT -d wheels trl==1.16.0 liger-kernel==0.8.5 hjson==3.1.0 babel==2.18.0":
        "downloads (network)",
    "pip download $PLAT -d wheels pydantic==2.13.4": "downloads (network)",
    "pip download --no-deps --no-binary=:all: -d /tmp/ds deepspeed==0.19.8": "downloads (network)",
    "pip wheel --no-deps --no-build-isolation -w wheels /tmp/ds/deepspeed-0.19.8.tar.gz": "needs the download above",
}


# ------------------------------------------------------------------------------------- the README's commands

def _logical_lines(block: str) -> list[str]:
    """The block's commands: continuation lines joined, comments and blank lines dropped."""
    out, current = [], ""
    for line in block.splitlines():
        line = line.strip()
        if current:
            line = current + " " + line
            current = ""
        if line.endswith("\\"):
            current = line[:-1].strip()
            continue
        line = re.sub(r"\s+#\s.*$", "", line).strip()  # a trailing comment (README comments start "  # ")
        if line and not line.startswith("#"):
            out.append(" ".join(line.split()))
    return out


def readme_commands(text: str) -> list[str]:
    """Every command of the README's shell blocks (```bash, or unlabelled lines that start a bin/ or benchmarks/
    script), in order. `a && b` are two commands; a command sent to the background with `&` and the lines after it
    in its block are one (a server and what uses it)."""
    commands = []
    for m in FENCE.finditer(text):
        lang, block = m.group(2), m.group(3)
        if lang not in ("bash", ""):
            continue
        lines = _logical_lines(block)
        if lang == "":
            lines = [line for line in lines if re.match(r"(python|deepspeed) (bin|benchmarks)/", line)]
        for i, line in enumerate(lines):
            if line.endswith(" &"):
                commands.append(" ; ".join([line[:-1] + "&", *lines[i + 1:]]).replace("& ;", "&"))
                break
            commands.extend(part.strip() for part in line.split(" && "))
    return commands


def _readme() -> str:
    return (REPO / "README.md").read_text(encoding="utf-8")


def test_every_readme_command_is_run_or_says_why_not():
    commands = readme_commands(_readme())
    unplaced = [c for c in commands if c not in RUN and c not in NOT_RUN]
    assert not unplaced, "README commands neither run by this test nor in NOT_RUN:\n" + "\n".join(unplaced)
    stale = [c for c in [*RUN, *NOT_RUN] if c not in commands]
    assert not stale, "entries for commands the README no longer has:\n" + "\n".join(stale)


_READS = re.compile(r"(?<![\w=/-])(?:--run |--from \w+=|model\.init_from=|bin/export\.py )(runs/[\w./-]+)")
_WRITES = re.compile(r"(?:output_dir=|--output )(runs/[\w./-]+)")


def _default_output_dir(command: str) -> str | None:
    """The output_dir a training command writes when it names none: its last --config's, else the demo's."""
    if not re.search(r"bin/train_(grpo|sft)\.py", command):
        return None
    configs = re.findall(r"--config (\S+\.yaml)", command) or ["configs/demo.yaml"]
    for config in reversed(configs):
        path = REPO / config
        if path.is_file():
            match = re.search(r"^output_dir: (\S+)", path.read_text(encoding="utf-8"), re.M)
            if match:
                return match.group(1)
    return None


def test_every_run_a_command_reads_is_made_by_a_command_before_it():
    """A user follows the README top to bottom: `--run`, `--from`, `model.init_from` and export sources name a run
    folder an earlier command creates (or one inside it: the demo's cold_start)."""
    made: list[str] = []
    for command in readme_commands(_readme()):
        for read in _READS.findall(command):
            assert any(read == m or read.startswith(m + "/") for m in made), f"{command!r} reads {read}; made: {made}"
        made += _WRITES.findall(command) or [d for d in [_default_output_dir(command)] if d]


def _training_config(command: str, my_run: Path):
    """(output_dir, configuration dict) of a bin/train_grpo.py or train_sft.py command, as the script loads it;
    None for another command, or one whose config cannot be loaded here (a placeholder, `...`)."""
    from semgrpo.config import ConfigError, load_config, to_dict

    words = shlex.split(command)
    script = next((i for i, w in enumerate(words) if re.fullmatch(r"bin/train_(grpo|sft)\.py", w)), None)
    if script is None or "..." in words or "--plan-only" in words:
        return None
    configs, overrides, rest = [], [], words[script + 1:]
    while rest:
        word = rest.pop(0)
        if word in (";", "&", "&&"):  # the next command of a unit (stopping the server)
            break
        if word == "--config":
            name = rest.pop(0)
            configs.append(my_run if name == "my_run.yaml" else REPO / name)
        else:
            overrides.append(word)
    try:
        cfg = load_config(configs or [REPO / "configs" / "demo.yaml"], overrides)
    except ConfigError as err:
        raise AssertionError(f"{command!r} does not load: {err}") from None
    return cfg.output_dir, to_dict(cfg)


def test_no_command_resumes_a_run_folder_another_command_made_differently(tmp_path):
    """A training command that writes into the run folder of an earlier one resumes it, and stops (exit 2) when its
    settings differ: without its own output_dir, a plugin run or another language's demo lands in runs/demo."""
    from semgrpo.run_folder import compare_configs

    text = _readme()
    section = text[text.index("## Rewards of your own"):]
    my_run = tmp_path / "my_run.yaml"
    my_run.write_text(section.split("```yaml\n")[1].split("```")[0], encoding="utf-8")
    made: dict[str, tuple[str, dict]] = {}
    for command in readme_commands(text):
        loaded = _training_config(command, my_run)
        if loaded is None:
            continue
        output_dir, cfg = loaded
        if output_dir in made:
            first, first_cfg = made[output_dir]
            _, refused = compare_configs(first_cfg, cfg, stage="sft" if "train_sft.py" in command else "grpo")
            assert not refused, f"{command!r} would resume {output_dir}, made by {first!r}, and refuse: {refused}"
        else:
            made[output_dir] = (command, cfg)


# ------------------------------------------------------------------------------- after the demo, in a copy

def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _as_run_here(command: str) -> str:
    """The command with the shared machine's two substitutions (module docstring)."""
    command = re.sub(r"(?<![\w/.-])deepspeed (?!--master_port)", lambda _: f"deepspeed --master_port {free_port()} ",
                     command)
    if "reward_server.py 8000" in command and _port_taken(8000):
        command = command.replace("8000", str(free_port()))
    return command


def _bash(command: str, cwd: Path, env: dict, timeout: int) -> tuple[int, str]:
    """`command` in bash (-e: a failing part fails it), in its own session: whatever it left running (a server in
    the background) is killed."""
    proc = subprocess.Popen(["bash", "-e", "-c", command], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):  # it ended with everything it started
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return proc.returncode, output


def _copy_checkout(dest: Path) -> None:
    """The checkout's files (tracked, and new ones git would add) and its built C extension."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    for ext in (REPO / "semgrpo").glob("_script_check*"):
        shutil.copy2(ext, dest / "semgrpo" / ext.name)


@pytest.fixture(scope="module")
def after_demo(tmp_path_factory, real_data_root, demo_assets):
    """A copy of the checkout in which the README's demo command has just run; the environment to run in."""
    if shutil.which("deepspeed") is None:
        pytest.skip("the deepspeed launcher is not on PATH")
    copy = tmp_path_factory.mktemp("checkout")
    _copy_checkout(copy)
    section = _readme()[_readme().index("## Rewards of your own"):]
    (copy / "my_run.yaml").write_text(section.split("```yaml\n")[1].split("```")[0], encoding="utf-8")
    env = user_env(SEMGRPO_DATA=str(real_data_root))
    code, output = _bash(_as_run_here(DEMO), copy, env, timeout=3600)
    assert code == 0, output[-4000:]
    assert_clean_launch(output)
    assert json.loads((copy / "runs/demo/summary.json").read_text())["total_steps"] == 300
    return copy, env, real_data_root


@pytest.mark.readme_commands
@pytest.mark.parametrize("command", list(RUN), ids=[f"readme-{i}" for i in range(len(RUN))])
def test_readme_command_runs_as_written_after_the_demo(after_demo, command):
    copy, env, data_root = after_demo
    code, output = _bash(_as_run_here(command), copy, env, timeout=1800)
    assert code == 0, f"{command}\n{output[-4000:]}"
    if "deepspeed" in command:
        assert_clean_launch(output)
    for expected in RUN[command]:
        path = Path(expected.replace("$DATA", str(data_root))) if expected.startswith("$DATA") else copy / expected
        assert path.is_file(), f"{command} left no {expected}\n{output[-3000:]}"
    run = re.search(r"output_dir=(\S+)", command)
    if run:  # a training example: it trained its 50 steps with its own reward in the sum
        summary = json.loads((copy / run.group(1) / "summary.json").read_text())
        assert summary["total_steps"] == 50, summary
        name = "remote" if "http://" in command else "lenmatch"
        rows = [json.loads(line) for line in (copy / run.group(1) / "metrics.jsonl").read_text().splitlines()]
        assert len(rows) == 50 and all(f"reward/{name}" in row for row in rows), rows[-1]
