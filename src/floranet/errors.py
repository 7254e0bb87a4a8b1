"""The floranet exception family.

Every error a user can cause derives from :class:`FloranetError`, so callers
(the CLI above all) can catch one type and print a clean one-line message.
Messages follow Keras's template: name the argument and echo the value.
Where callers must tell errors of one type apart (the server maps a bad image
to an HTTP status), the error carries its ``kind`` as a field; nothing parses
a message.
"""

from __future__ import annotations

import errno
from pathlib import Path


class FloranetError(Exception):
    """Base class of every error floranet raises for bad input or environment."""


class ConfigError(FloranetError, ValueError):
    """An argument or configuration value is invalid."""


class DatasetError(FloranetError):
    """A dataset folder, image file or split manifest cannot be used."""


class DownloadError(FloranetError):
    """A file could not be downloaded or failed its checksum."""


class WeightsError(FloranetError):
    """Model weights cannot be found, downloaded or loaded."""


class ModelError(FloranetError):
    """A model or run directory cannot be built, loaded or used."""


class MissingDependencyError(FloranetError, ImportError):
    """An optional package is not installed; the message names the extra to install.

    Attributes:
        package: The pip distribution that is missing, e.g. ``"onnxruntime"``.
        extra: The floranet extra that brings it, e.g. ``"export"``.
    """

    def __init__(self, message: str, *, package: str, extra: str) -> None:
        super().__init__(message)
        self.package = package
        self.extra = extra


class OutputError(FloranetError):
    """A file or folder floranet must write cannot be written (permissions, read-only or full disk, ...).

    Attributes:
        path: What could not be written.
        reason: The operating system's reason, e.g. ``"Read-only file system"``.
        errno: Its error number (``errno.EROFS``, ...), or None.
    """

    def __init__(self, path: object, error: OSError) -> None:
        self.path = str(path)
        self.reason = error.strerror or str(error)
        self.errno = error.errno
        if error.errno in (errno.EEXIST, errno.ENOTDIR):  # "File exists" of a folder to make: say which file
            blocker = next((p for p in (Path(self.path), *Path(self.path).parents) if p.exists()), None)
            if blocker is not None and not blocker.is_dir():
                self.reason += f" ({blocker} is a file, not a folder)"
        super().__init__(f"Cannot write {self.path}: {self.reason}.")


class RunLockedError(FloranetError):
    """Another process is writing the same run directory (or file); its pid is given when known.

    Attributes:
        pid: The holder's process id, or None.
    """

    def __init__(self, what: str, pid: int | None, *, hint: str = "wait for it to finish, or write elsewhere") -> None:
        self.pid = pid
        holder = f"process {pid}" if pid is not None else "another process"
        super().__init__(f"{what} is in use by {holder}; {hint}.")
