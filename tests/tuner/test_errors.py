"""tuner.errors: the user-facing error tree. Every TunerError the service raises is printed by the CLI as one line
and exits 2; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from tuner import cli
from tuner.errors import PresetError, SpecError, StorageError, TunerError

REPO = Path(__file__).resolve().parents[2]


def _fake_command(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    """`tuner create` replaced by a command that raises `exc` (the parser and the error handling stay real)."""
    import tuner.commands.create as create

    def run(args: object) -> int:
        raise exc

    monkeypatch.setattr(create, "run", run)


@pytest.mark.parametrize("cls", [TunerError, SpecError, StorageError, PresetError])
def test_every_tuner_error_is_one_line_and_exit_2(monkeypatch, capsys, cls):
    _fake_command(monkeypatch, cls("study.yaml: name: missing;\n  add `name:`"))
    assert cli.main(["create", "study.yaml"]) == cli.EXIT_USER_ERROR == 2
    err = capsys.readouterr().err
    assert err == "error: study.yaml: name: missing; add `name:`\n"


def test_debug_keeps_the_traceback(monkeypatch):
    _fake_command(monkeypatch, StorageError("db unreachable; start it"))
    with pytest.raises(StorageError, match="db unreachable"):
        cli.main(["create", "study.yaml", "--debug"])


def test_other_exceptions_are_bugs_not_user_errors(monkeypatch):
    _fake_command(monkeypatch, KeyError("internal"))
    with pytest.raises(KeyError):
        cli.main(["create", "study.yaml"])


def _error_classes() -> list[tuple[str, str]]:
    """(module, class) of every class under tuner/ whose bases name one of the tree's classes."""
    tree = {"TunerError", "SpecError", "StorageError", "PresetError"}
    found = []
    for path in sorted((REPO / "tuner").rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(getattr(b, "id", None) in tree for b in node.bases):
                found.append((module, node.name))
    return found


def test_errors_defined_elsewhere_join_the_tree():
    """A module may define its own user error (CalibrationError, ChildStartError, ...), but it must derive from
    TunerError so that the CLI reports it as one line."""
    found = _error_classes()
    assert len(found) >= 4
    for module, name in found:
        assert issubclass(getattr(importlib.import_module(module), name), TunerError), f"{module}.{name}"
