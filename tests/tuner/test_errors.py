"""tuner.errors: the user-facing error tree. Every TunerError (and the model's ConfigError and DataError) is printed
by the CLI as one line and exits 2; anything else is a bug: one line saying so and exit 1, its traceback with
--debug."""

from __future__ import annotations

import pytest

from model.config import ConfigError
from model.corpus import DataError
from tuner import cli
from tuner.errors import PresetError, SpecError, StorageError, TunerError


def _fake_command(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    """`tuner create` replaced by a command that raises `exc` (the parser and the error handling stay real)."""
    import tuner.commands.create as create

    def run(args: object) -> int:
        raise exc

    monkeypatch.setattr(create, "run", run)


# The tree, and the model's own user errors (a bad config, unusable training data) that the CLI treats alike.
@pytest.mark.parametrize("cls", [TunerError, SpecError, StorageError, PresetError, ConfigError, DataError])
def test_every_tuner_error_is_one_line_and_exit_2(monkeypatch, capsys, cls):
    _fake_command(monkeypatch, cls("study.yaml: name: missing;\n  add `name:`"))
    assert cli.main(["create", "study.yaml"]) == cli.EXIT_USER_ERROR == 2
    err = capsys.readouterr().err
    assert err == "error: study.yaml: name: missing; add `name:`\n"


def test_debug_keeps_the_traceback(monkeypatch):
    _fake_command(monkeypatch, StorageError("db unreachable; start it"))
    with pytest.raises(StorageError, match="db unreachable"):
        cli.main(["create", "study.yaml", "--debug"])


def test_other_exceptions_are_bugs_not_user_errors(monkeypatch, capsys):
    _fake_command(monkeypatch, KeyError("internal"))
    assert cli.main(["create", "study.yaml"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error (KeyError: 'internal')" in err and "--debug" in err
    with pytest.raises(KeyError):
        cli.main(["create", "study.yaml", "--debug"])
