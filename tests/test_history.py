"""history.csv: what training writes reads back as written, and a damaged file is refused naming its row and cell."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from floranet.errors import ModelError
from floranet.rundir import RunDir
from floranet.rundir.history import history_text

ROWS = [
    {"stage": "stage1", "epoch": 1, "stage_epoch": 1, "loss": 1.25, "val_loss": float("nan")},
    {"stage": "stage2", "epoch": 2, "stage_epoch": 1, "loss": 0.5, "val_loss": 0.75, "learning_rate": 1e-05},
]


def _run(tmp_path: Path, text: str | bytes) -> RunDir:
    path = tmp_path / RunDir.HISTORY
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return RunDir(tmp_path)


def test_rows_read_back_as_written_with_a_column_for_every_key(tmp_path: Path) -> None:
    got = _run(tmp_path, history_text(ROWS)).history()
    assert [r["stage"] for r in got] == ["stage1", "stage2"]
    assert [r["epoch"] for r in got] == [1, 2] and all(isinstance(r["epoch"], int) for r in got)
    assert math.isnan(got[0]["val_loss"]) and got[1]["val_loss"] == 0.75
    assert got[0]["learning_rate"] is None and got[1]["learning_rate"] == 1e-05  # a key the first row lacks


def test_no_history_file_is_no_rows(tmp_path: Path) -> None:
    assert RunDir(tmp_path).history() == []


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ("stage1,1,1,0.5,9", "row 3 has more cells than the header"),  # was a TypeError from a list of cells
        ("stage1,x2,1,0.5", "row 3 has epoch='x2', not a whole number >= 0"),
        ("stage1,1.5,1,0.5", "row 3 has epoch=1.5, not a whole number >= 0"),
        ("stage1,-1,1,0.5", "row 3 has epoch=-1, not a whole number >= 0"),
        ("stage1,2,1,abc", "row 3 has loss='abc', not a number"),
        ("stage1,2\x00,1,0.5", "row 3 has epoch='2\\x00', not a whole number >= 0"),  # Python 3.11's csv reads NUL
    ],
)
def test_a_damaged_row_is_refused_naming_the_file_row_and_cell(tmp_path: Path, row: str, problem: str) -> None:
    run = _run(tmp_path, f"stage,epoch,stage_epoch,loss\nstage1,1,1,1.0\n{row}\n")
    expected = f"{tmp_path / RunDir.HISTORY} is damaged: {problem}. Put it back from a copy of the run; it is written"
    with pytest.raises(ModelError, match=re.escape(expected)):
        run.history()


@pytest.mark.parametrize("data", [b"\xff\xfe\x00binary", b"stage,epoch\n" + b"1" * 200_000 + b",1\n"])
def test_a_file_that_is_no_csv_text_is_refused(tmp_path: Path, data: bytes) -> None:
    """Not UTF-8, or a cell past the csv module's field limit (128 KiB)."""
    with pytest.raises(ModelError, match=re.escape(f"{tmp_path / RunDir.HISTORY} is damaged and cannot be read")):
        _run(tmp_path, data).history()


def test_empty_cells_are_no_value_and_a_short_row_is_read(tmp_path: Path) -> None:
    got = _run(tmp_path, "stage,epoch,loss,val_loss\n,,0.5\n").history()
    assert got == [{"stage": None, "epoch": None, "loss": 0.5, "val_loss": None}]
