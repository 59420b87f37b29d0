"""User-facing errors. The CLI prints each as one line (`error: <message>`) and exits with the error's `exit_code`
(2, a user error, unless the class says otherwise)."""

EXIT_USER_ERROR = 2
EXIT_STORAGE_UNAVAILABLE = 75  # EX_TEMPFAIL: try again later; `tuner launch` restarts a worker that exits with it


class TunerError(Exception):
    """Base of every error the CLI reports without a traceback. Messages name the problem and the fix."""

    exit_code = EXIT_USER_ERROR


class SpecError(TunerError):
    """A study file that cannot be used: the message names the file, the key and the fix."""


class StorageError(TunerError):
    """Storage unreachable or unusable: the message names the (masked) URL, host and port."""


class StorageUnavailable(StorageError):
    """The database stayed unreachable for longer than the outage limit: not the user's error, and not final (exit
    75; `tuner launch` starts the worker again)."""

    exit_code = EXIT_STORAGE_UNAVAILABLE


class StorageInterrupted(StorageError):
    """SIGTERM / SIGINT arrived while a storage call was waiting out an outage: the process exits now (128 + the
    signal number) instead of waiting for the database; its unfinished trial is retried once the heartbeat lapses."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + int(signum)


class WorkerEnvironmentError(TunerError):
    """The worker's own environment cannot run any trial (data folder missing, cache dir unusable, trial child cannot
    start): the worker stops, and the trial that met it is not counted against the study's budget."""


class PresetError(TunerError):
    """A preset file or name that cannot be loaded."""


class OutputError(TunerError):
    """An output path that must not be written: an existing file without --force, a folder, a device, no access."""
