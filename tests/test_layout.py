"""The house rules of tuner/ (CONTRIBUTING.md), checked on the source: modules stay small, imports point down
(tuner -> model -> kernels) without cycles, and Optuna's private names are read in one module only."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 400
COMPAT = "tuner/storage/_optuna_compat.py"


def _modules(package: str) -> dict[str, Path]:
    out = {}
    for path in sorted((REPO / package).rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = path
    return out


def _imports(path: Path, known: set[str]) -> set[str]:
    """Modules of `known` that `path` imports, at module level or inside functions (both can form a cycle)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


@pytest.mark.parametrize("package", ["tuner"])
def test_no_module_over_the_line_limit(package):
    long = {
        str(p.relative_to(REPO)): n
        for p in _modules(package).values()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}, f"split these modules (limit {MAX_LINES} lines): {long}"


def test_tuner_has_no_import_cycle():
    mods = _modules("tuner")
    graph = {m: _imports(p, set(mods)) - {m} for m, p in mods.items()}
    # A package's __init__ importing its own submodule is not a cycle of the design: ignore parent -> child edges.
    graph = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycle = stack[stack.index(d) :] + [d]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


@pytest.mark.parametrize("package", ["model", "kernels"])
def test_lower_layers_never_import_the_tuner(package):
    offenders = [str(p.relative_to(REPO)) for p in _modules(package).values() if _imports(p, {"tuner"})]
    assert offenders == []


def test_optuna_private_names_only_behind_the_fence():
    private = re.compile(
        r"optuna\._|optuna\.\w+\._|\._(study_id|trial_id|storage|backend)\b|(?<!\w)_(rdb|hypervolume)\b"
    )
    offenders = []
    for path in _modules("tuner").values():
        rel = str(path.relative_to(REPO))
        if rel == COMPAT:
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if private.search(code) and not code.lstrip().startswith(('"', "'")):
                offenders.append(f"{rel}:{i}: {line.strip()}")
    assert offenders == [], "move these into " + COMPAT + ":\n" + "\n".join(offenders)
