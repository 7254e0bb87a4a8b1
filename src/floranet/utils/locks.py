"""An exclusive lock file that names its holder: a second writer is refused with the holder's pid.

The file exists only while held (it is removed on release). Acquiring re-checks that the locked file is still
the one at the path, so a release racing with an acquire never leaves two holders. A process killed while
holding it leaves the file behind, unlocked: the next writer takes it over.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from floranet.errors import OutputError, RunLockedError
from floranet.utils.files import current_umask

WAIT_NOTICE_S = 3.0  # a wait for another holder is said after this long (most waits are shorter)
READ_WAIT_LIMIT_S = 600.0  # a reader waits this long at most for a writer to make its files match
T = TypeVar("T")


def acquire(
    path: Path, *, what: str, wait: bool = False, say: Callable[[str], None] | None = None, hint: str | None = None
) -> int:
    """Locks ``path`` (creating it and its folder) and writes this process's pid into it; returns the fd.

    Args:
        path: The lock file.
        what: What the lock guards, for the error message.
        hint: What to do when another process holds it (default: :class:`RunLockedError`'s).
        wait: Wait for another holder to finish instead of refusing.
        say: Told once, when a wait lasts :data:`WAIT_NOTICE_S` seconds, what it waits for (a silent wait looks
            like a hang).

    Raises:
        RunLockedError: Another process holds the lock (and ``wait`` is False).
        OutputError: The lock file cannot be created, or its file system does not lock files (NFS without its lock
            daemon, some FUSE mounts): nothing would keep a second writer out, so nothing is written.
    """
    made = missing_folders(path.parent)  # folders made for the lock
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(path.parent, e) from None
    while True:
        created = not os.path.lexists(path)
        fd = _open(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                holder = _read_pid(fd)
                os.close(fd)
                raise (RunLockedError(what, holder, hint=hint) if hint else RunLockedError(what, holder)) from None
            _wait_for(fd, path, what, say)
        except OSError as e:  # ENOLCK, EOPNOTSUPP, ...: was a raw traceback that left the fd and an empty file
            _give_up(fd, path, created, made)
            raise OutputError(path, _unsupported(e)) from None
        if _same_file(fd, path):
            break
        os.close(fd)  # released and removed meanwhile: lock the new file instead
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _unsupported(error: OSError) -> OSError:
    """``error`` of a lock refused by the file system, with what it means and what to do."""
    return OSError(
        error.errno,
        f"its file system does not support file locks ({error.strerror or error}), and floranet does not write "
        "without one (a second writer could not be kept out); use a folder on a local disk, or an NFS mount "
        "with locking (lockd)",
    )


def _give_up(fd: int, path: Path, created: bool, made: list[Path]) -> None:
    """Closes ``fd``; removes the lock file when this call created it, then the folders made for it."""
    if created and _same_file(fd, path):
        with contextlib.suppress(OSError):
            path.unlink()
    os.close(fd)
    remove_empty(made)


def missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its parents that do not exist yet, deepest first: those a lock in it would make."""
    return [p for p in (folder, *folder.parents) if not p.exists()]


def remove_empty(folders: list[Path]) -> None:
    """Removes ``folders`` (:func:`missing_folders` made for a lock), deepest first, while nothing was written to
    them; one not empty is someone's, and so are those above it."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break


def _wait_for(fd: int, path: Path, what: str, say: Callable[[str], None] | None) -> None:
    """Waits for the lock on ``fd``; after :data:`WAIT_NOTICE_S` seconds, says once who holds it."""

    def notice() -> None:
        holder = _read_pid(fd)
        if say is not None:
            pid = f" (pid {holder})" if holder is not None else ""
            say(f"Waiting for another floranet process{pid} to finish {what} (lock file {path}).")

    timer = threading.Timer(WAIT_NOTICE_S, notice)
    timer.daemon = True
    timer.start()
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    finally:
        timer.cancel()


def _open(path: Path) -> int:
    """The lock file, opened for writing, never through a symbolic link nor onto anything but a plain file: the
    pid is written into it, and a link planted at the lock's place would have that overwrite its target."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666 & ~current_umask())
    except OSError as e:
        if e.errno == errno.ELOOP:
            e = OSError(e.errno, "it is a symbolic link, which floranet does not write through (remove it)")
        raise OutputError(path, e) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OutputError(path, OSError(errno.EINVAL, "it is not a plain file (remove it)"))
    return fd


def release(path: Path, fd: int) -> None:
    """Removes the lock file, then unlocks it (in that order, so no one locks a file about to vanish)."""
    with contextlib.suppress(FileNotFoundError):
        if _same_file(fd, path):
            path.unlink()
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def read_while_held(
    path: Path,
    read: Callable[[], tuple[T, str | None]],
    *,
    what: str,
    say: Callable[[str], None] | None = None,
    limit_s: float = READ_WAIT_LIMIT_S,
) -> tuple[T, str | None]:
    """``read()``'s value and problem, read again while it has a problem and another live process holds the lock
    ``path`` (a writer between two files that must match), without taking the lock; then once more (the writer may
    have finished since the last read).

    Args:
        path: The lock file.
        read: Reads the files: their value, and what is wrong with them (None: nothing).
        what: What the holder does, for ``say``.
        say: Told once, after :data:`WAIT_NOTICE_S` seconds, what the read waits for.
        limit_s: The longest wait; then the problem stands.
    """
    start, told = time.monotonic(), False
    value, problem = read()
    while problem is not None:
        pid, waited = holder(path), time.monotonic() - start
        if pid is None or waited > limit_s:
            return read()
        if not told and waited >= WAIT_NOTICE_S and say is not None:
            told = True
            say(f"Waiting for another floranet process (pid {pid}) to finish {what} (lock file {path}).")
        time.sleep(0.1)
        value, problem = read()
    return value, problem


def holder(path: Path) -> int | None:
    """The pid of another live process that holds the lock file ``path``, read without taking the lock (a reader
    that took it, even for an instant, would refuse a writer starting then); None: no lock file, one that a killed
    process left, or this process's own.
    """
    try:
        with path.open("rb") as f:
            pid = int(f.read(32).decode().strip())
    except (OSError, ValueError):  # absent, or created but its pid not yet written
        return None
    if pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except PermissionError:  # it does, another user's
        return pid
    except (ProcessLookupError, OverflowError):  # gone: the file is a killed holder's
        return None
    return pid


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError):
        return None
