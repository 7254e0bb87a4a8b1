"""Files floranet writes and reads, safely.

Writes are atomic: a temp file in the same folder, then ``os.replace``, then an fsync of the folder, so a reader
(or a run resumed after ``kill -9`` or a power cut) sees the old file or the new one, never a half-written one.
New files get the permissions the process's umask gives (``mkstemp`` alone would make them 0600); a replaced
file keeps its own mode. Anything that cannot be written raises :class:`~floranet.errors.OutputError` naming
the path. Reads of user-supplied files are capped in size before a byte is read.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from floranet.errors import ConfigError, OutputError
from floranet.utils.text import printable

_UMASK_LOCK = threading.Lock()


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes (read in chunks: model files and archives may be large)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def current_umask() -> int:
    """The process's umask, read without changing it where the OS allows (Linux ``/proc``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split(":", 1)[1].strip(), 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:  # elsewhere: set and restore, the only portable way
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode(final: Path) -> int:
    """The mode a new version of ``final`` should have: the old file's, else ``0o666 & ~umask``."""
    try:
        return stat.S_IMODE(final.stat().st_mode)
    except OSError:
        return 0o666 & ~current_umask()


def seal_folder(folder: Path) -> None:
    """Readies a finished temp folder for the rename that puts it in place: the permissions the umask gives (from
    ``mkdtemp``'s 0700 and ``mkstemp``'s 0600) and every file and folder in it flushed to disk, so that a record
    written after the rename never names files a power cut could leave empty. The caller then renames it and
    calls :func:`fsync_dir` on its parent."""
    mask = current_umask()
    for p in sorted(folder.rglob("*"), reverse=True):  # files before the folders that hold them
        if p.is_symlink():
            continue
        p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)
        _fsync_path(p)
    folder.chmod(0o777 & ~mask)
    _fsync_path(folder)


# A temporary folder whose process is gone and that nobody touched for this long is a leftover (a killed export).
STALE_AFTER_S = 3600.0


def temp_folder_beside(final: Path) -> Path:
    """A new private folder ``.<name>.tmp-<pid>-XXXX`` beside ``final``, to build what is then renamed onto it
    (:func:`seal_folder`). Such folders that a killed process left beside ``final`` are removed first: the pid
    in their name is not running here and they are untouched for :data:`STALE_AFTER_S` (a folder shared with
    another machine, where that pid means nothing, keeps a running build's folder by its age).

    Raises:
        OSError: As ``mkdtemp`` does.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(rf"\.{re.escape(final.name)}\.(tmp|old)-(\d+)-")
    for p in final.parent.iterdir():
        found = pattern.match(p.name)
        if found is None or (found[1] == "old" and not final.exists()):  # an old folder may be all there is
            continue
        with contextlib.suppress(OSError):
            stale = time.time() - p.lstat().st_mtime > STALE_AFTER_S
            if stale and p.is_dir() and not p.is_symlink() and not _running(int(found[2])):
                shutil.rmtree(p, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except PermissionError:  # it does, another user's
        return True
    except (ProcessLookupError, OverflowError):  # gone, or no pid at all
        return False
    return True


def _fsync_path(path: Path) -> None:
    with contextlib.suppress(OSError):  # a file system that cannot sync a folder
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Makes a rename inside ``folder`` durable (a no-op where directories cannot be opened)."""
    _fsync_path(folder)


# What is said of a .keras model file that is no zip archive (cut short): Keras itself says "File not found" of it.
DAMAGED_KERAS = "the file is damaged (not a .keras zip archive; cut short by a copy or a full disk?)"


def is_cut_keras(path: Path) -> bool:
    """Whether ``path`` is a file that cannot be a ``.keras`` model: no zip archive (:data:`DAMAGED_KERAS`)."""
    return path.is_file() and not zipfile.is_zipfile(path)


# What the temp file of atomic_path adds to a name, besides its suffix: "." before, "." and tempfile's 8 random
# characters after (a name that fits NAME_MAX with no room for these fails as "File name too long").
TEMP_NAME_EXTRA = 10


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, suffix: str | None = None) -> Iterator[Path]:
    """Yields a temp path beside ``path``; renames it onto ``path`` if the block succeeds.

    Args:
        path: The final file.
        suffix: Temp file suffix; defaults to ``path``'s own (some writers,
            such as Keras, insist on an extension).

    Raises:
        OutputError: The folder cannot be created or written, or the disk is full.
    """
    final = Path(path)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{final.name}.", suffix=suffix if suffix is not None else final.suffix, dir=final.parent
        )
        os.close(fd)
    except OSError as e:
        raise OutputError(final, e) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, file_mode(final))
        os.replace(tmp_path, final)
        fsync_dir(final.parent)
    except OSError as e:
        raise OutputError(final, e) from None
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8", "surrogateescape"))


# A lone surrogate: a name's byte that is not UTF-8, as os.fsdecode keeps it (surrogate escape). UTF-8 has no form
# for it, so JSON text spells it as a \uXXXX escape.
_SURROGATE = re.compile("[\ud800-\udfff]")


def json_text(obj: Any, *, indent: int | None = 2) -> str:
    """``obj`` as JSON text that encodes as strict UTF-8 (RFC 8259), for every JSON file floranet writes.

    Other characters are kept as they are (a class "café" reads as such); a lone surrogate, the byte of a file or
    folder name that is not UTF-8, is written as a ``\\udcXX`` escape, which ``json.loads`` reads back as the same
    ``str``, so a class name still maps to its folder's bytes (``os.fsencode``). Raw, it made files that strict
    UTF-8 readers (``json.load(open(path))``) refuse.

    Args:
        obj: What to write: JSON types, numpy arrays and scalars (as lists and numbers), paths (as text).
        indent: As ``json.dumps``'s.
    """
    text = json.dumps(obj, indent=indent, ensure_ascii=False, default=_default)
    # ensure_ascii=False escapes only quotes, backslashes and control characters, so a surrogate is always raw
    # inside a string, where its escape means the same character.
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Writes ``obj`` as :func:`json_text` (UTF-8), atomically."""
    atomic_write_bytes(path, (json_text(obj) + "\n").encode("utf-8"))


def read_json(path: str | os.PathLike[str]) -> Any:
    """A JSON file as :func:`write_json` writes it: a name's byte that is not UTF-8, raw as an older floranet wrote
    it, reads (surrogateescape) as the same str as its ``\\udcXX`` escape.

    Raises:
        OSError: It cannot be read.
        ValueError: It is not JSON.
    """
    return json.loads(Path(path).read_bytes().decode("utf-8", "surrogateescape"))


def _default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def check_writable(path: str | os.PathLike[str]) -> Path:
    """Checks, before any long work, that a file can be written at ``path``; creates nothing that stays.

    A temp file is created (and removed) in ``path``'s folder, or in its nearest existing ancestor when the
    folder does not exist yet: the only check that also catches read-only mounts and pseudo file systems.

    Raises:
        OutputError: It cannot, with the reason (read-only file system, permission denied, ...).
    """
    final = Path(path)
    if final.is_dir():
        raise OutputError(final, IsADirectoryError(21, "it is a directory"))
    folder = final.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        fd, probe = tempfile.mkstemp(prefix=".floranet-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(final, e) from None
    return final


def check_replaceable(
    path: str | os.PathLike[str],
    *,
    arg: str,
    ours: str,
    is_ours: Callable[[bytes], bool],
    inside: Sequence[tuple[str, Path]] = (),
    head: int = 256,
) -> Path:
    """Checks, before any work, that an output file may be written at ``path``: outside each folder of
    ``inside``, and either new or a file floranet wrote (its first ``head`` bytes pass ``is_ours``); then that
    it can be written (:func:`check_writable`).

    Args:
        path: The output file.
        arg: The argument that named it, for the message.
        ours: What floranet writes there, for the message (e.g. "a floranet report").
        is_ours: Whether a file's first bytes are such a file.
        inside: ``(what, folder)`` pairs the output must stay out of (e.g. the run directory).
        head: How many bytes ``is_ours`` reads.

    Raises:
        ConfigError: It lies in one of ``inside``, or exists and is not ours (a named pipe or device included:
            renaming a new file onto it would replace it); nothing is written.
        OutputError: It cannot be written.
    """
    target = Path(path)
    shown = printable(os.fspath(path))
    check_outside(target, arg=arg, inside=inside)
    if (target.exists() or target.is_symlink()) and not target.is_dir():
        first = file_head(target, head)
        if first is None or not is_ours(first):
            raise ConfigError(
                f"{arg} is an existing file that is not {ours}; choose a new file, so nothing of yours is "
                f"replaced. Received: {arg}={shown!r}"
            )
    return check_writable(target)


def check_outside(path: str | os.PathLike[str], *, arg: str, inside: Sequence[tuple[str, Path]]) -> None:
    """Checks that an output (file or folder) lies outside each folder of ``inside`` (links resolved).

    Args:
        path: The output.
        arg: The argument that named it, for the message.
        inside: ``(what, folder)`` pairs the output must stay out of (e.g. the run directory).

    Raises:
        ConfigError: It is one of those folders or lies in one.
    """
    target = Path(path).resolve()
    for what, folder in inside:
        if target.is_relative_to(folder.resolve()):
            raise ConfigError(f"{arg} must be outside {what}. Received: {arg}={printable(os.fspath(path))!r}")


def file_head(path: str | os.PathLike[str], size: int) -> bytes | None:
    """The first ``size`` bytes of ``path`` when it is a regular file; None for anything else (missing, a folder,
    a named pipe or device: opened without blocking, so a pipe with no writer is never waited on) or what cannot
    be read. For "did floranet write this file?" checks, which read a marker, never a whole file of the user's."""
    try:
        with open(path, "rb", opener=_without_blocking) as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return None
            return f.read(size)
    except OSError:
        return None


_READ_CHUNK = 1 << 20


def _without_blocking(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NONBLOCK)


def read_capped(path: str | os.PathLike[str], limit: int, *, regular_only: bool = False) -> bytes:
    """Reads a whole file, refusing (before reading) one larger than ``limit`` bytes.

    Args:
        path: The file.
        limit: The most bytes read.
        regular_only: Refuse a named pipe, device or socket (opened without blocking: a pipe with no writer
            would wait forever). Off for settings files, which may come from a shell's ``<(...)``.

    Raises:
        OSError: As ``open`` does; ``EFBIG`` (errno 27) for a file over the limit; ``EINVAL`` for what is not a
            regular file when ``regular_only``.
    """
    with open(path, "rb", opener=_without_blocking if regular_only else None) as f:
        if regular_only and not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a named pipe, device or socket)")
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise OSError(27, f"file too large: {size:,} bytes, over the limit of {limit:,}")
        # As much as the file holds: read(limit + 1) set aside the whole limit for every file (400 MB for a
        # 1 KB photo at the default max_pixels, per decoding thread).
        data = bytearray(f.read(size + 1))
        while len(data) <= limit:  # it grew while reading, or a pipe or device that reports no size
            chunk = f.read(min(_READ_CHUNK, limit + 1 - len(data)))
            if not chunk:
                break
            data += chunk
    if len(data) > limit:
        raise OSError(27, f"file too large: over the limit of {limit:,} bytes")
    return bytes(data)
