"""tuner.storage.trial_attrs: the end reasons, the per-attempt attrs a retry must not inherit, reference trials."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import optuna

from tuner.storage.trial_attrs import ATTEMPT_ATTRS, REFERENCE_ATTR, EndReason, is_reference
from tuner.trial.outcome import MEASURED_ATTRS

REPO = Path(__file__).resolve().parents[3]


def test_end_reasons_are_their_stored_strings():
    assert EndReason("worker_lost") is EndReason.WORKER_LOST
    assert EndReason.OOM == "oom" and f"{EndReason.TIMEOUT.value}" == "timeout"
    assert len({r.value for r in EndReason}) == len(EndReason)


def test_is_reference():
    assert is_reference(SimpleNamespace(user_attrs={REFERENCE_ATTR: "dense"}))
    assert not is_reference(SimpleNamespace(user_attrs={"preset": "8gb"}))


def _attrs_set_by(path: Path) -> set[str]:
    """Every literal attr key `path` passes to `t.set_user_attr("key", ...)` or `set_trial_attr(t, "key", ...)`."""
    keys = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
        at = {"set_user_attr": 0, "set_trial_attr": 1}.get(name or "")
        if at is not None and len(node.args) > at:
            key = node.args[at]
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                keys.add(key.value)
    return keys


def test_every_ending_attr_the_trial_records_is_per_attempt():
    """What says how one attempt ended must be in ATTEMPT_ATTRS, else a retry shows the dead attempt's ending."""
    recorded = _attrs_set_by(REPO / "tuner/trial/recording.py") | set(MEASURED_ATTRS)
    assert len(recorded) > 10
    ending = {"end_reason", "error_summary", "objective_note", "stop_summary", "ceiling_detected", "child_replaced"}
    assert ending <= recorded and ending <= ATTEMPT_ATTRS
    measured = {k for k in MEASURED_ATTRS if k.endswith("_gib")}
    assert measured - ATTEMPT_ATTRS == set(), "measured peaks of a dead attempt would stick to its retry"


def test_a_retry_carries_no_attempt_attr_into_its_own_run():
    """One list (tuner.storage.trial_attrs.ATTEMPT_ATTRS): the heartbeat callback leaves them out of the retry and
    the objective blanks any the retry still carries before it runs."""

    from tuner.trial.objective import Objective

    trial = optuna.create_study().ask()
    for key in ATTEMPT_ATTRS:
        trial.set_user_attr(key, "from the dead attempt")
    Objective._reset_inherited(trial)
    assert {k: trial.user_attrs[k] for k in ATTEMPT_ATTRS} == dict.fromkeys(ATTEMPT_ATTRS)
