"""Tiny generated image folders for fast tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# A random-init ResNet-20 at 32 px in TensorFlow fp32: the training settings of fast tests.
TINY_MODEL = {"backbone": "resnet20", "weights": "none", "image_size": 32, "runtime": "tensorflow", "precision": "fp32"}

COLOURS = [(220, 40, 40), (40, 200, 60), (50, 60, 220), (230, 210, 40), (160, 60, 200)]


def make_image_folder(
    root: Path,
    *,
    classes: int = 3,
    per_class: int = 8,
    size: tuple[int, int] = (40, 32),
    seed: int = 0,
    names: list[str] | None = None,
) -> Path:
    """Writes ``classes`` folders of JPEGs, each class a distinct colour with noise, so models can learn it."""
    rng = np.random.default_rng(seed)
    names = names or [f"class_{c}" for c in range(classes)]
    for c, name in enumerate(names[:classes]):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.array(COLOURS[c % len(COLOURS)], dtype=np.float32)
            pixels = base + rng.normal(0, 25, size=(size[1], size[0], 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype("uint8")).save(folder / f"img_{i:03d}.jpg", quality=90)
    return root
