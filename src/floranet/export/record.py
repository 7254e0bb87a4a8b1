"""A run's ``exports.json``: one entry per export folder, keyed by its path (relative to the run inside it),
read, merged and written atomically under a lock on the run folder."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from floranet.errors import OutputError
from floranet.export.common import EXPORTS_FILE, log
from floranet.utils.files import read_json, write_json


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """An exclusive advisory lock on a folder (POSIX), for read-merge-write of exports.json."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock; the write itself stays atomic
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as e:  # a file system without locks (NFS without lockd): was a traceback after a whole export
        os.close(fd)
        raise OutputError(directory / EXPORTS_FILE, e) from None
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def record_export(run: Path, folder: Path, entry: dict[str, Any]) -> None:
    """Read-merge-write of ``RUN_DIR/exports.json`` (atomic, under a lock): ``entry`` as the export in ``folder``.

    Raises:
        OutputError: The run cannot be locked or written.
    """
    target = run / EXPORTS_FILE
    with locked(run):
        entries: dict[str, Any] = {}
        if target.exists():
            try:
                entries = _read(target)
            except (OSError, ValueError) as e:
                log.warning("Replacing unreadable %s: %s", target, e)
        entry = {**entry, "path": _key(run, folder)}
        # The folder now holds this export only: its entry replaces the one of the export it replaced (fp32, then
        # fp16 into the same --out), and an export of the same name in another folder keeps its own.
        entries[entry["path"]] = entry
        write_json(target, entries)


def forget_export(run: Path, folder: Path) -> bool:
    """Drops ``folder``'s entry from ``RUN_DIR/exports.json`` (atomic, under a lock): an export of another run has
    replaced it there. Returns whether the file listed it.

    Raises:
        OutputError: The run cannot be locked.
        OSError: Its exports.json cannot be written.
    """
    target = run / EXPORTS_FILE
    if not target.is_file():
        return False
    with locked(run):
        try:
            entries = _read(target)
        except (OSError, ValueError):  # unreadable: the next export of that run replaces it, and says so
            return False
        if entries.pop(_key(run, folder), None) is None:
            return False
        write_json(target, entries)
    return True


def _key(run: Path, folder: Path) -> str:
    """An export folder's key in exports.json: its path relative to the run inside it, else its absolute path."""
    try:
        return str(folder.resolve().relative_to(run.resolve()))
    except ValueError:
        return str(folder.resolve())


def _read(target: Path) -> dict[str, Any]:
    """``exports.json``'s entries. A folder name's byte that is not UTF-8 is a \\udcXX escape (utils.files.json_text);
    an older floranet wrote it raw, which surrogateescape reads as the same key (strict UTF-8 refused the file, and
    the next export dropped every entry with it)."""
    return _by_folder(read_json(target))


def _by_folder(loaded: Any) -> dict[str, Any]:
    """``exports.json``'s entries keyed by their folder; an older file's (keyed by the export's name, which a second
    folder of one name replaced) is read too."""
    if not isinstance(loaded, dict):
        return {}
    entries: dict[str, Any] = {}
    for key, value in loaded.items():
        if isinstance(value, dict) and "name" not in value and isinstance(value.get("path"), str):
            key, value = value["path"], {"name": key, **value}
        entries[str(key)] = value
    return entries
