"""Which tests are `slow`, decided by conftest.py, so that nobody marks files by hand.

A test is slow when it launches processes (it, a fixture it uses or a helper either calls, through
`run_cli`, the `launches` fixture, `subprocess` or `multiprocessing`), or when it took more than
`SLOW_SECONDS` in the last recorded run of the whole suite (tests/durations.json, setup + call + teardown).
`python -m pytest tests --record-durations` rewrites that file; do it when tests were added or got slower.
`python -m pytest -m "not slow" tests` is then the edit-test loop.
"""
from __future__ import annotations

import inspect
import json
import types
from pathlib import Path

SLOW_SECONDS = 5.0
DURATIONS = Path(__file__).with_name("durations.json")
TESTS_DIR = Path(__file__).resolve().parent

# Names whose use means a new process: our helpers, and the standard library's ways of starting one.
_LAUNCHING_NAMES = frozenset({"run_cli", "launches", "Popen", "subprocess", "multiprocessing", "check_output",
                              "spawn"})


def measured_slow() -> set[str]:
    """Node ids recorded over SLOW_SECONDS (an empty set before the first recording)."""
    if not DURATIONS.is_file():
        return set()
    return {node for node, seconds in json.loads(DURATIONS.read_text()).items() if seconds > SLOW_SECONDS}


def write_durations(seconds_by_node: dict[str, float]) -> None:
    """Keep the tests over SLOW_SECONDS, sorted, rounded: a small file whose diffs read well."""
    slow = {node: round(s, 1) for node, s in sorted(seconds_by_node.items()) if s > SLOW_SECONDS}
    DURATIONS.write_text(json.dumps(slow, indent=1, ensure_ascii=False) + "\n")


def launches_processes(item) -> bool:
    """True when the test function, one of its fixtures, or a tests/ function either refers to starts a
    process (by the names it uses: a static reading, so a test pays nothing to be classified)."""
    if "launches" in item.fixturenames:
        return True
    roots = [item.function]
    for defs in getattr(item, "_fixtureinfo", None).name2fixturedefs.values():
        roots += [d.func for d in defs]
    seen: set[int] = set()
    return any(_uses_launcher(fn, seen) for fn in roots)


def _uses_launcher(fn, seen: set[int]) -> bool:
    fn = inspect.unwrap(fn)
    code = getattr(fn, "__code__", None)
    if code is None or id(code) in seen or not _in_tests(code.co_filename):
        return False
    seen.add(id(code))
    names = _names(code)
    if names & _LAUNCHING_NAMES:
        return True
    scope = getattr(fn, "__globals__", {})
    return any(_uses_launcher(scope[name], seen) for name in names if isinstance(scope.get(name), types.FunctionType))


def _names(code: types.CodeType) -> set[str]:
    """Global and attribute names a code object and its nested functions and lambdas refer to."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


def _in_tests(filename: str) -> bool:
    try:
        return Path(filename).resolve().is_relative_to(TESTS_DIR)
    except OSError:
        return False
