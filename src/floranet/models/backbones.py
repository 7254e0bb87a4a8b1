"""Backbones by name: the registry's entries (:mod:`floranet.models.registry`) made buildable.

Our own ResNets and MobileNetV2 come first; any ``keras.applications`` model is
available by its snake-case name (``efficientnet_b0``, ``convnext_tiny``,
``densenet121``, ...), and ``keras:<name>`` forces Keras's implementation over ours
(``keras:mobilenet_v2``: Keras's MobileNetV2 and its downloadable weights).
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
from floranet.models import mobilenet, registry, resnet
from floranet.models import weights as weights_lib
from floranet.models.registry import BackboneInfo

# keras.applications module → the preprocessing its weights expect (for models not in the registry).
_KERAS_MODULE_PREPROCESSING = {
    "resnet": "caffe",
    "vgg16": "caffe",
    "vgg19": "caffe",
    "resnet_v2": "tf",
    "mobilenet": "tf",
    "mobilenet_v2": "tf",
    "inception_v3": "tf",
    "inception_resnet_v2": "tf",
    "xception": "tf",
    "nasnet": "tf",
    "densenet": "torch",
    "mobilenet_v3": "none",
    "efficientnet": "none",
    "efficientnet_v2": "none",
    "convnext": "none",
    "regnet": "none",
}
_KERAS_SIZES = {"inception_v3": 299, "xception": 299, "inception_resnet_v2": 299}


@dataclass(frozen=True)
class Backbone:
    """A registry entry with its builder.

    Attributes:
        info: What the registry says of it (preprocessing, fine-tune layer, weights, ...).
        builder: ``(input_shape=, weights=)`` → headless, average-pooled Keras model.
    """

    info: BackboneInfo
    builder: Callable[..., keras.Model]

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def preprocessing(self) -> str:
        return self.info.preprocessing

    @property
    def fine_tune_prefix(self) -> str | None:
        return self.info.fine_tune_prefix

    @property
    def has_imagenet_weights(self) -> bool:
        return self.info.has_imagenet_weights

    def build(
        self, input_shape: tuple[int | None, int | None, int], weights: str | os.PathLike[str] | None = None
    ) -> keras.Model:
        """Builds the headless backbone with global average pooling."""
        self.check_imagenet(weights)
        return self.builder(input_shape=input_shape, weights=_weights_arg(weights))

    def check_imagenet(self, weights: str | os.PathLike[str] | None) -> None:
        """Refuses ``weights="imagenet"`` for a backbone that has none.

        Raises:
            WeightsError: It has no ImageNet weights.
        """
        if weights == "imagenet" and not self.has_imagenet_weights:
            raise WeightsError(
                f"Backbone {self.name!r} has no ImageNet weights. Use weights=None or "
                f"weights=PATH. Received: weights='imagenet'"
            )


def _weights_arg(weights: Any) -> str | None:
    return weights if weights in (None, "imagenet") else os.fspath(weights)


def _resnet_builder(arch: str) -> Callable[..., keras.Model]:
    def build(*, input_shape: tuple[int | None, int | None, int], weights: str | None) -> keras.Model:
        return resnet.build_resnet(arch, include_top=False, pooling="avg", input_shape=input_shape, weights=weights)

    return build


def _mobilenet_builder(*, input_shape: tuple[int | None, int | None, int], weights: str | None) -> keras.Model:
    return mobilenet.build_mobilenet_v2(include_top=False, pooling="avg", input_shape=input_shape, weights=weights)


def _keras_builder(name: str, fn: Callable[..., keras.Model]) -> Callable[..., keras.Model]:
    def build(*, input_shape: tuple[int | None, int | None, int], weights: str | None) -> keras.Model:
        with _network_timeout(10.0):
            try:
                return fn(include_top=False, pooling="avg", input_shape=input_shape, weights=weights)
            except Exception as e:  # Keras raises many types for download and file errors
                if weights is None or isinstance(e, ValueError) and _too_small(fn, input_shape):
                    _refuse_size(name, input_shape, e)
                    raise
                hint = (  # a download that failed; a file of the user's just does not fit
                    f" Without network access, download the file named above on a machine that has it and put "
                    f"it in {weights_lib.cache_dir('models')}, or pass weights=PATH (CLI: --weights PATH). "
                    + weights_lib.offline_hint()
                    if weights == "imagenet"
                    else ""
                )
                raise WeightsError(f"Cannot load {weights!r} weights for backbone {name!r}: {e}.{hint}") from e

    return build


def _too_small(fn: Callable[..., keras.Model], input_shape: tuple[int | None, int | None, int]) -> bool:
    """Whether the model cannot be built at ``input_shape`` even without weights (then the size is at fault)."""
    try:
        fn(include_top=False, pooling="avg", input_shape=input_shape, weights=None)
    except ValueError:
        return True
    return False


def _refuse_size(name: str, input_shape: tuple[int | None, int | None, int], error: Exception) -> None:
    """Turns Keras's refusal of an input size (Inception needs 75 px, Xception 71) into a ConfigError."""
    if isinstance(error, ValueError):
        raise ConfigError(
            f"backbone {name!r} cannot take images of {input_shape[0]}x{input_shape[1]} px ({error}); choose a "
            f"larger image_size or another backbone. Received: image_size={input_shape[:2]}"
        ) from None


def check_input_size(name: str, image_size: tuple[int, int]) -> None:
    """Refuses an image size the backbone cannot take, by building it without weights (Keras's models only:
    floranet's own take any size from the smallest allowed). ``compare`` asks before anything trains.

    Raises:
        ConfigError: The size is too small for it.
    """
    backbone = get(name)
    if backbone.info.family in ("resnet", "mobilenet"):
        return
    backbone.build((*image_size, 3), None)
    keras.backend.clear_session()


@contextlib.contextmanager
def _network_timeout(seconds: float) -> Iterator[None]:
    # Keras downloads with urllib and no timeout; a default keeps offline runs from hanging.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _keras_functions() -> dict[str, Callable[..., keras.Model]]:
    """``{"mobilenetv2": keras.applications.MobileNetV2, ...}`` keyed without underscores."""
    return {
        attr.lower(): getattr(keras.applications, attr)
        for attr in dir(keras.applications)
        if attr[:1].isupper() and callable(getattr(keras.applications, attr))
    }


def _keras_info(name: str, fn: Callable[..., keras.Model]) -> BackboneInfo:
    """A registry-style entry for a keras.applications model the registry does not list."""
    module = fn.__module__.rsplit(".", 1)[-1]
    mode = _KERAS_MODULE_PREPROCESSING.get(module)
    if mode is None:
        raise ConfigError(f"Backbone {name!r} (keras.applications.{fn.__name__}) has no known preprocessing.")
    # keras:resnet50 has our resnet50's layer names, so its fine-tune layer; however the model is spelled
    # (resnet_50, keras:EfficientNetB0), the registered entry for the same Keras function.
    ours = (
        registry.lookup(name.removeprefix("keras:"))
        or registry.lookup(fn.__name__)
        or next((i for i in registry.REGISTRY.values() if i.keras_name == fn.__name__), None)
    )
    return BackboneInfo(
        name,
        "keras",
        mode,
        ours.fine_tune_prefix if ours else None,
        _KERAS_SIZES.get(module, 224),
        "keras",
        keras_name=fn.__name__,
    )


def names() -> list[str]:
    """The registered names, then how to name any other keras.applications model."""
    return [*registry.REGISTRY, "keras:<any keras.applications model in snake_case>"]


def get(name: str) -> Backbone:
    """Looks up a backbone by name.

    Args:
        name: One of :func:`names`, or any keras.applications model in
            snake case (``efficientnet_v2_s``). ``keras:resnet50`` forces
            Keras's implementation over ours.

    Raises:
        ConfigError: Unknown name; the message lists the valid ones.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"backbone must be a non-empty string. Received: backbone={name!r}")
    key = name.strip().lower()
    info = registry.lookup(key)
    if info is not None and info.family == "resnet":
        return Backbone(info, _resnet_builder(key))
    if info is not None and info.family == "mobilenet":
        return Backbone(info, _mobilenet_builder)
    keras_name = key.removeprefix("keras:")
    functions = _keras_functions()
    fn = functions.get(registry.keras_key(key) or "")
    if fn is None:
        raise ConfigError(f"Unknown backbone. Valid names: {', '.join(names())}. Received: backbone={name!r}")
    if info is None or key.startswith("keras:"):
        # Named as given: "keras:mobilenet_v2" (Keras's model and weights) is not floranet's "mobilenet_v2",
        # and the name keys the feature caches.
        info = _keras_info(key if key.startswith("keras:") else keras_name, fn)
    # Messages name it as given: "keras:mobilenet_v2" (Keras's weights) is not floranet's "mobilenet_v2".
    return Backbone(info, _keras_builder(key if key.startswith("keras:") else info.name, fn))


def fine_tune_start(model: keras.Model, backbone: Backbone) -> int:
    """Index in ``model.layers`` from which fine-tuning unfreezes layers."""
    layer_names = [layer.name for layer in model.layers]
    if backbone.fine_tune_prefix:
        for i, n in enumerate(layer_names):
            if n.startswith(backbone.fine_tune_prefix):
                return i
    return int(len(layer_names) * 0.75)  # unknown model: its last quarter
