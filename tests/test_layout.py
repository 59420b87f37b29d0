"""The house rules of tuner/ (CONTRIBUTING.md), checked on the source: modules stay small, imports point down
(tuner -> model -> kernels) without cycles, Optuna's private names are read in one module only, and every module
has its test module (tests mirror the packages)."""

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


# --- tests mirror the packages: tuner/a/b.py is tested in tests/tuner/a/test_b.py ------------------------------------

# Modules tested, by design, in another module's test file (named here; the file must exist). A kernel is tested with
# its autograd wrapper and plain-torch reference (the kernel + autograd + reference pattern), and the trainer's
# parts through the trainer and the model.
TESTED_ELSEWHERE = {
    "kernels/scan_triton.py": "tests/kernels/test_scan.py",  # the kernels, against the plain-torch scan
    "kernels/scan_launch.py": "tests/kernels/test_scan.py",  # tiles and grids, through every scan shape tested
    "kernels/scan_shapes.py": "tests/model/test_shapes.py",  # the scan's sizes, beside the model's widths
    "kernels/lns_triton.py": "tests/kernels/test_lns.py",  # the LNS matmul kernel, against its reference
    "kernels/lns_launch.py": "tests/kernels/test_lns.py",  # pipeline/warp choice, through the same matmuls
    "model/dense_config.py": "tests/model/test_dense.py",  # the dense baseline's config, with its model
    "model/errors.py": "tests/model/test_stability.py",  # NumericalInstabilityError, where the monitor raises it
    "model/units.py": "tests/tuner/test_units.py",  # GIB/MIB, with the check that nothing else defines them
    "model/evaluate.py": "tests/model/test_train.py",  # the validation pass, through training runs
    "model/train_records.py": "tests/model/test_train.py",  # StepInfo / EvalInfo / TrainResult of real runs
}
# Test modules being written on other branches today (the modules' owners add them). An entry whose file exists
# fails test_exemption_lists_are_current: delete it when its test lands.
PENDING = {
    "tuner/cli.py",  # today in tests/tuner/commands/test_cli.py
    "tuner/study/loader.py",  # today in tests/tuner/study/test_spec.py
    "tuner/commands/status.py",
    "tuner/commands/train_baseline.py",
}


def _test_path(module: Path) -> Path:
    """tests/<package path>/test_<name>.py; a private module's test drops the underscore (test_optuna_compat.py)."""
    rel = module.relative_to(REPO)
    return REPO / "tests" / rel.parent / f"test_{rel.stem.lstrip('_')}.py"


def _shipped_modules() -> list[Path]:
    # A package's __init__ holds re-exports and the helpers its modules share; those modules' tests exercise them.
    return [p for pkg in ("tuner", "model", "kernels") for p in _modules(pkg).values() if p.name != "__init__.py"]


def test_every_module_has_its_test_module():
    missing = [
        f"{rel} -> {_test_path(p).relative_to(REPO)}"
        for p in _shipped_modules()
        if not _test_path(p).is_file()
        and (rel := str(p.relative_to(REPO))) not in TESTED_ELSEWHERE | dict.fromkeys(PENDING)
    ]
    assert missing == [], "add a test module for each (tests mirror the packages):\n" + "\n".join(missing)


def test_exemption_lists_are_current():
    modules = {str(p.relative_to(REPO)): p for p in _shipped_modules()}
    stale = [m for m in [*TESTED_ELSEWHERE, *PENDING] if m not in modules]
    landed = [m for m in [*TESTED_ELSEWHERE, *PENDING] if m in modules and _test_path(modules[m]).is_file()]
    nowhere = [f"{m} -> {t}" for m, t in TESTED_ELSEWHERE.items() if not (REPO / t).is_file()]
    assert stale == [], f"these modules are gone; drop them from the lists: {stale}"
    assert landed == [], f"these now have their own test module; drop them from the lists: {landed}"
    assert nowhere == [], f"the test file named for these does not exist: {nowhere}"
