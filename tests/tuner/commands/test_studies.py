"""`tuner studies`: lists the storage's studies (text and --json); `--delete NAME` asks on a terminal (a real pty
here), refuses without one unless --yes, and names the studies there for an unknown name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import yaml

from tests.tuner.tiny import BASE
from tuner.cli import main

REPO = Path(__file__).resolve().parents[3]
optuna.logging.set_verbosity(optuna.logging.WARNING)


def _make(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/s.db"
    study_file = tmp_path / "s.yaml"
    study_file.write_text(yaml.safe_dump(BASE))
    assert main(["create", str(study_file), "--storage", url]) == 0
    plain = optuna.create_study(study_name="plain", storage=url)
    plain.tell(plain.ask(), 1.0)
    capsys.readouterr()
    return url


def test_list_text_and_json(tmp_path, capsys):
    url = _make(tmp_path, capsys)
    assert main(["studies", "--storage", url, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["n_trials"], r["tuner"]) for r in rows] == [("plain", 1, False), ("unit", 0, True)]
    assert rows[0]["by_state"] == {"complete": 1} and rows[1]["metrics"] == ["val_ppl", "peak_vram_gib"]
    assert main(["studies", "--storage", url]) == 0
    out = capsys.readouterr().out
    assert "2 studies in" in out and "plain: 1 trials (complete 1)" in out and "[not made by tuner]" in out


def test_delete_needs_a_terminal_or_yes_and_a_known_name(tmp_path, capsys, monkeypatch):
    url = _make(tmp_path, capsys)
    monkeypatch.setattr(sys, "stdin", open(os.devnull))
    assert main(["studies", "--storage", url, "--delete", "unit"]) == 2
    assert "add --yes" in capsys.readouterr().err
    assert main(["studies", "--storage", url, "--delete", "nosuch", "--yes"]) == 2
    assert "studies there: unit, plain" in capsys.readouterr().err
    assert main(["studies", "--storage", url, "--delete", "unit", "--yes"]) == 0
    assert "deleted study unit (0 trials)" in capsys.readouterr().out
    assert [s.study_name for s in optuna.get_all_study_summaries(url)] == ["plain"]


def _delete_on_a_pty(url, cwd, answer):
    primary, secondary = os.openpty()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "tuner.cli", "studies", "--storage", url, "--delete", "plain"],
                            stdin=secondary, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=env,
                            text=True)  # fmt: skip
    os.close(secondary)
    os.write(primary, answer)
    out, err = proc.communicate(timeout=60)
    os.close(primary)
    return proc.returncode, out, err


def test_delete_asks_on_a_terminal(tmp_path, capsys):
    url = _make(tmp_path, capsys)
    code, out, _ = _delete_on_a_pty(url, tmp_path, b"n\n")
    assert code == 1 and "not deleted" in out and "delete study plain and its 1 trials" in out
    assert "plain" in [s.study_name for s in optuna.get_all_study_summaries(url)]
    code, out, _ = _delete_on_a_pty(url, tmp_path, b"y\n")
    assert code == 0 and "deleted study plain (1 trials)" in out
    assert [s.study_name for s in optuna.get_all_study_summaries(url)] == ["unit"]
