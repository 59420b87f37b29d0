"""Where `tuner run` resumes: the trials a study already holds, so a finished study says so in one line and the
progress bar starts at the trials already done (not 0)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Resume:
    """A study's state before a run: `done` counted trials (tuner.trial.budget.counted_trials), `waiting` queued
    ones (enqueued presets, re-queued interrupted trials), `exists` False when the study is not in storage yet."""

    exists: bool
    done: int
    waiting: int

    def finished(self, n_total: int) -> bool:
        """Nothing left to run: the budget is spent and nothing is queued."""
        return self.exists and self.done >= n_total and self.waiting == 0

    def finished_line(self, name: str, n_total: int) -> str:
        return (
            f"study {name} is finished: {self.done} of {n_total} trials done, nothing to run; "
            f"raise --n-trials to run more, or see `tuner pareto --study {name}`"
        )


def resume_state(storage: Any, name: str) -> Resume:
    """The Resume of study `name` in `storage` (nothing is created)."""
    import optuna

    from tuner.trial.budget import counted_trials

    try:
        storage.get_study_id_from_name(name)
    except KeyError:
        return Resume(False, 0, 0)
    study = optuna.load_study(study_name=name, storage=storage)
    waiting = sum(1 for t in study.get_trials(deepcopy=False) if t.state.name == "WAITING")
    return Resume(True, counted_trials(study), waiting)
