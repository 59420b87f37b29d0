"""`tuner create STUDY.yaml`: validates the whole file before touching storage, creates the study once (presets
enqueued), and says whether it created or found it."""

from __future__ import annotations

import optuna
import pytest

from tests.tuner.tiny import mutate, write
from tuner.cli import main


def test_create_then_create_again(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    study_file = write(tmp_path, mutate(enqueue_presets=["8gb"]))
    assert main(["create", str(study_file), "--storage", url]) == 0
    first = capsys.readouterr().out
    assert first.startswith(f"study unit created in {url}: objectives val_ppl, peak_vram_gib, 5 parameters,")
    assert first.rstrip().endswith("1 enqueued trial(s) waiting")
    assert main(["create", str(study_file), "--storage", url]) == 0
    assert capsys.readouterr().out.startswith("study unit exists in ")
    study = optuna.load_study(study_name="unit", storage=url)
    assert len(study.trials) == 1 and study.trials[0].user_attrs["preset"] == "8gb"  # enqueued once


def test_a_changed_definition_is_refused_naming_the_key(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    assert main(["create", str(write(tmp_path, mutate())), "--storage", url]) == 0
    capsys.readouterr()
    assert main(["create", str(write(tmp_path, mutate(vram_ceiling_gib=6), "other.yaml")), "--storage", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "vram_ceiling_gib: study 'unit' already exists" in err
    assert err.count("\n") == 1


def test_a_bad_file_never_touches_storage(tmp_path, capsys):
    db = tmp_path / "db.sqlite"
    assert main(["create", str(write(tmp_path, mutate(n_trials=0))), "--storage", f"sqlite:///{db}"]) == 2
    assert "n_trials" in capsys.readouterr().err
    assert not db.exists()


@pytest.mark.parametrize("argv", [["create"], ["create", "a.yaml", "b.yaml"]])
def test_exactly_one_study_file(argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
