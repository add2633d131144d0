"""The shape of the package (CONTRIBUTING "Layout"): every file of semgrpo/ at most 400 lines; no import cycle among
semgrpo's modules, function-level imports counted; the config package loads neither torch nor Triton.

The import graph is read from the source with `ast`, not from an interpreter: every `import` / `from ... import` anywhere in
a file (top level, inside functions, under `if`) is an edge, because a function-level import that closes a cycle is
still a cycle: it only moves the failure from import time to the first call. Edges:
  - `import semgrpo.a.b` and `from semgrpo.a.b import x` -> semgrpo.a.b (x being a function or class of it);
  - `from semgrpo.a import b` where semgrpo/a/b.py exists -> semgrpo.a.b (the module named, not the package);
  - relative imports resolved against the importing module's package.
A submodule's import of its own package's `__init__` is an edge like any other, so `config/checks.py` doing
`from semgrpo.config import X` while `config/__init__.py` imports `checks` is a cycle. The implicit import of a
parent package that Python performs before a submodule (semgrpo.a before semgrpo.a.b) is not an edge: it runs the
package's `__init__` first, which is exactly what makes `__init__` importing its submodules safe.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def module_names(package_dir: Path, package: str) -> dict[str, Path]:
    """Dotted name -> file of every module of the package (an `__init__.py` names its package)."""
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join([package, *parts])] = path
    return names


def import_graph(package_dir: Path, package: str) -> dict[str, dict[str, int]]:
    """module -> {imported module of the same package: line of the first such import}."""
    modules = module_names(package_dir, package)
    graph: dict[str, dict[str, int]] = {name: {} for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the importing module's package, `level - 1` packages up
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                # `from pkg import sub` names the submodule when there is one, else an attribute of pkg
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                while target and target not in modules:  # `import semgrpo.a.b.c` where c is an attribute
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].setdefault(target, node.lineno)
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (iterative depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


MAX_LINES = 400  # CONTRIBUTING: a file past this holds two jobs


def test_every_file_of_semgrpo_is_at_most_400_lines():
    files = sorted((ROOT / "semgrpo").rglob("*.py"))
    assert len(files) > 50  # the package, not an empty folder
    lines = {str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines()) for p in files}
    over = {path: n for path, n in lines.items() if n > MAX_LINES}
    assert not over, f"files over {MAX_LINES} lines (split them by job): {over}"


def test_semgrpo_has_no_import_cycle():
    graph = import_graph(ROOT / "semgrpo", "semgrpo")
    assert len(graph) > 50 and sum(map(len, graph.values())) > 100  # the walk found the package's imports
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + describe(cycle, graph)


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")


@pytest.mark.parametrize("files, expected", [
    # a function-level import closing the loop
    ({"pkg/__init__.py": "", "pkg/a.py": "from pkg.b import f\n",
      "pkg/b.py": "def f():\n    from pkg import a\n"}, ["pkg.a", "pkg.b", "pkg.a"]),
    # a submodule importing a name from its package's __init__, which imports the submodule
    ({"pkg/__init__.py": "from pkg.sub.c import X\n", "pkg/sub/__init__.py": "",
      "pkg/sub/c.py": "from .. import Y\nX = 1\n"}, ["pkg", "pkg.sub.c", "pkg"]),
    # three modules, plain `import` statements under an `if`
    ({"pkg/__init__.py": "", "pkg/a.py": "import pkg.b\n", "pkg/b.py": "if True:\n    import pkg.c.d\n",
      "pkg/c/__init__.py": "", "pkg/c/d.py": "import pkg.a as a\n"}, ["pkg.a", "pkg.b", "pkg.c.d", "pkg.a"]),
])
def test_planted_cycles_are_found(tmp_path, files, expected):
    _write(tmp_path, files)
    graph = import_graph(tmp_path / "pkg", "pkg")
    assert find_cycle(graph) == expected


def test_an_acyclic_package_passes(tmp_path):
    """The usual package shape: __init__ re-exports its submodules, which import each other one way only."""
    _write(tmp_path, {"pkg/__init__.py": "from pkg.a import f\nfrom pkg.b import g\n",
                      "pkg/a.py": "import os\nfrom pkg.b import g\ndef f():\n    from pkg import b\n",
                      "pkg/b.py": "from . import c\ndef g(): ...\n", "pkg/c.py": "import sys\n"})
    graph = import_graph(tmp_path / "pkg", "pkg")
    assert graph["pkg.a"] == {"pkg.b": 2} and graph["pkg.b"] == {"pkg.c": 1}
    assert find_cycle(graph) is None


def test_config_imports_neither_torch_nor_triton():
    """Validating a config (what the entry points do before anything loads) stays light: a fresh interpreter that
    imports semgrpo.config and checks a config has no torch or triton in sys.modules."""
    import subprocess

    code = ("import sys; from semgrpo.config import load_config; load_config(None, ['grpo.loss_type=cispo', "
            "'grpo.eps_high=5']); print(sorted(m for m in ('torch', 'triton', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = eval(out.stdout.strip())
    assert "torch" not in loaded and "triton" not in loaded, out.stdout
