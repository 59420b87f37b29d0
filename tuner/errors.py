"""User-facing errors. The CLI prints each as one line (`error: <message>`) and exits 2."""


class TunerError(Exception):
    """Base of every error the CLI reports without a traceback. Messages name the problem and the fix."""


class SpecError(TunerError):
    """A study file that cannot be used: the message names the file, the key and the fix."""


class StorageError(TunerError):
    """Storage unreachable or unusable: the message names the (masked) URL, host and port."""


class PresetError(TunerError):
    """A preset file or name that cannot be loaded."""


class OutputError(TunerError):
    """An output path that must not be written: an existing file without --force, a folder, a device, no access."""
