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
