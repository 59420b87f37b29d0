"""`tuner report` on a SQLite study recorded through Optuna's own API: every figure is written, the HTML stays small
(plotly.js once, beside it, not inside), it carries the ceiling line, and the markdown rounds params to 4 significant
figures."""

from __future__ import annotations

import optuna
import yaml

from tests.tuner.tiny import BASE
from tuner.cli import main
from tuner.storage.constraints import set_trial_constraint
from tuner.study.loader import load_spec

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _record(study, spec, ppl, vram, reason="complete"):
    t = study.ask()
    params = spec.space.suggest(t)
    t.set_user_attr("config", spec.build_config(params).to_dict())
    t.set_user_attr("end_reason", reason)
    t.set_user_attr("estimate", {"components": {"logits_loss": vram / 2}, "allocator_gib": 0.1, "total_gib": vram})
    t.set_user_attr("curve", [{"tokens": 100, "val_ppl": 2 * ppl}, {"tokens": 200, "val_ppl": ppl}])
    set_trial_constraint(t, vram - spec.vram_ceiling_gib)
    study.tell(t, [ppl, vram])


def test_report_writes_small_html_and_every_figure(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/r.db"
    study_file = tmp_path / "s.yaml"
    study_file.write_text(yaml.safe_dump(BASE))
    spec = load_spec(study_file)
    assert main(["create", str(study_file), "--storage", url]) == 0
    study = optuna.load_study(study_name="unit", storage=url)
    for ppl, vram in [(50.0, 1.0), (40.0, 3.0), (35.0, 6.0), (30.0, 7.0)]:
        _record(study, spec, ppl, vram)
    _record(study, spec, 512.0, 9.5, reason="vram_ceiling")
    out = tmp_path / "rep"
    capsys.readouterr()
    assert main(["report", "--study", "unit", "--storage", url, "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"pareto_front.png", "pareto_front.html", "plotly.min.js", "memory_breakdown.png", "importances.png",
            "importances.json", "learning_curves.png", "summary.md", "pareto.json"} <= names  # fmt: skip
    html = (out / "pareto_front.html").read_text()
    assert (out / "pareto_front.html").stat().st_size < 500_000  # was 5 MB with plotly.js inlined
    assert 'src="plotly.min.js"' in html and "VRAM ceiling 8 GiB" in html
    md = (out / "summary.md").read_text()
    assert "memory_breakdown.png" in md and "importances.png" in md
    rows = [ln for ln in md.splitlines() if ln.startswith("| ") and "l1_regularization=" in ln]
    assert rows, md
    for row in rows:  # every float param to 4 significant figures
        value = row.split("ar_ssm_l1_regularization=")[1].split(",")[0].split(" ")[0]
        digits = value.split("e")[0].replace(".", "").replace("-", "").lstrip("0")
        assert len(digits) <= 4, row
