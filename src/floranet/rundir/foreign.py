"""Folders floranet wrote that are not runs: an export folder is recognised by its README.txt's first words, so
that a command given one says what it is and what to do instead (the export package writes that marker)."""

from __future__ import annotations

from pathlib import Path

from floranet.utils.files import file_head

EXPORT_README = "README.txt"
EXPORT_MARKER = "floranet export"  # README.txt's first line: "floranet export: <format>[-<quantize>]"


def is_export_folder(folder: Path) -> bool:
    """Whether ``folder`` holds an export floranet wrote (its README.txt starts with the marker)."""
    marker = EXPORT_MARKER.encode()  # its first bytes only, as bytes: a README.txt of the user's may be large
    return file_head(folder / EXPORT_README, len(marker)) == marker


def export_note(folder: Path) -> str | None:
    """For a command given an export folder where it needs a run: what the folder is and what to do instead (None
    when it is not an export)."""
    if not is_export_folder(folder):
        return None
    first = (file_head(folder / EXPORT_README, 200) or b"").split(b"\n")[0].decode("utf-8", "replace")
    return (
        f"{folder} is a model exported by `floranet export` ({first.removeprefix(EXPORT_MARKER + ': ')}), not a run "
        f"directory: use it with its format's own runtime as its {EXPORT_README} shows, or give the run it was "
        "exported from (its Source line)."
    )
