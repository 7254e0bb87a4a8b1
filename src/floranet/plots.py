"""Plots as PNG files (matplotlib, no display needed); every write is atomic."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from floranet.io import atomic_path  # noqa: E402


def _save(fig: Any, path: str | os.PathLike[str]) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
    plt.close(fig)


def sample_grid(images: Sequence[np.ndarray], titles: Sequence[str], path: str | os.PathLike[str],
                *, columns: int = 3) -> None:
    """A grid of images with their class names, as the tutorial's first figure."""
    n = max(1, len(images))
    rows = (n + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles):
        ax.imshow(np.clip(np.asarray(image), 0, 255).astype("uint8"))
        ax.set_title(title)
    _save(fig, path)


def history_plot(history: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> None:
    """Accuracy and loss, train vs validation, one point per epoch, stages marked."""
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4))
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
    _save(fig, path)


def confusion_matrix_plot(cm: np.ndarray, class_names: Sequence[str], path: str | os.PathLike[str],
                          *, title: str = "Validation set") -> None:
    """Counts and row-normalised matrices side by side."""
    cm = np.asarray(cm)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.nan_to_num(cm / cm.sum(axis=1, keepdims=True))
    size = max(4.0, 0.7 * len(class_names) + 2)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size))
    for ax, matrix, name, fmt in ((axes[0], cm, "counts", "d"), (axes[1], norm, "normalised by true class", ".2f")):
        ax.imshow(matrix, cmap="Blues", vmin=0)
        ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
        ax.set_yticks(range(len(class_names)), class_names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{title}: {name}")
        threshold = matrix.max() / 2 if matrix.size else 0
        for i in range(matrix.shape[0]):
            for j in range(matrix.shape[1]):
                ax.text(j, i, format(matrix[i, j], fmt), ha="center", va="center",
                        color="white" if matrix[i, j] > threshold else "black", fontsize=8)
    _save(fig, path)


def reliability_plot(bins: Sequence[dict[str, float]], path: str | os.PathLike[str], *,
                     calibrated: Sequence[dict[str, float]] | None = None) -> None:
    """Reliability diagram: accuracy per confidence bin against the diagonal."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    for series, label, colour in ((bins, "model", "tab:blue"), (calibrated, "after temperature scaling", "tab:orange")):
        if not series:
            continue
        pts = [(b["confidence"], b["accuracy"], b["count"]) for b in series if b["count"]]
        if pts:
            xs, ys, ns = zip(*pts)
            ax.plot(xs, ys, marker="o", color=colour, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability diagram")
    ax.legend(loc="upper left")
    _save(fig, path)


def gallery(images: Sequence[np.ndarray], titles: Sequence[str], path: str | os.PathLike[str], *,
            overlays: Sequence[np.ndarray | None] | None = None, columns: int = 3) -> None:
    """Images (optionally with a heat-map overlay, values in 0..1) and captions."""
    n = max(1, len(images))
    rows = (n + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 3.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, image, title) in enumerate(zip(axes.flat, images, titles)):
        ax.imshow(np.clip(np.asarray(image), 0, 255).astype("uint8"))
        if overlays is not None and overlays[i] is not None:
            h, w = np.asarray(image).shape[:2]
            ax.imshow(overlays[i], cmap="jet", alpha=0.4, extent=(0, w, h, 0), interpolation="bilinear")
        ax.set_title(title, fontsize=8)
    _save(fig, path)
