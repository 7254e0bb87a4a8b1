"""What predict's inputs name: files as given, folders walked, patterns expanded, and the inputs that name no
image (each with its place, so its error row stands where it was given)."""

from __future__ import annotations

import glob
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from floranet.data.scan import IMAGE_EXTENSIONS, is_skipped_name

# The error row of an input that names no image (see :func:`expand_inputs`).
NO_IMAGE = "no image: no such file, or a folder or pattern with no images in it"
# ... and of one that exists but is no file to read: reading a FIFO blocks until a writer comes, /dev/zero never ends.
NOT_REGULAR = "no image: not a regular file (a named pipe, device or socket), which is not read"


class Unmatched(NamedTuple):
    """An input that named no image, where its row goes (after the first ``position`` files), and why."""

    position: int
    input: str
    reason: str = NO_IMAGE


def expand_inputs(inputs: Iterable[str | os.PathLike[str]]) -> tuple[list[Path], list[Unmatched]]:
    """Files as given, folders walked (image extensions; hidden and system entries skipped, as the doctor skips
    them), globs expanded (a folder they match walked as a folder is); a folder or pattern names each file once
    (a link to an image it already names adds no row), while inputs are independent (a file given twice, two rows).

    Returns:
        (files in a stable order, inputs that matched nothing: a missing path, an empty folder, a pattern
        that matches no image; each with its place among the files, for :func:`in_input_order`).
    """
    files: list[Path] = []
    missing: list[Unmatched] = []
    for item in inputs:
        p = Path(item)
        reason = NO_IMAGE
        if not os.fspath(item):  # "" is Path("."): an unset variable would predict the whole working folder
            found = []
        elif p.is_file():
            found = [p]
        elif p.is_dir():
            found = once(_walk(p))  # an empty folder is as good as a typo: say so below
        elif _special(p):  # a FIFO, device or socket (or a link to one): it exists, but is never read
            found, reason = [], NOT_REGULAR
        elif glob.has_magic(str(item)):
            found = _matched(str(item))
        else:
            found = []
        if not found:
            missing.append(Unmatched(len(files), str(item), reason))
        files.extend(found)
    return files, missing


def _matched(pattern: str) -> list[Path]:
    """The images a pattern names, in its sorted order: the image files it matches, and those under the folders it
    matches (walked as a folder argument is: ``'data/*'`` names the images of data's folders), each file once."""
    found: list[Path] = []
    walked: list[Path] = []
    for m in sorted(Path(m) for m in _glob(pattern)):
        if m.is_dir():
            # A folder under one already walked (``**`` matches both) adds nothing but the time to walk it again.
            if not is_skipped_name(m.name) and not any(m.is_relative_to(w) for w in walked):
                walked.append(m)
                found.extend(_walk(m))
        elif m.suffix.lower() in IMAGE_EXTENSIONS and m.is_file() and _regular(m):
            found.append(m)
    return once(found)


def once(found: list[Path]) -> list[Path]:
    """Each file once, under the first path that names it: a link to an image of the same folder (``latest.jpg ->
    img_9.jpg``), or to a folder (``alias -> .``, which ``**`` matches), names one file under two paths. One input
    names each file once, whether a folder or a pattern; a file given as two inputs keeps both of predict's rows,
    while explain, which writes one overlay per file, passes all its inputs' files through this."""
    real: dict[str, Path] = {}
    for m in found:
        real.setdefault(os.path.realpath(m), m)
    return list(real.values())


def _walk(root: Path) -> list[Path]:
    """Image files under ``root`` in name order: symlinked folders followed as the doctor follows them (each real
    folder once, so a link loop ends), hidden and system entries skipped as the doctor skips them (a NAS's
    ``@eaDir`` thumbnails, macOS's ``__MACOSX`` copies), and only regular files (a FIFO would block the read
    forever)."""
    out: list[Path] = []
    for dirpath, filenames in _folders(str(root)):
        out.extend(
            Path(dirpath) / f
            for f in filenames
            if not is_skipped_name(f) and Path(f).suffix.lower() in IMAGE_EXTENSIONS and _regular(Path(dirpath) / f)
        )
    return out


def _folders(root: str) -> Iterator[tuple[str, list[str]]]:
    """``(folder, its file names)`` under ``root`` in name order, each real folder once, hidden and system ones
    skipped."""
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not is_skipped_name(d))
        yield dirpath, sorted(filenames)


def _glob(pattern: str) -> list[str]:
    """``glob.glob(pattern, recursive=True)``, with ``**`` walked as :func:`_folders` walks (Python's glob follows
    every link to a folder: two links in a loop double the paths at each level, without end)."""
    parts = pattern.split(os.sep)
    if "**" not in parts:
        return glob.glob(pattern)
    at = parts.index("**")
    base, rest = os.sep.join(parts[:at]), os.sep.join(parts[at + 1 :]) or "*"
    if at and not base:
        base = os.sep  # the pattern started at the root
    out = []
    for top in glob.glob(base) if glob.has_magic(base) else [base]:
        for folder, _ in _folders(top or os.curdir):
            here = folder if top else os.path.relpath(folder)  # "**/x.jpg" names "x.jpg", as glob does
            out += glob.glob(os.path.join(glob.escape(here), rest)) if here != os.curdir else glob.glob(rest)
    return out


def _special(path: Path) -> bool:
    """Whether ``path`` exists (through links) and is neither a regular file nor a folder."""
    try:
        mode = path.stat().st_mode
    except OSError:  # missing, or a broken link
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:  # a broken symlink: its row says it is missing
        return path.is_symlink()
