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
