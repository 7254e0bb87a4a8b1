"""Random augmentation of training batches, in the input pipeline (never inside the model)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import tensorflow as tf

from floranet.errors import ConfigError


@dataclass(frozen=True)
class Augment:
    """Random augmentation of training batches: flip, rotation, zoom and contrast, as Keras's layers do.

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

    def apply(self, images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """Augments a float32 batch ``[B, H, W, 3]`` (0..255), each image its own draw.

        Stateless: the output depends only on ``images`` and ``seed`` (an int64 pair), so batches augment in
        parallel and reproducibly. Flip, rotation and zoom are one affine resampling (bilinear, reflected
        edges, as Keras's layers), not one per transform.
        """
        n = tf.shape(images)[0]
        h, w = tf.cast(tf.shape(images)[1], tf.float32), tf.cast(tf.shape(images)[2], tf.float32)

        def uniform(k: int, shape: Any, low: float, high: float) -> tf.Tensor:
            return tf.random.stateless_uniform(shape, tf.stack([seed[0], seed[1] * 8 + k]), low, high)

        theta = uniform(1, [n], -2 * math.pi * self.rotation, 2 * math.pi * self.rotation)
        scale = uniform(2, [n], 1 - self.zoom, 1 + self.zoom)
        flip = uniform(0, [n], 0.0, 1.0) < 0.5 if self.flip else tf.zeros([n], tf.bool)
        sign = tf.where(flip, -1.0, 1.0)  # mirrors x: flipped, then rotated and zoomed
        # Output pixel (x, y) samples input (a0 x + a1 y + a2, b0 x + b1 y + b2): about the centre.
        cos, sin = tf.cos(theta) * scale, tf.sin(theta) * scale
        a0, a1, b0, b1 = cos * sign, -sin, sin * sign, cos
        cx, cy = (w - 1) / 2, (h - 1) / 2
        a2, b2 = cx - a0 * cx - a1 * cy, cy - b0 * cx - b1 * cy
        zeros = tf.zeros_like(cos)
        images = tf.raw_ops.ImageProjectiveTransformV3(
            images=images,
            transforms=tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1),
            output_shape=tf.shape(images)[1:3],
            fill_value=0.0,
            interpolation="BILINEAR",
            fill_mode="REFLECT",
        )
        if self.contrast:
            factor = uniform(3, [n, 1, 1, 1], 1 - self.contrast, 1 + self.contrast)
            mean = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
            images = (images - mean) * factor + mean
        return tf.clip_by_value(images, 0.0, 255.0)
