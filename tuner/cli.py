"""`tuner` command line: subcommands are the modules of tuner/commands/ (each `add_parser(subparsers)` and
`run(args) -> int`), found with pkgutil so a new command is one new file.

Every subcommand takes `--storage URL` and `--debug`. User errors (TunerError, model.ConfigError,
model.data.DataError) print one line, `error: ...`, and exit 2 (or the error's own `exit_code`: 75 for a database
that stayed unreachable, 128 + N for signal N during an outage); `--debug` shows the traceback instead.
Importing this module and `tuner --help` import neither torch nor triton (commands import heavy modules in run()).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

EXIT_USER_ERROR = 2


def _add_common(p: argparse.ArgumentParser) -> None:
    """--storage and --debug on a subcommand (unless its module already defined them)."""
    if "--storage" not in p._option_string_actions:
        p.add_argument(
            "--storage",
            metavar="URL",
            default=None,
            help="study storage URL (default: $TUNER_STORAGE, else sqlite:///tuner.db in this folder)",
        )
    if "--debug" not in p._option_string_actions:
        p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")


def build_parser() -> argparse.ArgumentParser:
    import tuner.commands as commands_pkg

    parser = argparse.ArgumentParser(
        prog="tuner",
        description="Search Phase 1 model settings under a VRAM ceiling (Optuna studies, GPU workers, presets). "
        "Memory is in GiB (2^30 bytes).",
    )
    from tuner import __version__

    parser.add_argument("--version", action="version", version=f"tuner {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands_pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"tuner.commands.{info.name}")
        if not (hasattr(module, "add_parser") and hasattr(module, "run")):
            continue
        before = set(sub.choices)
        module.add_parser(sub)  # the contract: add_parser(subparsers)
        for name in set(sub.choices) - before:
            _add_common(sub.choices[name])
            sub.choices[name].set_defaults(_run=module.run)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    from model.config import ConfigError
    from tuner.errors import TunerError

    errors: list[type[BaseException]] = [TunerError, ConfigError]
    try:
        from model.corpus import DataError
    except ImportError:  # model.data missing would surface in the command that needs it, with its own traceback
        pass
    else:
        errors.append(DataError)
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except _user_errors() as exc:
        if getattr(args, "debug", False):
            raise
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return int(getattr(exc, "exit_code", EXIT_USER_ERROR))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
