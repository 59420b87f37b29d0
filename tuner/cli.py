"""`tuner` command line: subcommands are the modules of tuner/commands/ (each `add_parser(subparsers)` and
`run(args) -> int`), found with pkgutil so a new command is one new file.

Every subcommand takes `--storage URL` and `--debug`. Whatever goes wrong prints one line on stderr, `error: ...`
(naming the problem and the fix), and a meaningful exit code; `--debug` shows the traceback instead:

    0    done
    1    internal error (a bug: the line says so and asks for --debug)
    2    user error: bad flags, study files, presets, storage URLs, paths (TunerError, model.ConfigError,
         model.data.DataError, argparse errors, files that cannot be read or written)
    75   the database stayed unreachable past the outage limit (a TunerError's own exit_code; launch restarts it)
    130  interrupted (Ctrl-C); 143 for SIGTERM, 128 + N for signal N during a database outage
    141  the reader of stdout went away (`tuner pareto --json | head`): nothing more is printed

Importing this module and `tuner --help` import neither torch nor triton (commands import heavy modules in run()).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence
from typing import NoReturn

EXIT_INTERNAL_ERROR = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer killed by a closed pipe

# errno values that mean "this path cannot be used" (a user's fix) rather than a fault of the tool
_PATH_ERRNOS = {
    errno.EACCES,
    errno.EPERM,
    errno.ENOENT,
    errno.EISDIR,
    errno.ENOTDIR,
    errno.EROFS,
    errno.ENOSPC,
    errno.EEXIST,
    errno.ENAMETOOLONG,
    errno.ELOOP,
    errno.EDQUOT,
}


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (it prints the usage block first): `error: tuner run: ...; see --help`."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"error: {self.prog}: {message}; see `{self.prog} --help`\n")


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

    parser = _Parser(
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
            if sub.choices[name].description is None and module.__doc__:
                # `tuner CMD --help` says what CMD does: the module docstring's first paragraph, unless it set one
                sub.choices[name].description = " ".join(module.__doc__.split("\n\n")[0].split())
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


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _silence_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (tests capture into StringIO)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _corrupt_database(exc: BaseException) -> str | None:
    """SQLite's own word for a damaged file ("database disk image is malformed", "file is not a database"), found
    anywhere in the exception's chain (Optuna wraps it in StorageInternalError), else None. A damaged file is the
    user's to restore, not a bug: reported as a user error."""
    import sqlite3

    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        orig = getattr(e, "orig", None)
        for candidate in (e, orig):
            text = str(candidate)
            if isinstance(candidate, sqlite3.DatabaseError) and ("malformed" in text or "not a database" in text):
                return _one_line(text)
        e = e.__cause__ or e.__context__
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    try:
        code = int(args._run(args) or 0)
        sys.stdout.flush()  # inside the guard: a closed pipe surfaces here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except _user_errors() as exc:
        if debug:
            raise
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return int(getattr(exc, "exit_code", EXIT_USER_ERROR))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:  # a file that cannot be read or written, a port, a folder
        if debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        problem = (exc.strerror or str(exc)).lower()
        if exc.errno in _PATH_ERRNOS:
            print(f"error: {where}{problem}; check the path and its permissions", file=sys.stderr)
            return EXIT_USER_ERROR
        print(f"error: {where}{problem} ({type(exc).__name__}); rerun with --debug for details", file=sys.stderr)
        return EXIT_INTERNAL_ERROR
    except Exception as exc:
        if debug:
            raise
        damage = _corrupt_database(exc)
        if damage is not None:
            print(
                f"error: the SQLite storage is damaged ({damage}); restore the file from a backup or pass another "
                "--storage",
                file=sys.stderr,
            )
            return EXIT_USER_ERROR
        print(
            f"error: internal error ({type(exc).__name__}: {_one_line(exc)[:300]}); rerun with --debug for the "
            "traceback and report it",
            file=sys.stderr,
        )
        return EXIT_INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
