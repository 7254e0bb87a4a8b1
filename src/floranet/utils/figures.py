"""Figures without a display: matplotlib's object API (no pyplot state), saved as PNG atomically."""

from __future__ import annotations

import os
from typing import Any

from matplotlib.figure import Figure

from floranet.utils.files import atomic_path


def new_figure(
    rows: int = 1, columns: int = 1, *, size: tuple[float, float], squeeze: bool = True
) -> tuple[Figure, Any]:
    """A figure and its axes (as ``pyplot.subplots`` returns them)."""
    fig = Figure(figsize=size)
    return fig, fig.subplots(rows, columns, squeeze=squeeze)


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> None:
    """Writes ``fig`` as a PNG, atomically."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
