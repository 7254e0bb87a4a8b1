"""Export folders: recognising one floranet wrote, and putting a finished export in its place."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from floranet.errors import ConfigError, OutputError
from floranet.export.common import EXPORTS_DIR, MARKER, MODEL_FILES, README_FILE, SOURCE, log
from floranet.export.unknown import FILES as UNKNOWN_FILES
from floranet.rundir import RunDir
from floranet.rundir.foreign import is_export_folder
from floranet.utils import locks
from floranet.utils.files import check_outside, file_head, fsync_dir

# README.txt's last section: every file of the export, which a later export into its folder replaces.
LISTING = "Files of this export"
_README_LIMIT = 1 << 20  # bytes of a README.txt read for its list of files


def _entries(folder: Path) -> set[str]:
    """Every file and folder under ``folder``, as relative POSIX paths (links not followed)."""
    found: set[str] = set()
    for top, dirs, files in os.walk(folder):
        rel = Path(top).relative_to(folder)
        found.update((rel / name).as_posix() for name in (*dirs, *files))
    return found


def check_out(final: Path, run: Path) -> None:
    """Refuses an export folder inside the run directory other than under its ``exports/`` folder: the run's own
    files would be replaced (``--out RUN_DIR/inference``, the compiled model's folder, was deleted by the compiled
    model written after the export); and one inside another run.

    Args:
        final: The export folder.
        run: The run directory.

    Raises:
        ConfigError: It is the run directory or lies in it, and not under its ``exports/`` folder; or it is
            another run's folder or lies in one.
    """
    from floranet.evaluation.gradcam import runs_around  # here: that module imports TensorFlow

    target, home, exports = final.resolve(), run.resolve(), (run / EXPORTS_DIR).resolve()
    if target.is_relative_to(home) and not (target.is_relative_to(exports) and target != exports):
        raise ConfigError(
            f"out must be outside the run directory (its model and records), or a folder under its {EXPORTS_DIR}/ "
            f"folder. Received: out={str(final)!r}"
        )
    # Another run's export folder is that run's: replacing it left its exports.json vouching for the old model.
    check_outside(final, arg="out", inside=[(w, f) for w, f in runs_around(target) if f.resolve() != home])


def lock_file(final: Path) -> Path:
    """The lock of the export folder ``final``: ``.<name>.lock`` beside it (inside, it would be a file of the
    export's; and it is there only while an export holds it)."""
    return final.with_name(f".{final.name}.lock")


@contextlib.contextmanager
def holding(final: Path) -> Iterator[None]:
    """Holds the export folder ``final``'s lock while the block checks, replaces and records it; another export into
    it waits for that (saying so after a few seconds), then replaces this one's export and says so, as when the two
    run one after the other.

    Raises:
        OutputError: The lock file cannot be created, or its file system does not lock files.
    """
    if not final.name:  # the root folder, which check_replaceable refuses (it is never empty)
        yield
        return
    lock = lock_file(final)
    made = locks.missing_folders(lock.parent)  # folders the lock creates
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file in the way: the export's folder is what cannot be written
        raise OutputError(final, e) from None
    fd = locks.acquire(lock, what=f"its export into {final}", wait=True, say=log.warning)
    try:
        yield
    finally:
        locks.release(lock, fd)
        locks.remove_empty(made)  # those nothing was written to (an export refused before building)


def source_run(folder: Path) -> Path | None:
    """The run the export in ``folder`` was made from: its README.txt's ``Source:`` line names the run's model.keras
    (None: no export there, or no such line)."""
    if not is_export_folder(folder):
        return None
    text = (file_head(folder / README_FILE, _README_LIMIT) or b"").decode("utf-8", "surrogateescape")
    model = next((line[len(SOURCE) :].lstrip(" ") for line in text.split("\n") if line.startswith(SOURCE)), "")
    return Path(model).parent if Path(model).name == RunDir.MODEL else None


def listing(folder: Path) -> str:
    """README.txt's last section: the files of the export in ``folder`` (README.txt included), one a line, which a
    later export into the folder replaces, of whatever format."""
    files = {name for name in _entries(folder) if not (folder / name).is_dir()} | {README_FILE}
    head = f"{LISTING} (a later export into this folder replaces them; anything else in it stops that export):\n"
    return head + "".join(f"  {name}\n" for name in sorted(files))


def _earlier(folder: Path) -> tuple[set[str], bool]:
    """The files and folders the export in ``folder`` wrote, and whether that is all of them: the list its
    README.txt ends with (:func:`listing`); for an export from before that list, its format's top-level files only
    (False: what its ``model/`` folder holds is compared with the new export's once that is built)."""
    lines = (file_head(folder / README_FILE, _README_LIMIT) or b"").decode("utf-8", "replace").split("\n")
    start = next((i + 1 for i, line in enumerate(lines) if line.startswith(LISTING)), None)
    if start is not None:
        files: set[str] = set()
        for line in lines[start:]:
            if not line.startswith("  "):
                break
            files.add(line[2:])
        return files | {p.as_posix() for f in files for p in PurePosixPath(f).parents if p.name}, True
    fmt = lines[0].removeprefix(f"{MARKER}: ").split("-")[0]
    model = {MODEL_FILES[fmt]} if fmt in MODEL_FILES else set(MODEL_FILES.values())
    if fmt not in MODEL_FILES or fmt == "openvino":
        model.add("model.bin")
    return {README_FILE, RunDir.CLASS_NAMES, *model}, False


def _refuse(final: Path, others: list[str]) -> None:
    if others:
        raise ConfigError(
            f"out holds an earlier export and things it does not write ({', '.join(others[:3])}"
            f"{', ...' if len(others) > 3 else ''}); move them away, or choose another --out. Nothing was replaced. "
            f"Received: out={str(final)!r}"
        )


def check_replaceable(final: Path) -> None:
    """Checks, before anything is built, that an export may be placed in ``final``: a new or empty folder, or one
    holding an earlier floranet export (of any format) and nothing else, at any depth.

    Raises:
        ConfigError: It holds anything else (a file of the user's, which replacing the folder would delete).
    """
    if not (final.exists() or final.is_symlink()) or (final.is_dir() and not any(final.iterdir())):
        return
    if not (final.is_dir() and is_export_folder(final)):
        raise ConfigError(
            f"out exists, is not empty and is not a floranet export folder; refusing to replace it. "
            f"Received: out={str(final)!r}"
        )
    earlier, complete = _earlier(final)
    others = sorted(_entries(final) - earlier - set(UNKNOWN_FILES))
    # An export from before its list of files: what its model/ holds is compared with the new export's (place).
    _refuse(final, [o for o in others if complete or o.split("/")[0] not in earlier])


def place(tmp: Path, final: Path) -> None:
    """Renames the finished temp folder onto ``final``, replacing an older export only now.

    Raises:
        ConfigError: The older export's folder holds entries neither export writes (files of the user's, put
            there while this one was built, which replacing the folder would delete); nothing is replaced.
    """
    if not final.exists():
        os.replace(tmp, final)
        fsync_dir(final.parent)
        return
    # Its earlier export's files (of any format), and its ood.* when the run no longer has them.
    ours = _entries(tmp) | set(UNKNOWN_FILES) | _earlier(final)[0]
    _refuse(final, sorted(_entries(final) - ours))  # at any depth: a note inside saved_model/ was deleted with it
    old = final.with_name(f".{final.name}.old-{os.getpid()}-{time.monotonic_ns()}")
    os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:  # an OSError, or Ctrl-C between the two renames: the old export goes back
        os.replace(old, final)
        raise
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)
