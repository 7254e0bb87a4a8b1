"""Backbone registry: name → builder, the preprocessing its weights expect, and
where fine-tuning may start.

Our own ResNets come first; any ``keras.applications`` model is available by
its snake-case name (``mobilenet_v2``, ``efficientnet_b0``, ``convnext_tiny``,
``densenet121``, ...).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import keras

from floranet.errors import ConfigError, WeightsError
from floranet.models import resnet, weights as weights_lib

PREPROCESSING_MODES = ("caffe", "tf", "torch", "none")


@dataclass(frozen=True)
class Backbone:
    """How to build one backbone and feed it.

    Attributes:
        name: Registry name, e.g. ``"resnet50"``.
        preprocessing: What the weights expect of raw RGB 0–255 pixels:
            ``"caffe"`` (BGR, ImageNet mean subtracted), ``"tf"`` ([-1, 1]),
            ``"torch"`` ([0, 1] then ImageNet mean/std) or ``"none"`` (the
            model normalises inside itself).
        fine_tune_prefix: Fine-tuning unfreezes the first layer whose name
            starts with this prefix and every layer after it.
        source: ``"floranet"`` (our ResNets) or ``"keras"`` (keras.applications).
        has_imagenet_weights: Whether ``weights="imagenet"`` can be used.
        default_size: The image size its ImageNet weights were trained at.
    """

    name: str
    preprocessing: str
    fine_tune_prefix: str | None
    source: str
    has_imagenet_weights: bool = True
    default_size: int = 224
    builder: Callable[..., keras.Model] | None = None

    def build(
        self,
        input_shape: tuple[int | None, int | None, int],
        weights: str | os.PathLike[str] | None = None,
    ) -> keras.Model:
        """Builds the headless backbone with global average pooling."""
        if weights == "imagenet" and not self.has_imagenet_weights:
            raise WeightsError(
                f"Backbone {self.name!r} has no ImageNet weights. Use weights=None or "
                f"weights=PATH. Received: weights='imagenet'"
            )
        if self.builder is None:
            raise ConfigError(f"Backbone {self.name!r} has no builder.")
        return self.builder(input_shape=input_shape, weights=weights)


def _weights_arg(weights: Any) -> str | None:
    return weights if weights in (None, "imagenet") else os.fspath(weights)


def _floranet_builder(arch: str) -> Callable[..., keras.Model]:
    def build(*, input_shape: tuple, weights: Any) -> keras.Model:
        return resnet.build_resnet(arch, include_top=False, pooling="avg", input_shape=input_shape,
                                   weights=_weights_arg(weights))

    return build


# Our ResNets: weights' preprocessing and the first layer of the last stage.
_FLORANET = {
    "resnet18": ("torch", "conv5_", False, 224),
    "resnet34": ("torch", "conv5_", False, 224),
    "resnet50": ("caffe", "conv5_", True, 224),
    "resnet101": ("caffe", "conv5_", True, 224),
    "resnet152": ("caffe", "conv5_", True, 224),
    "resnet50v2": ("tf", "conv5_", True, 224),
    "resnet101v2": ("tf", "conv5_", True, 224),
    "resnet152v2": ("tf", "conv5_", True, 224),
    "resnet20": ("tf", "conv4_", False, 32),
    "resnet32": ("tf", "conv4_", False, 32),
    "resnet44": ("tf", "conv4_", False, 32),
    "resnet56": ("tf", "conv4_", False, 32),
    "resnet110": ("tf", "conv4_", False, 32),
}

# keras.applications module → the preprocessing its weights expect.
_KERAS_MODULE_PREPROCESSING = {
    "resnet": "caffe", "vgg16": "caffe", "vgg19": "caffe",
    "resnet_v2": "tf", "mobilenet": "tf", "mobilenet_v2": "tf", "inception_v3": "tf",
    "inception_resnet_v2": "tf", "xception": "tf", "nasnet": "tf",
    "densenet": "torch",
    "mobilenet_v3": "none", "efficientnet": "none", "efficientnet_v2": "none",
    "convnext": "none", "regnet": "none",
}
# Where fine-tuning starts for well-known keras.applications models (roughly the last stage).
_KERAS_FINE_TUNE = {
    "mobilenet_v2": "block_13_", "efficientnet_b0": "block6a_", "convnext_tiny": "convnext_tiny_stage_3",
    "densenet121": "conv5_", "resnet50": "conv5_",
}
_KERAS_SIZES = {"efficientnet_b0": 224, "convnext_tiny": 224, "mobilenet_v2": 224, "inception_v3": 299,
                "xception": 299}


def _keras_functions() -> dict[str, Callable[..., keras.Model]]:
    """``{"mobilenetv2": keras.applications.MobileNetV2, ...}`` keyed without underscores."""
    out = {}
    for attr in dir(keras.applications):
        fn = getattr(keras.applications, attr)
        if attr[:1].isupper() and callable(fn):
            out[attr.lower()] = fn
    return out


def _keras_backbone(name: str, fn: Callable[..., keras.Model]) -> Backbone:
    module = fn.__module__.rsplit(".", 1)[-1]
    mode = _KERAS_MODULE_PREPROCESSING.get(module)
    if mode is None:
        raise ConfigError(f"Backbone {name!r} (keras.applications.{fn.__name__}) has no known preprocessing.")

    def build(*, input_shape: tuple, weights: Any) -> keras.Model:
        with _network_timeout(10.0):
            try:
                return fn(include_top=False, pooling="avg", input_shape=input_shape,
                          weights=_weights_arg(weights))
            except Exception as e:  # Keras raises many types for download and file errors
                if weights is None:
                    raise
                raise WeightsError(
                    f"Cannot load {weights!r} weights for backbone {name!r}: {e}. Without network "
                    f"access, download the file named above on a machine that has it and put it in "
                    f"{weights_lib.cache_dir('models')}, or pass weights=PATH (CLI: --weights PATH)."
                ) from e

    return Backbone(name=name, preprocessing=mode, fine_tune_prefix=_KERAS_FINE_TUNE.get(name),
                    source="keras", default_size=_KERAS_SIZES.get(name, 224), builder=build)


@contextlib.contextmanager
def _network_timeout(seconds: float) -> Iterator[None]:
    # Keras downloads with urllib and no timeout; a default keeps offline runs from hanging.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def names() -> list[str]:
    """Our ResNets, then the keras.applications names known to work well."""
    return list(_FLORANET) + ["mobilenet_v2", "efficientnet_b0", "convnext_tiny", "densenet121",
                              "keras:<any keras.applications model in snake_case>"]


def get(name: str) -> Backbone:
    """Looks up a backbone by name.

    Args:
        name: One of :func:`names`, or any keras.applications model in
            snake case (``efficientnet_v2_s``). ``keras:resnet50`` forces
            Keras's implementation over ours.

    Raises:
        ConfigError: Unknown name; the message lists the valid ones.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"backbone must be a non-empty string. Received: backbone={name!r}")
    key = name.strip().lower()
    if key in _FLORANET:
        mode, prefix, imagenet, size = _FLORANET[key]
        return Backbone(name=key, preprocessing=mode, fine_tune_prefix=prefix, source="floranet",
                        has_imagenet_weights=imagenet, default_size=size, builder=_floranet_builder(key))
    keras_name = key.removeprefix("keras:")
    fn = _keras_functions().get(keras_name.replace("_", ""))
    if fn is None:
        raise ConfigError(f"Unknown backbone. Valid names: {', '.join(names())}. Received: backbone={name!r}")
    return _keras_backbone(keras_name, fn)


def fine_tune_start(model: keras.Model, backbone: Backbone) -> int:
    """Index in ``model.layers`` from which fine-tuning unfreezes layers."""
    layer_names = [layer.name for layer in model.layers]
    if backbone.fine_tune_prefix:
        for i, n in enumerate(layer_names):
            if n.startswith(backbone.fine_tune_prefix):
                return i
    return int(len(layer_names) * 0.75)  # unknown model: its last quarter
