"""Lines the progress display prints are never hard-wrapped when stdout is not a terminal (grep needs whole lines)."""

from __future__ import annotations

import io

from tests.tuner.tiny import BASE
from tuner.commands.worker import ProgressDisplay
from tuner.study.loader import spec_from_dict


def test_long_lines_are_not_wrapped_when_piped():
    display = ProgressDisplay(spec_from_dict(BASE, check_paths=False), 4, live=False)
    buf = io.StringIO()
    display.console.file = buf  # not a terminal: rich would wrap at 80 columns without soft_wrap
    line = "trial 12 complete: " + ", ".join(f"param_{i}=0.001234" for i in range(12))
    assert len(line) > 150
    display.console.print(line)
    assert buf.getvalue() == line + "\n"


def test_trial_line_names_the_end_reason_only_when_it_differs_from_the_state():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    display = ProgressDisplay(spec_from_dict(BASE, check_paths=False), 4, live=False)
    buf = io.StringIO()
    display.console.file = buf
    study = optuna.create_study(directions=["minimize", "minimize"])
    for values, reason in (([650.0, 0.03], "complete"), ([512.0, 9.5], "vram_ceiling")):
        study.add_trial(
            optuna.trial.create_trial(values=values, user_attrs={"end_reason": reason, "trial_wall_s": 1.0})
        )
        display.trial_end(study, study.trials[-1])
    first, second = buf.getvalue().splitlines()
    assert first.startswith("trial 0 complete: val_ppl 650") and "(complete)" not in first
    assert second.startswith("trial 1 complete (vram_ceiling): val_ppl 512")
