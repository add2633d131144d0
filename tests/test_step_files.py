"""One GRPO step is followed in at most 8 files of semgrpo/ (CONTRIBUTING "Layout").

Measured, not declared: a real step (the demo's tiny policy on CPU, ZeRO-3, one process) runs under `sys.setprofile`
(tests/_call_trace.py), and every Python function of semgrpo/ that runs is sorted by how it was reached. A dynamic
trace rather than a static walk of the source: a static walk cannot see method calls on objects whose type it does
not know (`rollout.select`, `step.norm.share`, the reward components called through a dict), so it would undercount;
the trace sees exactly the code that ran. Its blind spot is code the chosen config does not run, so the step runs
with every optional part on: dynamic sampling, mu = 2 (old log-probs), beta > 0 (reference log-probs),
masked truncated completions, merged-adapter sampling, and prompts drawn from the real PromptStream.

What counts as "followed" is what a reader opens when following `grpo_step` through the functions it calls:
  - grpo_step, and every semgrpo function called by followed code (decorators and `with` plumbing looked through);
  - not `semgrpo/ops/` and `semgrpo/script/`: libraries with public APIs of their own (the kernels, usable from other
    trainers, each with its torch reference; the script checker), which the step calls as it calls torch. The entry
    functions are listed, and each must be public: the step never reaches into a library's privates;
  - not callbacks: semgrpo code that DeepSpeed or transformers call back (the LR schedule's lambda of modeling.py
    when DeepSpeed steps its scheduler) is not a call the step's code makes. They are listed.
"""
from __future__ import annotations

import json
import sys

import pytest
from _call_trace import follow
from _helpers import REPO, user_env

MAX_STEP_FILES = 8
# Every optional part of a step on (the demo already has beta 0.04 and merge_adapter_for_generation).
STEP_OVERRIDES = ["grpo.dynamic_sampling=true", "grpo.max_resample=1", "grpo.num_iterations=2",
                  "grpo.mask_truncated_completions=true", "tax_meter.every_steps=0", "run.report_to=[none]"]


def test_one_grpo_step_is_followed_in_at_most_8_files(tmp_path):
    import subprocess

    out = tmp_path / "step_files.json"
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "_step_files_probe.py"), str(out), *STEP_OVERRIDES],
                          cwd=REPO, capture_output=True, text=True, timeout=900, env=user_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    followed = report["followed"]
    shown = "\n".join(f"  {path}: {how}" for path, how in followed.items())
    print(f"followed ({len(followed)}):\n{shown}\nlibraries: {report['library']}\ncallbacks: {report['callback']}")
    # the trace saw the step's parts: it cannot pass by seeing nothing
    assert {"train.py", "batching.py", "rollout.py", "rewards/scoring.py", "fused_head.py", "dist.py"} <= set(followed)
    assert {"ops/policy_loss.py", "ops/advantage.py"} <= set(report["library"])
    assert len(followed) <= MAX_STEP_FILES, f"one GRPO step opens {len(followed)} files of semgrpo/:\n{shown}"
    private = {path: [f for f in functions if f.startswith("_") and not f.startswith("__")]
               for path, functions in report["library"].items()}
    assert not any(private.values()), f"the step calls a library's private functions: {private}"


# ------------------------------------------------------------------------------------------------------------------
# The tracer itself, on a planted package: what it must count, and what it must not.

PLANTED = {
    "pkg/__init__.py": "",
    "pkg/step.py": (
        "from pkg import helper\nfrom pkg.cb import schedule\nfrom pkg.lib import api\n\n"
        "def step(third_party):\n    helper.work()\n    with helper.context():\n        pass\n"
        "    api.public()\n    third_party(schedule)\n    return 7\n"),
    "pkg/helper.py": (
        "import contextlib\n\nimport torch\n\nfrom pkg import deep\n\n"
        "def work():\n    deep.inner()\n\n@contextlib.contextmanager\ndef context():\n    yield\n"),
    "pkg/deep.py": "import torch\n\n@torch.no_grad()\ndef inner():\n    return 1\n",
    "pkg/lib/__init__.py": "",
    "pkg/lib/api.py": "from pkg.lib import _inside\n\ndef public():\n    _inside.kernel()\n",
    "pkg/lib/_inside.py": "def kernel():\n    return 2\n",
    "pkg/cb.py": "from pkg import deep\n\ndef schedule():\n    deep.inner()\n",
    "pkg/unused.py": "def never():\n    return 3\n",
}


@pytest.fixture
def planted(tmp_path, monkeypatch):
    for rel, text in PLANTED.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "pkg" or m.startswith("pkg.")]:
        monkeypatch.delitem(sys.modules, name)
    import pkg.step

    return tmp_path / "pkg", pkg.step.step


def test_tracer_follows_calls_through_decorators_and_with_blocks(planted):
    package, step = planted
    result, report = follow(lambda: step(lambda fn: fn()), root=step, package=package, libraries=("lib/",))
    assert result == 7
    # helper.py by a call and a `with` block, deep.py through torch.no_grad's wrapper
    assert set(report["followed"]) == {"step.py", "helper.py", "deep.py"}
    assert report["followed"]["deep.py"] == "inner <- helper.py:work"
    # the library's entry, not its inside; the third party's call back into pkg/cb.py is a callback
    assert report["library"] == {"lib/api.py": ["public"]}
    assert report["callback"] == {"cb.py": "schedule", "deep.py": "inner <- cb.py:schedule"}


def test_tracer_counts_library_files_when_there_are_no_libraries(planted):
    package, step = planted
    _, report = follow(lambda: step(lambda fn: fn()), root=step, package=package)
    assert set(report["followed"]) == {"step.py", "helper.py", "deep.py", "lib/api.py", "lib/_inside.py"}
    assert report["library"] == {}


def test_tracer_follows_only_from_the_root(planted):
    """Code run before the root is entered, or by a caller outside the package, is not followed."""
    package, step = planted
    from pkg import helper

    def call():
        helper.work()  # before the step: not followed (deep.py is reached from helper.py, which is not followed)
        return step(lambda fn: None)  # the third party never calls back

    _, report = follow(call, root=step, package=package, libraries=("lib/",))
    assert set(report["followed"]) == {"step.py", "helper.py", "deep.py"}
    assert report["callback"] == {"helper.py": "work", "deep.py": "inner <- helper.py:work"}  # run outside the step
