"""The learning-curve figure saved for optuna-dashboard: one line per trial with intermediate values, read back
through optuna-dashboard's own loader from the study's system attrs (what its study page draws)."""

from __future__ import annotations

import json

import optuna
from optuna_dashboard._custom_plot_data import get_plotly_graph_objects

from tuner.analysis.dashboard_curves import GRAPH_ID, learning_curve_figure, publish_all, publish_learning_curves
from tuner.storage.connect import open_storage
from tuner.storage.trial_attrs import set_trial_attr

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _study(url):
    s = optuna.create_study(storage=url, study_name="mo", directions=["minimize", "minimize"])
    for i, state in enumerate(["complete", "pruned"]):
        t = s.ask()
        for step, ppl in [(128, 900.0 + i), (512, 700.0 + i), (1024, 650.0 + i)]:
            s._storage.set_trial_intermediate_value(t._trial_id, step, ppl)
        if state == "complete":
            s.tell(t, [650.0, 0.03])
        else:
            s.tell(t, state=optuna.trial.TrialState.PRUNED)
    s.tell(s.ask(), [700.0, 0.04])  # no curve: not drawn
    return s


def test_figure_has_one_line_per_curve(tmp_path):
    fig = learning_curve_figure(_study(f"sqlite:///{tmp_path}/d.db").get_trials())
    assert [tr.name for tr in fig.data] == ["#0 complete", "#1 pruned"]
    assert list(fig.data[0].x) == [128, 512, 1024] and list(fig.data[1].y) == [901.0, 701.0, 651.0]
    assert fig.data[1].line.dash == "dot" and "2 trials (1 pruned)" in fig.layout.title.text
    assert learning_curve_figure([]) is None


def test_a_pruned_trial_with_its_curve_in_the_attr_only_is_drawn(tmp_path):
    """What tuner.trial.recording stores for a pruned trial of a multi-objective study: no intermediate values (they
    broke Optuna 5.0's TPE), the curve as the `curve` attr; the figure still draws it (non-finite points left out)."""
    s = _study(f"sqlite:///{tmp_path}/d.db")
    t = s.ask()
    curve = [
        {"tokens": 128, "val_ppl": 950.0},
        {"tokens": 512, "val_ppl": float("nan")},
        {"tokens": 1024, "val_ppl": 800.0},
    ]
    set_trial_attr(t, "curve", curve)
    s.tell(t, state=optuna.trial.TrialState.PRUNED)
    fig = learning_curve_figure(s.get_trials())
    assert [tr.name for tr in fig.data] == ["#0 complete", "#1 pruned", "#3 pruned"]
    assert list(fig.data[2].x) == [128, 1024] and list(fig.data[2].y) == [950.0, 800.0]
    assert fig.data[2].line.dash == "dot" and "3 trials (2 pruned)" in fig.layout.title.text


def test_published_figure_is_what_the_dashboard_loads(tmp_path):
    url = f"sqlite:///{tmp_path}/d.db"
    study = _study(url)
    assert publish_learning_curves(study) is True
    storage = open_storage(url)
    attrs = storage.get_study_system_attrs(storage.get_study_id_from_name("mo"))
    graphs = get_plotly_graph_objects(attrs)
    assert list(graphs) == [GRAPH_ID]
    data = json.loads(graphs[GRAPH_ID])["data"]
    assert [d["name"] for d in data] == ["#0 complete", "#1 pruned"]
    assert publish_learning_curves(study) is True  # replaced, not added
    assert list(get_plotly_graph_objects(storage.get_study_system_attrs(storage.get_study_id_from_name("mo")))) == [
        GRAPH_ID
    ]
    optuna.create_study(storage=url, study_name="empty")
    assert publish_all(storage) == ["mo"]
