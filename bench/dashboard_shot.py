"""Screenshot of `tuner dashboard` rendered in headless Chromium: bench/results/dashboard.png, with
bench/results/dashboard.json saying what the page showed and on which versions.

The study is testing/dashboard.py's: synthetic objective values (not measurements; the study's user attribute
`note` says so on the page) with a known Pareto front, two trials over the VRAM ceiling and a pruned one, written
the way the tuner writes them. The page is checked against what was written before anything is saved: a mismatch
saves nothing and exits 1. Needs Debian's `chromium` and `chromium-driver` (`apt-get install -y chromium
chromium-driver`); no GPU.

    python bench/dashboard_shot.py                     # SQLite in a temporary directory
    python bench/dashboard_shot.py --storage postgresql+psycopg2://postgres@127.0.0.1:5432/scratch
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import RESULTS, device_header, write_json  # noqa: E402 - after the sys.path line above
from testing.browser import Browser, missing_browser  # noqa: E402
from testing.dashboard import mismatches, read_dashboard, seed_study, serve_dashboard  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--storage", help="an empty storage URL to seed (default: SQLite in a temporary directory)")
    ap.add_argument("--out", type=Path, default=RESULTS / "dashboard.png", help="the PNG to write")
    ap.add_argument("--width", type=int, default=1400, help="window width, CSS pixels")
    ap.add_argument(
        "--height",
        type=int,
        default=2450,
        help="window height, CSS pixels (the whole study page, down to the user attributes)",
    )
    args = ap.parse_args()
    problem = missing_browser()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        url = args.storage or f"sqlite:///{Path(tmp) / 'dashboard.db'}"
        seeded = seed_study(url)
        shot = Path(tmp) / "dashboard.png"
        with serve_dashboard(url) as base, Browser(args.width, args.height) as browser:
            view = read_dashboard(
                browser, base, seeded.name, curve_trials=tuple(sorted(seeded.pruned)), screenshot=shot
            )
        wrong = mismatches(view, seeded)
        if wrong:
            print(
                "the dashboard did not show the study as written; nothing saved:", *wrong, sep="\n  ", file=sys.stderr
            )
            return 1
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(shot.read_bytes())
    import optuna_dashboard

    chromium = subprocess.run(["chromium", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    result = {
        **device_header(),
        "chromium": chromium,
        "optuna_dashboard": optuna_dashboard.__version__,
        "storage": "sqlite (temporary)" if not args.storage else args.storage.split("://", 1)[0],
        "screenshot": args.out.name,
        "window": [args.width, args.height],
        "values": "synthetic (testing/dashboard.py SEED), not measurements",
        "seeded": {
            "front": sorted(seeded.front),
            "dominated": sorted(seeded.dominated),
            "infeasible": sorted(seeded.infeasible),
            "pruned": sorted(seeded.pruned),
        },
        "shown": dataclasses.asdict(view),
    }
    out_json = args.out.with_suffix(".json")
    write_json(out_json, result)
    print(
        f"{args.out} and {out_json}: the page showed the front {sorted(seeded.front)}, infeasible "
        f"{sorted(seeded.infeasible)} and pruned {sorted(seeded.pruned)} as written"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
