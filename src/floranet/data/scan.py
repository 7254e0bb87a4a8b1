"""Walking a folder-per-class image set: which entries are classes, candidate images, or to be ignored.

The walk follows symlinks but never loops, never visits a folder twice, and decides hidden, system and
non-image entries without opening them as images.
"""

from __future__ import annotations

import errno
import os
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from floranet.data import formats
from floranet.errors import DatasetError
from floranet.utils.text import printable, same_under

# JPEG's names: .jfif (what Chrome and Windows save), .jpe, .jif and .jfi are ordinary JPEGs.
JPEG_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".jif", ".jfi"})
# The one list of image file names: the doctor's scan (so train), predict's and explain's walk of a folder, and
# what the decoders take for a JPEG or PNG all read it.
IMAGE_EXTENSIONS: frozenset[str] = JPEG_EXTENSIONS | frozenset(
    {".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".heic", ".heif", ".avif"}
)
# Folders and files that operating systems and NAS boxes add (Synology keeps resized copies in @eaDir).
_SYSTEM_NAMES = frozenset(
    {"__macosx", "thumbs.db", "desktop.ini", "@eadir", "$recycle.bin", "system volume information"}
)


def is_skipped_name(name: str) -> bool:
    """Whether an entry of this name is hidden (a dot name) or one an operating system or NAS box adds: never
    read as an image, by the doctor's scan nor by predict's walk of a folder."""
    return name.startswith(".") or name.lower() in _SYSTEM_NAMES


@dataclass(frozen=True)
class FileFinding:
    """The verdict on one file (or skipped folder).

    Attributes:
        path: POSIX path relative to ``data_dir``; undecodable bytes of the
            name are kept as surrogate escapes (``os.fsdecode``), so
            ``os.path.join(data_dir, path)`` opens the file.
        label: Class folder name; None for ignored entries.
        status: ``"ok"``, ``"note"``, ``"bad"`` or ``"ignored"``.
        reason: ``""`` when ok, otherwise a sentence (notes joined by ``"; "``).
        sha256: Hex digest of the bytes, for every file that could be read.
        width: Upright width, for usable images.
        height: Upright height, for usable images.
        tf_decodable: TensorFlow decodes it to the same pixels (fast path).
        worth_a_look: An ignored entry the user may have meant as an image (an image left beside the class
            folders, an image under another extension, one that cannot be examined): the printout names it.
        conflict: A valid image that is bad only for a byte-identical copy in another class (a label
            conflict), which a run's ``--exclude`` or ``--relabel`` can settle.
        kind: What is wrong with a bad image, as :class:`~floranet.data.images.UnusableImageError` names it
            (``"too_large"``, ``"corrupt"``, ...); ``""`` otherwise.
    """

    path: str
    label: str | None
    status: str
    reason: str
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    tf_decodable: bool = False
    worth_a_look: bool = False
    conflict: bool = False
    kind: str = ""


@dataclass(frozen=True)
class Candidate:
    path: str
    abs_path: str
    label: str


class Scan:
    """Walks ``root`` once: class names, files to decode, entries decided without decoding."""

    def __init__(self, root: str) -> None:
        self.classes: list[str] = []
        self.candidates: list[Candidate] = []
        self.findings: list[FileFinding] = []
        try:
            entries = _entries(root)
            root_key = _key(os.stat(root))
        except OSError as err:
            raise DatasetError(
                f"data_dir cannot be read ({err.strerror or err}). Received: data_dir={printable(root)!r}"
            ) from None
        # Every class folder is registered first, so a symlink from one class
        # into another is reported instead of stealing the other's images.
        self.visited = {root_key}
        class_dirs = []
        for e in entries:
            hidden = _hidden_reason(e)
            st = None if hidden else self._stat(e.name, e, None)
            if hidden:
                self._ignore(e.name, hidden)
            elif st is None:
                continue
            elif e.is_dir():
                key = _key(st)
                if key in self.visited:
                    self._ignore(e.name, "symlink loop" if key == root_key else "symlink to a folder already scanned")
                else:
                    self.visited.add(key)
                    class_dirs.append((e, key))
            else:
                # Only a regular file is opened to look: a named pipe or a device would block or never end.
                looks = e.is_file() and (_is_image_name(e.name) or _sniffed(e.path) is not None)
                self._ignore(e.name, "not inside a class folder", worth_a_look=looks)
        for e, key in sorted(class_dirs, key=lambda d: d[0].name):
            self.classes.append(e.name)
            self._walk(e.name, e.path, frozenset({root_key, key}))

    def _ignore(self, path: str, reason: str, *, worth_a_look: bool = False) -> None:
        self.findings.append(FileFinding(path, None, "ignored", reason, worth_a_look=worth_a_look))

    def _stat(self, path: str, e: os.DirEntry, label: str | None) -> os.stat_result | None:
        """``e``'s stat (symlinks followed), or None with the entry recorded as a finding."""
        try:
            return e.stat()
        except FileNotFoundError:
            is_image = _is_image_name(e.name)
            if label is not None and is_image:
                self.findings.append(FileFinding(path, label, "bad", "broken symlink"))
            else:
                self._ignore(path, "broken symlink", worth_a_look=is_image)
        except OSError as err:
            reason = "symlink loop" if err.errno == errno.ELOOP else f"cannot be examined: {_os_reason(err)}"
            self._ignore(path, reason, worth_a_look=True)
        return None

    def _walk(self, label: str, top: str, ancestors: frozenset[tuple[int, int]]) -> None:
        stack = [(top, label, ancestors)]
        while stack:
            folder, rel, anc = stack.pop()
            try:
                entries = _entries(folder)
            except OSError as err:
                self.findings.append(FileFinding(rel, label, "bad", f"unreadable folder: {_os_reason(err)}"))
                continue
            for e in entries:
                path = f"{rel}/{e.name}"
                hidden = _hidden_reason(e)
                if hidden:
                    self._ignore(path, hidden)
                    continue
                st = self._stat(path, e, label)
                if st is None:
                    continue
                if e.is_dir():
                    key = _key(st)
                    if key in anc:
                        self._ignore(path, "symlink loop")
                    elif key in self.visited:
                        self._ignore(path, "symlink to a folder already scanned")
                    else:
                        self.visited.add(key)
                        stack.append((e.path, path, anc | {key}))
                elif not e.is_file():
                    self._ignore(path, "not a regular file")
                elif _is_image_name(e.name):
                    self.candidates.append(Candidate(path, e.path, label))
                else:
                    fmt = _sniffed(e.path)
                    self._ignore(path, _non_image_reason(e.name, fmt), worth_a_look=fmt is not None)


def look_key(name: str) -> str:
    """How a name looks in a table: NFKC (a name copied from macOS keeps NFD; a no-break space or a full-width
    letter becomes the plain one), without format characters (Unicode category Cf: zero-width spaces and joiners,
    a byte-order mark), each run of white space one space, none at the ends."""
    visible = "".join(c for c in unicodedata.normalize("NFKC", name) if unicodedata.category(c) != "Cf")
    return " ".join(visible.split())


def same_looking(names: Iterable[str]) -> tuple[str, str, str] | None:
    """The first two names that look the same (equal :func:`look_key`), which every report and answer would show
    as one, and how they differ (``"are one name written in two Unicode forms"``, ...); None when there are none."""
    twins = next(same_under(names, look_key), None)
    if twins is None:
        return None
    twin, name = twins
    if unicodedata.normalize("NFC", twin) == unicodedata.normalize("NFC", name):
        return twin, name, "are one name written in two Unicode forms"
    return twin, name, "differ only by white space, invisible characters or Unicode compatibility forms"


def case_twins(names: Iterable[str]) -> list[tuple[str, str]]:
    """Pairs of names that differ only by case (``Roses`` and ``roses``): two classes here, but one folder on a
    case-insensitive file system (macOS and Windows by default)."""
    firsts: dict[str, str] = {}
    for name in names:  # the first of each same-looking set (:func:`same_looking`), in order
        firsts.setdefault(look_key(name), name)
    return list(same_under(firsts.values(), lambda name: look_key(name).casefold()))


def _entries(folder: str) -> list[os.DirEntry]:
    # Real entries before symlinks: an alias (``Tulip -> tulips``) never takes over the folder it points at.
    return sorted(os.scandir(folder), key=lambda e: (e.is_symlink(), e.name))


def _key(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _hidden_reason(entry: os.DirEntry) -> str:
    name = entry.name
    if not is_skipped_name(name):
        return ""
    try:
        is_dir = entry.is_dir()
    except OSError:
        is_dir = False
    kind = "hidden" if name.startswith(".") else "system"
    return f"{kind} folder (not scanned)" if is_dir else f"{kind} file"


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _sniffed(path: str) -> str | None:
    """The image format a file's first bytes show (None: none, or unreadable)."""
    try:
        with open(path, "rb") as f:
            return formats.sniff_format(f.read(32))
    except OSError:
        return None


def _non_image_reason(name: str, fmt: str | None) -> str:
    ext = os.path.splitext(name)[1] or "(none)"
    if fmt is None:
        return f"not an image file extension ({ext})"
    return f"not an image file extension ({ext}), although the content looks like {fmt}: rename it to use it"


def _os_reason(e: OSError) -> str:
    return "permission denied" if isinstance(e, PermissionError) else (e.strerror or str(e))
