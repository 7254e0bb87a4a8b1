"""Plots of results as PNG files: training history, confusion matrix, reliability (picture grids:
:func:`floranet.utils.figures.image_grid`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from floranet.utils.figures import new_figure, save_figure
from floranet.utils.text import printable

MAX_FIGURE_INCHES = 20.0  # 2,000 px at 100 dpi
MAX_ANNOTATED_CLASSES = 30
MAX_LABELLED_CLASSES = 60
# Past this many classes the two matrices stand one above the other: side by side, a page 1,100 px wide showed 30
# classes' 3,442 px picture at a third of its size, its numbers 3 px tall.
STACKED_CLASSES = 12
# Room for class names on a confusion matrix's axes, in inches per character of the longest (10 pt text), and at most.
NAME_INCHES_PER_CHARACTER = 0.09
MAX_NAME_INCHES = 6.0


def plain(text: str) -> str:
    """A class or folder name as matplotlib text: undecodable bytes and control characters escaped (printable), and
    "$" kept literal (two of them would start mathtext, which fails to draw on a name like "$\\x$")."""
    return printable(text).replace("$", r"\$")


def history_plot(history: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> None:
    """Accuracy and loss, train vs validation, one point per epoch, stages marked."""
    fig, (acc_ax, loss_ax) = new_figure(1, 2, size=(11, 4))
    x = np.arange(1, len(history) + 1)
    for ax, key, label in ((acc_ax, "accuracy", "Accuracy"), (loss_ax, "loss", "Loss")):
        for prefix, name in (("", "train"), ("val_", "validation")):
            ys = [row.get(prefix + key, np.nan) for row in history]
            ax.plot(x, ys, marker="o", label=name)
        stages = [row.get("stage") for row in history]
        for i in range(1, len(stages)):
            if stages[i] != stages[i - 1]:
                ax.axvline(i + 0.5, color="grey", linestyle="--", linewidth=1)
                ax.text(i + 0.6, ax.get_ylim()[1], "fine-tuning", va="top", fontsize=8, color="grey")
        ax.set_xlabel("epoch")
        ax.set_title(label)
        ax.legend()
    save_figure(fig, path)


def confusion_matrix_plot(
    cm: np.ndarray, class_names: Sequence[str], path: str | os.PathLike[str], *, title: str = "Validation set"
) -> None:
    """Counts and row-normalised matrices, side by side, or one above the other past :data:`STACKED_CLASSES`."""
    cm = np.asarray(cm)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.nan_to_num(cm / cm.sum(axis=1, keepdims=True))
    n = len(class_names)
    labels = [plain(c) for c in class_names]
    # Bounded size whatever the number of classes (500 classes once needed 23 GB); numbers in the cells and
    # class names on the axes only while they can be read.
    size = min(MAX_FIGURE_INCHES, max(4.0, 0.7 * n + 2))
    # Each panel widened by its longest class name (and heightened by the rotated ones below it): at a fixed
    # 2 * size + 1 inches, 17-20 character names of the right panel covered the left one's last column of counts.
    # The constrained layout keeps every panel's names clear of the other's, whatever their length.
    longest = max((len(name) for name in labels), default=0) if n <= MAX_LABELLED_CLASSES else 0
    names = min(MAX_NAME_INCHES, NAME_INCHES_PER_CHARACTER * longest)
    width, height = size + names, size + 0.7 * names
    stacked = n > STACKED_CLASSES
    fig, axes = new_figure(
        *((2, 1) if stacked else (1, 2)),
        size=(width, 2 * height + 1) if stacked else (2 * width + 1, height),
        layout="constrained",
    )
    for ax, matrix, name, fmt in ((axes[0], cm, "counts", "d"), (axes[1], norm, "normalised by true class", ".2f")):
        ax.imshow(matrix, cmap="Blues", vmin=0, interpolation="nearest")
        if n <= MAX_LABELLED_CLASSES:
            ax.set_xticks(range(n), labels, rotation=45, ha="right")
            ax.set_yticks(range(n), labels)
        ax.set_xlabel("predicted" if n <= MAX_LABELLED_CLASSES else f"predicted ({n} classes, index order)")
        ax.set_ylabel("true")
        ax.set_title(f"{plain(title)}: {name}")
        if n <= MAX_ANNOTATED_CLASSES:
            _annotate(ax, matrix, fmt)
    save_figure(fig, path)


def _annotate(ax: Any, matrix: np.ndarray, fmt: str) -> None:
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            colour = "white" if matrix[i, j] > threshold else "black"
            ax.text(j, i, format(matrix[i, j], fmt), ha="center", va="center", color=colour, fontsize=8)


def reliability_plot(
    bins: Sequence[dict[str, float]],
    path: str | os.PathLike[str],
    *,
    calibrated: Sequence[dict[str, float]] | None = None,
) -> None:
    """Reliability diagram: accuracy per confidence bin against the diagonal."""
    fig, ax = new_figure(size=(5, 5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    for series, label, colour in ((bins, "model", "tab:blue"), (calibrated, "after temperature scaling", "tab:orange")):
        if not series:
            continue
        pts = [(b["confidence"], b["accuracy"]) for b in series if b["count"]]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, marker="o", color=colour, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability diagram")
    ax.legend(loc="upper left")
    save_figure(fig, path)
