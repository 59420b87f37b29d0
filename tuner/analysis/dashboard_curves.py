"""Learning curves as a plot optuna-dashboard shows on a study's page.

The curves are stored as each trial's intermediate values (tuner.trial.recording.report_curve; a pruned trial of a
multi-objective study keeps its curve in the `curve` attr only, which is drawn instead), but
optuna-dashboard 0.21 draws its intermediate-values plot for single-objective studies only (its bundle renders it
under `1 === study.directions.length`), and a tuner study has two or more objectives: there each trial's page only
lists its step/value pairs. So `tuner report` and `tuner dashboard` also save one plotly figure of every curve with
optuna_dashboard.save_plotly_graph_object (study system attrs `dashboard:plot_data:tuner_learning_curves:*`), which
the dashboard draws for any study. It is a snapshot, refreshed each time either command runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tuner.analysis.report import curve_points
from tuner.storage.trial_attrs import is_reference

GRAPH_ID = "tuner_learning_curves"


def _points(t: Any) -> tuple[list[int], list[float]]:
    """(training tokens, val_ppl) of a trial's curve: its intermediate values, else its `curve` attr."""
    if t.intermediate_values:
        steps = sorted(t.intermediate_values)
        return steps, [t.intermediate_values[s] for s in steps]
    pts = curve_points(t)
    return [int(p["tokens"]) for p in pts], [float(p["val_ppl"]) for p in pts]


def learning_curve_figure(trials: Sequence[Any]) -> Any | None:
    """A plotly Figure: val_ppl (the intermediate values, else the `curve` attr) against training tokens, log-log,
    one line per trial (complete: blue, pruned: red dotted, reference: orange); None when no trial has a curve."""
    import plotly.graph_objects as go

    curves = {t.number: _points(t) for t in trials}
    with_curves = [t for t in trials if curves[t.number][0]]
    if not with_curves:
        return None
    fig = go.Figure()
    for t in sorted(with_curves, key=lambda t: t.number):
        steps, values = curves[t.number]
        state = t.state.name.lower()
        ref = is_reference(t)
        colour = "orange" if ref else "crimson" if state == "pruned" else "royalblue"
        name = f"#{t.number} {'reference' if ref else state}"
        fig.add_trace(
            go.Scatter(
                x=steps,
                y=values,
                mode="lines+markers",
                name=name,
                line={"color": colour, "dash": "dot" if state == "pruned" else "solid", "width": 1},
                marker={"size": 4},
            )
        )
    n_pruned = sum(1 for t in with_curves if t.state.name == "PRUNED")
    fig.update_layout(
        template="none",  # no theme blob: the figure is stored in 2 KB system-attr chunks
        title=f"Learning curves: {len(with_curves)} trials ({n_pruned} pruned)",
        xaxis={"title": "training tokens", "type": "log"},
        yaxis={"title": "validation PPL", "type": "log"},
    )
    return fig


def publish_learning_curves(study: Any) -> bool:
    """Save (or replace) the study's learning-curve figure for optuna-dashboard; False when there is none."""
    from optuna_dashboard import save_plotly_graph_object

    fig = learning_curve_figure(study.get_trials(deepcopy=False))
    if fig is None:
        return False
    save_plotly_graph_object(study, fig, graph_object_id=GRAPH_ID)
    return True


def publish_all(storage: Any) -> list[str]:
    """publish_learning_curves for every study in `storage`; returns the names of the studies that got a figure."""
    import optuna

    done = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        if publish_learning_curves(optuna.load_study(study_name=summary.study_name, storage=storage)):
            done.append(summary.study_name)
    return done
