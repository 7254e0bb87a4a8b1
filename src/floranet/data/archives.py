"""Extracting a downloaded archive as hostile input: inside its folder, plain files only, within a budget.

Every header is read and checked before anything is written (:func:`checked_members`): the member count and
the bytes the files declare stay within the caller's budget (a decompression bomb stops at the header that passes
it, before its content is decompressed), no name appears twice or is a file and a folder at once, and there are no
links or special files (the data sets floranet fetches hold plain files and folders). Then ``tarfile``'s ``data``
filter (Python >= 3.11.4) extracts, refusing paths outside the folder and unsafe modes; on older Pythons
:func:`_within` checks the paths itself.
"""

from __future__ import annotations

import os
import posixpath
import tarfile
from pathlib import Path, PurePosixPath

HAS_DATA_FILTER = hasattr(tarfile, "data_filter")  # Python >= 3.11.4 / 3.12
MAX_MEMBERS = 200_000  # flower_photos has 3,676


class UnsafeMember(Exception):
    """A member the checks refuse (what ``tarfile.FilterError`` is for the ``data`` filter)."""


UNSAFE: tuple[type[Exception], ...] = (
    (UnsafeMember, tarfile.FilterError) if hasattr(tarfile, "FilterError") else (UnsafeMember,)
)


def safe_extractall(tar: tarfile.TarFile, dest: Path, *, max_bytes: int) -> None:
    """Extracts ``tar`` into ``dest`` after :func:`checked_members` passed every header.

    Raises:
        UnsafeMember: (or ``tarfile.FilterError``) A member or the archive's size is refused.
    """
    members = checked_members(tar, max_bytes)
    if HAS_DATA_FILTER:
        tar.extractall(dest, members=members, filter="data")
        return
    tar.extractall(dest, members=_within(members, dest))


def checked_members(tar: tarfile.TarFile, max_bytes: int) -> list[tarfile.TarInfo]:
    """Every member, read header by header and refused at the first that breaks a rule (see the module)."""
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
        if name in names and not m.isdir():
            raise UnsafeMember(f"{m.name!r} appears twice")
        if any(parent in files for parent in name.parents) or (m.isdir() and name in files):
            raise UnsafeMember(f"{m.name!r} is under, or is, a name the archive also has as a file")
        names.add(name)
        if m.isfile():
            files.add(name)
        members.append(m)
    return members


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
