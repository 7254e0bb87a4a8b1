"""Prediction rows as a terminal table, CSV, JSON or Parquet."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from floranet.config import OUTPUT_FORMATS, check_choice
from floranet.data.scan import IMAGE_EXTENSIONS
from floranet.errors import ConfigError
from floranet.inference.predictor import Prediction
from floranet.utils.files import atomic_path, atomic_write_text, check_replaceable
from floranet.utils.optional import require
from floranet.utils.text import csv_text, formula_safe, printable, utf8

TEXT_FORMATS = tuple(f for f in OUTPUT_FORMATS if f != "parquet")
_SUFFIX_FORMATS = {".parquet": "parquet", ".csv": "csv", ".json": "json"}
TABLE_TITLE = "# floranet predictions\n"


def format_predictions(rows: Sequence[Prediction], fmt: str = "table", *, columns: int | None = None) -> str:
    """Renders rows as an aligned table, CSV or JSON.

    The table shows file names, classes and errors through :func:`floranet.utils.text.printable`, so a hostile
    file name cannot forge lines or send escape sequences to a terminal. CSV and JSON hold them as they are, to be
    read back (CSV quotes a name with a comma, quote or line break; a name that is not UTF-8 shows its odd bytes
    as ``\\xNN`` in both).

    Args:
        rows: The predictions.
        fmt: table, csv or json.
        columns: Class columns of a CSV (see :func:`class_columns`); None: as many as the longest row has.
    """
    check_choice("format", fmt, TEXT_FORMATS)
    if fmt == "json":
        return json.dumps([_utf8_row(r) for r in rows], indent=2, ensure_ascii=False) + "\n"
    k = _columns(rows, columns)
    if fmt == "csv":
        header = [
            "file",
            *[c for i in range(1, k + 1) for c in (f"class_{i}", f"probability_{i}")],
            "low_confidence",
            "unknown",
            "ood_score",
            "error",
        ]
        return csv_text([header, *(_csv_row(r, k) for r in rows)])
    lines = []
    width = max((len(printable(r.file)) for r in rows), default=4)
    for r in rows:
        file = printable(r.file)
        if r.error:
            lines.append(f"{file:<{width}}  ERROR: {printable(r.error)}")
            continue
        top = "  ".join(f"{printable(c)} {p:6.1%}" for c, p in r.top_k)
        unknown = f"UNKNOWN (ood score {r.ood_score:.3f}); closest: " if r.unknown and r.ood_score is not None else ""
        lines.append(f"{file:<{width}}  {unknown}{top}{'  (low confidence)' if r.low_confidence else ''}")
    return "\n".join(lines) + "\n"


def terminal_text(text: str) -> str:
    """CSV or JSON text for a terminal: each line through :func:`floranet.utils.text.printable`, so a file name's
    escape sequence or bidi character, which CSV and JSON hold as they are, is shown, not run by the terminal."""
    return "\n".join(printable(line) for line in text.split("\n"))


def write_predictions(
    rows: Sequence[Prediction], fmt: str | None, output: str | os.PathLike[str], *, columns: int | None = None
) -> None:
    """Writes rows atomically as ``fmt`` (one of :data:`floranet.config.OUTPUT_FORMATS`; None: from the
    suffix of ``output``, .csv, .json or .parquet, else table), a CSV or Parquet file with ``columns`` class
    columns (see :func:`class_columns`; None: as many as the longest row has)."""
    fmt = fmt or format_for(output)
    if fmt != "parquet":
        # A table file starts with a title line, the header that lets a rerun know it as predictions to replace.
        text = format_predictions(rows, fmt, columns=columns)
        atomic_write_text(output, (TABLE_TITLE if fmt == "table" else "") + text)
        return
    pa = require("pyarrow", "format='parquet'")
    pq = require("pyarrow.parquet", "format='parquet'")
    k = _columns(rows, columns)
    table: dict[str, Any] = {"file": pa.array([utf8(r.file) for r in rows], pa.string())}
    for i in range(k):
        names = [utf8(r.top_k[i][0]) if i < len(r.top_k) else None for r in rows]
        table[f"class_{i + 1}"] = pa.array(names, pa.string())
        table[f"probability_{i + 1}"] = pa.array(
            [r.top_k[i][1] if i < len(r.top_k) else None for r in rows], pa.float64()
        )
    table["low_confidence"] = pa.array([r.low_confidence for r in rows], pa.bool_())
    table["unknown"] = pa.array([r.unknown for r in rows], pa.bool_())
    table["ood_score"] = pa.array([r.ood_score for r in rows], pa.float64())
    table["error"] = pa.array([None if r.error is None else utf8(r.error) for r in rows], pa.string())
    with atomic_path(output) as tmp:
        pq.write_table(pa.table(table), tmp)


def class_columns(top_k: int, classes: int) -> int:
    """The class columns of a CSV or Parquet file of a run with ``classes`` classes at ``top_k``: the most a row can
    hold, whatever the rows hold, so every file of that run and top-k has one layout (one of failed rows only too)."""
    return max(1, min(top_k, classes))


def _columns(rows: Sequence[Prediction], columns: int | None) -> int:
    """``columns``, else as many as the longest row has: at least one, so a file of failed rows has a header."""
    return max(1, columns) if columns is not None else max([len(r.top_k) for r in rows] + [1])


def _csv_row(r: Prediction, k: int) -> list[str]:
    """A CSV row of ``k`` class columns."""
    cells = [c for name, p in r.top_k[:k] for c in (_csv_text(name), f"{p:.6f}")]
    cells += [""] * (2 * k - len(cells))
    score = "" if r.ood_score is None else f"{r.ood_score:.6f}"
    flags = [str(r.low_confidence).lower(), str(r.unknown).lower(), score]
    return [_csv_text(r.file), *cells, *flags, _csv_text(r.error or "")]


def _csv_text(text: str) -> str:
    """A text cell: the name as JSON holds it (:func:`floranet.utils.text.utf8`: a control character stays itself,
    so the file reads back to the real name; escaping it as ``\\x0a`` without escaping ``\\`` made two names one
    cell), with a leading ``= + - @`` quoted (``'=x.jpg``), so a spreadsheet shows it instead of running it."""
    return formula_safe(utf8(text))


def _utf8_row(r: Prediction) -> dict[str, Any]:
    """A row for JSON: a file name that is not UTF-8 (and an error quoting it) with its odd bytes as ``\\xNN``."""
    row = r.to_dict()
    row["file"] = utf8(row["file"])
    row["top_k"] = [{**t, "class": utf8(t["class"])} for t in row["top_k"]]
    if row.get("error"):
        row["error"] = utf8(row["error"])
    return row


def check_output(
    output: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    run_dir: str | os.PathLike[str] | None = None,
    fmt: str | None = None,
) -> Path:
    """Checks, before any image is predicted, that ``output`` can be written as ``fmt`` (None: from its suffix)
    and replaces nothing of anyone's.

    Raises:
        ConfigError: ``output`` is one of ``inputs``, has an image's suffix (it would replace a photo), lies in
            ``run_dir`` (its model and records), or is an existing file that is not predictions floranet wrote.
        MissingDependencyError: Parquet without pyarrow.
        OutputError: It cannot be written.
    """
    if (fmt or format_for(output)) == "parquet":
        require("pyarrow.parquet", "format='parquet'")
    final = Path(output)
    shown = printable(os.fspath(output))
    if final.suffix.lower() in IMAGE_EXTENSIONS or any(
        Path(i).is_file() and final.exists() and final.samefile(i) for i in inputs
    ):
        raise ConfigError(
            "output must be a new predictions file (.csv, .json, .parquet, or a table), not an image or one of the "
            f"inputs: writing it would replace a photo. Received: output={shown!r}"
        )
    inside = [] if run_dir is None else [("the run directory (its model and records)", Path(run_dir))]
    return check_replaceable(
        final,
        arg="output",
        ours="a floranet predictions file (CSV, JSON or Parquet written by predict)",
        is_ours=lambda head: _is_predictions(final, head),
        inside=inside,
        head=64,
    )


def _is_predictions(path: Path, head: bytes) -> bool:
    """Whether ``path``, whose first bytes are ``head``, holds predictions as :func:`write_predictions` writes
    them (CSV, JSON, Parquet, or a table under its title line)."""
    if head.startswith(b"PAR1"):
        try:
            pq = require("pyarrow.parquet", "format='parquet'")
            return {"file", "unknown", "ood_score", "error"} <= set(pq.read_schema(path).names)
        except Exception:  # noqa: BLE001 - unreadable, or not Parquet after all: not ours
            return False
    text = head.decode("utf-8", "replace")
    # "file,low_confidence,": a CSV of failed rows only, as floranet wrote them before they had a class column.
    heads = ("file,class_1,", "file,low_confidence,", "[]", TABLE_TITLE)
    return text.startswith(heads) or re.match(r'\[\s*\{\s*"file":', text) is not None


def format_for(output: str | os.PathLike[str]) -> str:
    """The output format a file name asks for by its suffix (.csv, .json, .parquet; else table)."""
    return _SUFFIX_FORMATS.get(Path(output).suffix.lower(), "table")
