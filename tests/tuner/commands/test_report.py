"""`tuner report --study NAME --out DIR`: the files it writes for a study with results (Pareto PNG and HTML,
importances, the front as JSON, a markdown summary), and for a study without any."""

from __future__ import annotations

import json

from tuner.cli import main


def test_report_of_a_study_with_results(results_study, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", "--study", "results", "--storage", results_study.url, "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote 6 files to {out}: ")
    names = {p.name for p in out.iterdir()}
    assert {"pareto_front.png", "pareto_front.html", "importances.json", "importances.png", "pareto.json"} <= names
    assert (out / "pareto_front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [r["number"] for r in json.loads((out / "pareto.json").read_text())] == [0, 1]
    importances = json.loads((out / "importances.json").read_text())
    assert set(importances) == {"val_ppl", "peak_vram_gib"}
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# Study `results`") and "VRAM ceiling: 8.0 GiB" in summary
    assert "| complete | 4 |" in summary and "| pruned | 1 |" in summary and "| vram_ceiling | 1 |" in summary
    assert "| 1 | 200 | 6 |" in summary  # the front's table
    assert "## Learning curves" not in summary  # no trial recorded a curve


def test_report_of_an_empty_study(tmp_path, capsys):
    from tests.tuner.tiny import mutate, write

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    assert main(["create", str(write(tmp_path, mutate())), "--storage", url]) == 0
    out = tmp_path / "report"
    assert main(["report", "--study", "unit", "--storage", url, "--out", str(out)]) == 0
    summary = (out / "summary.md").read_text()
    assert "No feasible completed trial yet." in summary and not (out / "pareto_front.html").exists()
    assert all("_unavailable" in v for v in json.loads((out / "importances.json").read_text()).values())
