"""Random augmentation of training batches, in the input pipeline (never inside the model)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras

from floranet.errors import ConfigError


@dataclass(frozen=True)
class Augment:
    """Random augmentation of training batches (Keras preprocessing layers).

    Applied in the tf.data pipeline, never inside the model, so exported
    models contain no random layers. Pixel values stay in 0..255.

    Attributes:
        flip: Random horizontal flips.
        rotation: Max rotation as a fraction of a full turn (0 disables).
        zoom: Max zoom in/out as a fraction of the size (0 disables).
        contrast: Max contrast change factor (0 disables).
    """

    flip: bool = True
    rotation: float = 0.1
    zoom: float = 0.1
    contrast: float = 0.1

    def __post_init__(self) -> None:
        if not isinstance(self.flip, bool):
            raise ConfigError(f"flip must be a bool. Received: flip={self.flip!r}")
        for name in ("rotation", "zoom", "contrast"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ConfigError(f"{name} must be a number in [0, 1). Received: {name}={value!r}")

    def layers(self, seed: int) -> list[keras.layers.Layer]:
        """Builds the seeded Keras layers (fresh state: same seed, same sequence)."""
        kw: dict[str, Any] = {"dtype": "float32"}  # ignore any global mixed-precision policy
        geo = {**kw, "data_format": "channels_last"}  # ignore keras.json's image_data_format
        out: list[keras.layers.Layer] = []
        if self.flip:
            out.append(keras.layers.RandomFlip("horizontal", seed=seed, **geo))
        if self.rotation:
            out.append(keras.layers.RandomRotation(self.rotation, seed=seed + 1, **geo))
        if self.zoom:
            out.append(keras.layers.RandomZoom(self.zoom, seed=seed + 2, **geo))
        if self.contrast:
            out.append(keras.layers.RandomContrast(self.contrast, value_range=(0, 255), seed=seed + 3, **kw))
        return out
