"""`tuner pareto --study NAME [--json]`: the feasible Pareto front of a study with results; over-ceiling and
dominated trials are not on it."""

from __future__ import annotations

import json

from tuner.cli import main


def test_json_lists_the_feasible_front(results_study, capsys):
    assert main(["pareto", "--study", "results", "--storage", results_study.url, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["number"] for r in rows] == [0, 1]  # 2 is dominated, 3 over the ceiling, 4 pruned
    assert rows[1]["values"] == {"val_ppl": 200.0, "peak_vram_gib": 6.0}
    assert rows[1]["constraint_gib"] == -2.0 and rows[1]["params"]["ar_ssm_max_rank"] == 16
    assert all(r.get("reference") is None for r in rows)


def test_table(results_study, capsys):
    assert main(["pareto", "--study", "results", "--storage", results_study.url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["trial", "val_ppl", "peak_vram_gib"]
    assert [line.split()[0] for line in lines[1:]] == ["0", "1"]
    assert "-6.000" in lines[1] and "ar_ssm_max_rank=8" in lines[1]


def test_an_empty_study_says_so(tmp_path, capsys):
    from tests.tuner.tiny import mutate, write

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    assert main(["create", str(write(tmp_path, mutate())), "--storage", url]) == 0
    capsys.readouterr()
    assert main(["pareto", "--study", "unit", "--storage", url]) == 0
    assert capsys.readouterr().out == "study unit: no feasible completed trial yet\n"


def test_an_unknown_study_is_one_line_naming_the_studies_there(results_study, capsys):
    assert main(["pareto", "--study", "nope", "--storage", results_study.url]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "study 'nope' not found" in err and "studies there: results" in err
