"""A look at the data: the tutorial's grid of sample images with their class names."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from floranet.utils.figures import new_figure, save_figure


def sample_grid(
    images: Sequence[np.ndarray], titles: Sequence[str], path: str | os.PathLike[str], *, columns: int = 3
) -> None:
    """A grid of images with their class names, as the tutorial's first figure."""
    n = max(1, len(images))
    rows = (n + columns - 1) // columns
    fig, axes = new_figure(rows, columns, size=(3 * columns, 3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles, strict=False):
        ax.imshow(np.clip(np.asarray(image), 0, 255).astype("uint8"))
        ax.set_title(title)
    save_figure(fig, path)
