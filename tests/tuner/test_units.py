"""tuner.units: GiB is 2^30 bytes, defined once (model/units.py) and re-exported, never redefined."""

from __future__ import annotations

import re
from pathlib import Path

import model.units
import tuner.units

REPO = Path(__file__).resolve().parents[2]


def test_gib_and_mib_are_binary_units_and_the_same_objects_as_the_models():
    assert tuner.units.GIB == 2**30 == 1024 * tuner.units.MIB
    assert tuner.units.GIB is model.units.GIB and tuner.units.MIB is model.units.MIB


def test_no_other_module_defines_its_own_gib():
    """The issue this guards against: GIB once defined 7 times. Any `GIB = ...` or a bare 2**30 / 1024**3 literal
    outside model/units.py is a second copy."""
    pattern = re.compile(r"^\s*_?GIB\s*[:=]|2\s*\*\*\s*30|1024\s*\*\*\s*3|1073741824")
    offenders = []
    for package in ("tuner", "model", "kernels"):
        for path in sorted((REPO / package).rglob("*.py")):
            if path == REPO / "model" / "units.py":
                continue
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line.split("#", 1)[0]):
                    offenders.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
    assert offenders == [], "import GIB from tuner.units / model.units instead:\n" + "\n".join(offenders)
