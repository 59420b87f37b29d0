"""One module per CLI subcommand: `add_parser(subparsers)` and `run(args) -> int`. Heavy imports live inside run()."""

import argparse
import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse `type` for an integer >= low: a bad flag fails at parse time, before storage is touched
    (`--n-trials 0` used to exit 0 having done nothing, `--threads -4` to leave a FAIL trial in storage)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is out of range (give an integer >= {low})")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def float_above(low: float) -> Callable[[str], float]:
    """An argparse `type` for a finite number > low."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value <= low:
            raise argparse.ArgumentTypeError(f"{text} is out of range (give a number > {low:g})")
        return value

    parse.__name__ = f"number > {low:g}"
    return parse


# --stop-after's units: a bare number is seconds. Kept to s/m/h: a window on a lent machine is minutes or hours.
_DURATION_UNIT_S = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}
DURATION_FORMS = "seconds like 90 or 90.5, or a number with a unit s, m or h like 45s, 8m, 1.5h"


def duration_s(text: str) -> float:
    """An argparse `type` for a duration > 0, returned in seconds: plain seconds ("90", "90.5") or a number with a
    unit suffix s / m / h ("45s", "8m", "1.5h"). Empty, zero, negative, non-finite or an unknown unit is refused
    at parse time (argparse turns the message into one line naming the flag)."""
    t = text.strip().lower()
    unit = t[-1:] if t[-1:].isalpha() else ""
    number = t[: len(t) - len(unit)].strip()
    if unit not in _DURATION_UNIT_S or not number:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (give {DURATION_FORMS})")
    try:
        value = float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (give {DURATION_FORMS})") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range (give a duration > 0: {DURATION_FORMS})")
    return value * _DURATION_UNIT_S[unit]


duration_s.__name__ = "duration"


def add_stop_after_option(p: argparse.ArgumentParser, *, launch: bool = False) -> None:
    """--stop-after DURATION, shared by run, worker and launch: no new trial once it has passed; running trials
    train to their end and are recorded, and the study's n_trials is left for the next run."""
    start = "launch's start; each worker, and each restart, gets the time left" if launch else "this command's start"
    p.add_argument(
        "--stop-after",
        type=duration_s,
        default=None,
        metavar="DURATION",
        help=f"take no new trial after DURATION (90, 90.5, 45s, 8m, 1.5h; counted from {start}): running "
        "trials finish and are recorded, then exit 0; the study's remaining budget is left for the next run "
        "(SIGTERM instead interrupts the running trials)",
    )


def window_deadline(args: argparse.Namespace) -> float | None:
    """The time.monotonic() value after which no new trial is taken: this command's --stop-after from now (None
    without it). Taken once, when the command starts, so the window counts the command's own start-up."""
    import time

    return None if args.stop_after is None else time.monotonic() + float(args.stop_after)


def add_heartbeat_options(p: argparse.ArgumentParser) -> None:
    """--heartbeat-s / --grace-s, shared by every command that runs or starts workers (run, worker, launch)."""
    p.add_argument(
        "--heartbeat-s",
        type=int_at_least(1),
        default=None,
        help="seconds between a running trial's heartbeats (default 30)",
    )
    p.add_argument(
        "--grace-s",
        type=int_at_least(1),
        default=None,
        help="seconds without a heartbeat before a running trial is failed and retried (default 120; "
        "several heartbeats)",
    )


def open_worker_storage(url: str, args: Any, abort: Any = None) -> Any:
    """The storage a worker runs against, with this command's --heartbeat-s / --grace-s (only those given:
    open_storage's defaults otherwise). A database that cannot be reached yet is waited for, up to the outage limit
    (a worker started during an outage is not misconfigured); `abort` (a tuner.storage.resilient.StopSignal) ends
    that wait. Through a `tuner proxy` (grpc://) the proxy fails stale trials with its own grace period, so a
    worker's --grace-s is refused rather than silently ignored."""
    from tuner.errors import StorageError
    from tuner.storage.connect import open_storage
    from tuner.storage.resilient import OUTAGE_LIMIT_S
    from tuner.storage.urls import is_grpc_url

    if is_grpc_url(url) and args.grace_s is not None:
        raise StorageError(
            f"--grace-s does nothing on a worker of the storage proxy {url}: the proxy fails stale trials with "
            "its own grace period; give it to `tuner proxy --grace-s` instead"
        )
    heartbeat = {} if args.heartbeat_s is None else {"heartbeat_interval_s": int(args.heartbeat_s)}
    grace = {} if args.grace_s is None else {"grace_period_s": int(args.grace_s)}
    return open_storage(url, **heartbeat, **grace, wait_s=OUTAGE_LIMIT_S, abort=abort)


def add_trial_process_options(p: argparse.ArgumentParser) -> None:
    """--cache-dir / --threads, shared by the commands that run trials in this process tree (run, worker, train)."""
    p.add_argument("--cache-dir", default=None, help="tokenized-data cache (default: .phase1_cache in the cwd)")
    p.add_argument(
        "--threads",
        type=int_at_least(0),
        default=1,
        help="torch threads per trial on CPU (default 1: avoids oversubscribing shared cores; 0 = torch's "
        "default); ignored on a GPU",
    )


@contextlib.contextmanager
def stop_on_signals() -> Iterator[Any]:
    """A tuner.storage.resilient.StopSignal that SIGTERM / SIGINT set while the block runs (the worker installs its
    own handler, setting the same event, once it runs trials): a signal while the worker still waits for an
    unreachable database at its start ends that wait within seconds (exit 143 / 130). The previous handlers are
    restored afterwards."""
    import signal
    import threading

    from tuner.storage.resilient import StopSignal

    stop = StopSignal()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda signum, _frame: stop.set_by(signum))
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
