"""Bench scripts run as `python bench/x.py` start with bench/ first on sys.path. No script may be named after a project
package (a bench/kernels.py once shadowed `kernels`); each script that imports the project puts the repo root first,
and bench/kernel_bench.py still finds its sibling `lns_bench` (bench/ stays on the path after the root). Checked in a
fresh interpreter laid out exactly as `python bench/x.py` lays it out (script folder first), loading the script's top
level without running its main()."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"

CHECK = """
import runpy, sys
sys.path.insert(0, {bench!r})              # what `python bench/x.py` does
runpy.run_path({script!r}, run_name="bench_script")  # the script's top level, not its main()
import kernels, kernels.scan, kernels.lns
assert kernels.__file__ == {package!r}, kernels.__file__
{extra}
print("ok")
"""


@pytest.mark.parametrize("script, extra", [
    ("kernel_bench.py", "import lns_bench; from lns_bench import bench_lns"),
    ("lns_bench.py", ""),
    ("learning_curve.py", "import tuner.analysis.curve"),
])
def test_bench_script_imports_the_packages_not_its_siblings(tmp_path, script, extra):
    code = CHECK.format(bench=str(BENCH), script=str(BENCH / script), package=str(REPO / "kernels" / "__init__.py"),
                        extra=extra)
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-2000:] + r.stderr[-2000:]


def test_no_bench_script_is_named_after_a_package():
    packages = {p.name for p in REPO.iterdir() if (p / "__init__.py").is_file()}
    assert {"kernels", "model", "tuner"} <= packages
    assert not [p.name for p in BENCH.glob("*.py") if p.stem in packages]
