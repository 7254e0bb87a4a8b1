"""Extracting a downloaded archive as hostile input: inside its folder, plain files only, within a budget.

Every header is read and checked before anything is written (:func:`checked_members`): the member count and
the bytes the files declare stay within the caller's budget (a decompression bomb stops at the header that passes
it, before its content is decompressed), no name appears twice (nor two names that differ only in case, on a disk
that does not tell them apart) or is a file and a folder at once, every file has a name of its own and a path a
file system takes, and there are no links or special files (the data sets floranet fetches hold plain files and
folders). Then ``tarfile``'s ``data`` filter (Python >= 3.11.4) extracts, refusing
paths outside the folder and unsafe modes; on older Pythons :func:`_within` checks the paths itself.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import os
import posixpath
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any

HAS_DATA_FILTER = hasattr(tarfile, "data_filter")  # Python >= 3.11.4 / 3.12
MAX_MEMBERS = 200_000  # flower_photos has 3,676
# The largest single read tarfile may make of the decompressed stream: its blocks, and its copy buffer, are far
# smaller; only a GNU long-name or pax header is read whole, and a 300 MiB one (in a 1.4 MB archive) held 2.5 GB.
MAX_READ = 1 << 20
NAME_MAX = 255  # bytes of one part of a path: longer ones fail on most file systems, blaming the cache folder
PATH_MAX = 4000  # bytes of a whole path: Linux refuses 4,096 (its NUL included), blaming the cache folder too


class UnsafeMember(Exception):
    """A member the checks refuse (what ``tarfile.FilterError`` is for the ``data`` filter)."""


UNSAFE: tuple[type[Exception], ...] = (
    (UnsafeMember, tarfile.FilterError) if hasattr(tarfile, "FilterError") else (UnsafeMember,)
)


@contextlib.contextmanager
def open_capped(archive: Path, max_bytes: int) -> Iterator[tarfile.TarFile]:
    """``archive`` (tar, or tar compressed by gzip, bzip2 or xz) opened through :class:`CappedStream`: its
    decompressed stream is never read past its members' budget (``max_bytes`` plus their headers) nor in one
    read of more than :data:`MAX_READ` bytes.

    Raises:
        UnsafeMember: The stream passes either limit (raised while reading).
        tarfile.TarError: Not a tar archive.
    """
    with contextlib.ExitStack() as stack:
        raw = stack.enter_context(open(archive, "rb"))
        magic = raw.read(6)
        raw.seek(0)
        stream: Any = raw  # the file, or its decompressing reader
        if magic[:2] == b"\x1f\x8b":
            stream = stack.enter_context(gzip.GzipFile(fileobj=raw))
        elif magic[:3] == b"BZh":
            stream = stack.enter_context(bz2.BZ2File(raw))
        elif magic == b"\xfd7zXZ\x00":
            stream = stack.enter_context(lzma.LZMAFile(raw))
        budget = max_bytes + (MAX_MEMBERS + 16) * 3 * tarfile.BLOCKSIZE  # a header, padding and a name each
        with tarfile.open(fileobj=CappedStream(stream, budget), mode="r:") as tar:
            yield tar


class CappedStream(io.RawIOBase):
    """A decompressed archive read by tarfile, refused past ``limit`` bytes or in reads over :data:`MAX_READ`."""

    def __init__(self, stream: IO[bytes], limit: int) -> None:
        super().__init__()
        self._stream, self._limit = stream, limit

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:  # tarfile asks for sizes; a read to the end would hold the whole stream
            raise UnsafeMember("a read of the whole decompressed stream")
        if size > MAX_READ:
            raise UnsafeMember(f"a header or name of {size:,} bytes (more than {MAX_READ:,})")
        if self._stream.tell() + size > self._limit:
            raise UnsafeMember(f"its contents pass the {self._limit:,} bytes this data set can take")
        try:
            return self._stream.read(size)
        except (OSError, EOFError, zlib.error, lzma.LZMAError) as e:  # the decompressor's: bz2 raises OSError
            raise tarfile.ReadError(f"corrupt compressed data ({type(e).__name__}: {e})") from e

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._stream.seek(offset, whence)

    def tell(self) -> int:
        return self._stream.tell()


def safe_extractall(tar: tarfile.TarFile, dest: Path, *, max_bytes: int) -> None:
    """Extracts ``tar`` into ``dest`` after :func:`checked_members` passed every header.

    Raises:
        UnsafeMember: (or ``tarfile.FilterError``) A member or the archive's size is refused.
    """
    members = checked_members(tar, max_bytes, dest=dest)
    if HAS_DATA_FILTER:
        tar.extractall(dest, members=members, filter="data")
        return
    tar.extractall(dest, members=_within(members, dest))


def checked_members(tar: tarfile.TarFile, max_bytes: int, *, dest: Path | None = None) -> list[tarfile.TarInfo]:
    """Every member to extract (into ``dest``, when given, whose path the lengths count), read header by header
    and refused at the first that breaks a rule (see the module). A folder named ``.`` (``tar -C dir .`` writes
    ``./``) is ``dest`` itself: left out, not extracted over it."""
    base = len(os.fsencode(os.path.abspath(dest))) + 1 if dest is not None else 0
    folded: dict[str, str] | None = {} if dest is not None and folds_case(dest) else None
    members: list[tarfile.TarInfo] = []
    names: set[PurePosixPath] = set()
    files: set[PurePosixPath] = set()
    total = 0
    for m in tar:
        if len(members) >= MAX_MEMBERS:
            raise UnsafeMember(f"more than {MAX_MEMBERS:,} members")
        if m.issym() or m.islnk():
            raise UnsafeMember(f"{m.name!r} is a link (a data set holds plain files)")
        if not (m.isfile() or m.isdir()):
            raise UnsafeMember(f"{m.name!r} is a special file")
        total += m.size
        if total > max_bytes:
            raise UnsafeMember(f"its files hold more than the {max_bytes:,} bytes this data set can take")
        # Normalised: set/a/../a/b.jpg is set/a/b.jpg, which would replace it (PurePosixPath keeps the '..')
        name = PurePosixPath(posixpath.normpath(m.name.lstrip("/")))
        if not name.parts:  # "", ".", "a/..": the destination folder itself
            if m.isdir():
                continue
            raise UnsafeMember(f"{m.name!r} is a file without a name (its path is the destination folder's)")
        if any(len(os.fsencode(part)) > NAME_MAX for part in name.parts):
            raise UnsafeMember(f"{m.name[:80]!r}... has a name part longer than {NAME_MAX} bytes")
        if base + len(os.fsencode(str(name))) > PATH_MAX:
            raise UnsafeMember(f"{m.name[:80]!r}... would be written at a path longer than {PATH_MAX:,} bytes")
        if name in names and not m.isdir():
            raise UnsafeMember(f"{m.name!r} appears twice")
        if folded is not None and m.isfile():  # Roses/a.jpg and roses/A.jpg: one file on macOS's and Windows' disks
            other = folded.setdefault(str(name).casefold(), m.name)
            if other != m.name:
                raise UnsafeMember(
                    f"{m.name!r} and {other!r} differ only in case, which this file system does not tell apart: "
                    "one would replace the other"
                )
        if any(parent in files for parent in name.parents) or (m.isdir() and name in files):
            raise UnsafeMember(f"{m.name!r} is under, or is, a name the archive also has as a file")
        names.add(name)
        if m.isfile():
            files.add(name)
        members.append(m)
    return members


def folds_case(folder: Path) -> bool:
    """Whether the file system of ``folder`` (which exists) takes names that differ only in case for one name: a
    probe file is made and looked for under its upper-case name."""
    import tempfile

    with tempfile.NamedTemporaryFile(prefix=".case-probe-", dir=folder) as probe:
        name = Path(probe.name)
        return (name.parent / name.name.upper()).exists()


def _within(members: list[tarfile.TarInfo], dest: Path) -> list[tarfile.TarInfo]:
    """The fallback of the ``data`` filter: every path inside ``dest``; no setuid/setgid/sticky bits."""
    base = os.path.realpath(dest)
    for m in members:
        name = m.name
        if name.startswith(("/", "\\")) or os.path.isabs(name) or ".." in PurePosixPath(name).parts:
            raise UnsafeMember(f"{name!r} has an absolute path or '..'")
        if os.path.commonpath([base, os.path.realpath(os.path.join(base, name))]) != base:
            raise UnsafeMember(f"{name!r} would be written outside the destination")
        m.mode = (m.mode | 0o600) & 0o755
    return members
