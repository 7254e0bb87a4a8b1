"""Export folders: recognising one floranet wrote, and putting a finished export in its place."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from floranet.errors import ConfigError
from floranet.export.common import EXPORTS_DIR, MARKER, README_FILE
from floranet.export.unknown import FILES as UNKNOWN_FILES
from floranet.utils.files import check_outside, file_head, fsync_dir


def _entries(folder: Path) -> set[str]:
    """Every file and folder under ``folder``, as relative POSIX paths (links not followed)."""
    found: set[str] = set()
    for top, dirs, files in os.walk(folder):
        rel = Path(top).relative_to(folder)
        found.update((rel / name).as_posix() for name in (*dirs, *files))
    return found


def is_export_folder(folder: Path) -> bool:
    """Whether ``folder`` holds an export floranet wrote (its README.txt starts with the marker)."""
    marker = MARKER.encode()  # its first bytes only, as bytes: a README.txt of the user's may be large, or not UTF-8
    return file_head(folder / README_FILE, len(marker)) == marker


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


def place(tmp: Path, final: Path) -> None:
    """Renames the finished temp folder onto ``final``, replacing an older export only now.

    Raises:
        ConfigError: The older export's folder holds entries this export does not write (files of the user's,
            which replacing the folder would delete); nothing is replaced.
    """
    if not final.exists():
        os.replace(tmp, final)
        fsync_dir(final.parent)
        return
    ours = _entries(tmp) | set(UNKNOWN_FILES)  # an earlier export's ood.* when the run no longer has them
    others = sorted(_entries(final) - ours)  # at any depth: a note inside saved_model/ was deleted with it
    if others:
        raise ConfigError(
            f"out holds an earlier export and things it does not write ({', '.join(others[:3])}"
            f"{', ...' if len(others) > 3 else ''}); move them away, or choose another --out. Nothing was replaced. "
            f"Received: out={str(final)!r}"
        )
    old = final.with_name(f".{final.name}.old-{os.getpid()}-{time.monotonic_ns()}")
    os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:  # an OSError, or Ctrl-C between the two renames: the old export goes back
        os.replace(old, final)
        raise
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)
