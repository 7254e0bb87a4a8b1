"""A run's ``history.csv``: one row per epoch of both training stages.

Training writes it (:func:`history_text`); the training curves and the MLflow export read it through
:meth:`floranet.rundir.RunDir.history` (:func:`parse_history`), which refuses a damaged file, naming the row and
the cell, instead of handing its readers a list of cells or a word where a number belongs.
"""

from __future__ import annotations

import contextlib
import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from floranet.errors import ModelError

# Columns that hold words (the stage's name); every other cell is a number or empty.
TEXT_COLUMNS = frozenset({"stage"})
_EXTRA = "\x00extra"  # DictReader's key for the cells of a row past its header's


def history_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """The CSV of ``rows``: a column for every key any row has, in the order they first appear."""
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def parse_history(text: str, path: Path, fix: str) -> list[dict[str, Any]]:
    """The rows of ``text`` (the file ``path``): numbers as int or float, empty or missing cells as None.

    Args:
        text: The file's text.
        path: The file, for messages.
        fix: The end of a message, what to do about a damaged file.

    Raises:
        ModelError: A row has more cells than the header, a cell that is no number (outside
            :data:`TEXT_COLUMNS`), or an epoch that is no whole number >= 0; the message names the row and cell.
    """
    try:
        rows = list(csv.DictReader(io.StringIO(text), restkey=_EXTRA))
    except csv.Error as e:  # a cell past the csv module's field limit (Python 3.11 reads NUL bytes)
        raise ModelError(f"{path} is damaged and cannot be read ({e}). {fix}") from None
    out = []
    for number, row in enumerate(rows, start=2):  # row 1 is the header
        if _EXTRA in row:
            raise ModelError(f"{path} is damaged: row {number} has more cells than the header. {fix}")
        values = {k: (v or None) if k in TEXT_COLUMNS else _number(v) for k, v in row.items()}
        epoch = values.get("epoch")
        if epoch is not None and not _whole_number(epoch):
            problem = f"epoch={epoch!r}, not a whole number >= 0"
        else:
            problem = next((f"{k}={v!r}, not a number" for k, v in values.items() if _is_word(k, v)), "")
        if problem:
            raise ModelError(f"{path} is damaged: row {number} has {problem}. {fix}")
        out.append(values)
    return out


def _whole_number(value: Any) -> bool:
    return isinstance(value, int | float) and float(value).is_integer() and value >= 0


def _is_word(column: str, value: Any) -> bool:
    return column not in TEXT_COLUMNS and isinstance(value, str)


def _number(text: str | None) -> Any:
    for kind in (int, float):
        with contextlib.suppress(ValueError):
            return kind(text or "")  # "" is neither
    return text or None  # an empty cell (or a missing one): no value
