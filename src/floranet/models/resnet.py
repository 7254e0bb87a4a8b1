"""floranet's own ResNet family, built from plain Keras layers.

Three families, one builder each, architectures as data:

* v1 (He et al. 2015): ResNet-18/34 with basic blocks in torchvision's layout
  (no convolution bias, BatchNorm epsilon 1e-5), so torchvision's ImageNet
  weights could be ported; ResNet-50/101/152 with bottleneck blocks, layer for
  layer as ``keras.applications.ResNet50/101/152`` (convolutions with bias).
* v2 (He et al. 2016, pre-activation): ResNet-50V2/101V2/152V2, as
  ``keras.applications.ResNet50V2/101V2/152V2``.
* CIFAR (He et al. 2015, section 4.2): ResNet-20/32/44/56/110, three stages of
  16/32/64 filters, option A (parameter-free) shortcuts.

Layer names follow keras.applications (``conv2_block1_1_conv``), so the
official ImageNet weight files load into these models unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
from keras import layers

from floranet.config import MIN_IMAGE_SIZE, is_int, parse_image_size
from floranet.errors import ConfigError
from floranet.models import registry
from floranet.models import weights as weights_lib

BN_EPSILON = 1.001e-5  # keras.applications' value, so its BatchNorm weights match exactly
TORCH_BN_EPSILON = 1e-5

IMAGENET_FILTERS = (64, 128, 256, 512)
CIFAR_FILTERS = (16, 32, 64)


# --- blocks -----------------------------------------------------------------


def basic_block(x: Any, filters: int, *, stride: int, name: str) -> Any:
    """Two 3x3 convolutions (torchvision's BasicBlock), no convolution bias."""
    in_channels = x.shape[-1]
    if stride != 1 or in_channels != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_0_conv")(x)
        shortcut = _bn(shortcut, f"{name}_0_bn", TORCH_BN_EPSILON)
    else:
        shortcut = x
    x = _conv3x3(x, filters, stride=stride, name=f"{name}_1")
    x = _bn(x, f"{name}_1_bn", TORCH_BN_EPSILON)
    x = layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = _conv3x3(x, filters, stride=1, name=f"{name}_2")
    x = _bn(x, f"{name}_2_bn", TORCH_BN_EPSILON)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation("relu", name=f"{name}_out")(x)


def bottleneck_block(x: Any, filters: int, *, stride: int, name: str) -> Any:
    """1x1 → 3x3 → 1x1 (4x filters), as keras.applications' v1 (stride on the first 1x1)."""
    if stride != 1 or x.shape[-1] != 4 * filters:
        shortcut = layers.Conv2D(4 * filters, 1, strides=stride, name=f"{name}_0_conv")(x)
        shortcut = _bn(shortcut, f"{name}_0_bn")
    else:
        shortcut = x
    x = layers.Conv2D(filters, 1, strides=stride, name=f"{name}_1_conv")(x)
    x = _bn(x, f"{name}_1_bn")
    x = layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = layers.Conv2D(filters, 3, padding="same", name=f"{name}_2_conv")(x)
    x = _bn(x, f"{name}_2_bn")
    x = layers.Activation("relu", name=f"{name}_2_relu")(x)
    x = layers.Conv2D(4 * filters, 1, name=f"{name}_3_conv")(x)
    x = _bn(x, f"{name}_3_bn")
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation("relu", name=f"{name}_out")(x)


def preact_block(x: Any, filters: int, *, stride: int, name: str, project: bool = False) -> Any:
    """Pre-activation bottleneck (v2); stride on the 3x3, as keras.applications."""
    preact = _bn(x, f"{name}_preact_bn")
    preact = layers.Activation("relu", name=f"{name}_preact_relu")(preact)
    if project:
        shortcut = layers.Conv2D(4 * filters, 1, strides=stride, name=f"{name}_0_conv")(preact)
    elif stride > 1:
        shortcut = layers.MaxPooling2D(1, strides=stride, name=f"{name}_0_pool")(x)
    else:
        shortcut = x
    x = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_1_conv")(preact)
    x = _bn(x, f"{name}_1_bn")
    x = layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = layers.ZeroPadding2D(padding=((1, 1), (1, 1)), name=f"{name}_2_pad")(x)
    x = layers.Conv2D(filters, 3, strides=stride, use_bias=False, name=f"{name}_2_conv")(x)
    x = _bn(x, f"{name}_2_bn")
    x = layers.Activation("relu", name=f"{name}_2_relu")(x)
    x = layers.Conv2D(4 * filters, 1, name=f"{name}_3_conv")(x)
    return layers.Add(name=f"{name}_out")([shortcut, x])


def cifar_block(x: Any, filters: int, *, stride: int, name: str) -> Any:
    """Basic block with option A shortcut: subsample and zero-pad channels, no parameters."""
    in_channels = x.shape[-1]
    shortcut = x
    if stride != 1:
        shortcut = layers.MaxPooling2D(1, strides=stride, name=f"{name}_0_pool")(shortcut)
    if in_channels != filters:
        shortcut = _pad_channels(shortcut, filters - in_channels, name=f"{name}_0")
    if stride != 1:
        # Padding on both sides, as PyTorch's padding=1: "same" pads only the bottom and right of an even size,
        # which centres the strided 3x3 on odd pixels while the shortcut keeps the even ones.
        x = layers.ZeroPadding2D(padding=1, name=f"{name}_1_pad")(x)
    x = layers.Conv2D(
        filters,
        3,
        strides=stride,
        padding="valid" if stride != 1 else "same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=f"{name}_1_conv",
    )(x)
    x = _bn(x, f"{name}_1_bn", TORCH_BN_EPSILON)
    x = layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = layers.Conv2D(
        filters, 3, padding="same", use_bias=False, kernel_initializer="he_normal", name=f"{name}_2_conv"
    )(x)
    x = _bn(x, f"{name}_2_bn", TORCH_BN_EPSILON)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation("relu", name=f"{name}_out")(x)


def _bn(x: Any, name: str, epsilon: float = BN_EPSILON) -> Any:
    return layers.BatchNormalization(axis=-1, epsilon=epsilon, name=name)(x)


def _conv3x3(x: Any, filters: int, *, stride: int, name: str) -> Any:
    # Explicit symmetric padding matches torchvision's padding=1 at stride 2,
    # where Keras's "same" would pad bottom/right only.
    if stride > 1:
        x = layers.ZeroPadding2D(padding=1, name=f"{name}_pad")(x)
        return layers.Conv2D(filters, 3, strides=stride, use_bias=False, name=f"{name}_conv")(x)
    return layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)


def _pad_channels(x: Any, extra: int, *, name: str) -> Any:
    # Channels moved to a spatial axis so ZeroPadding2D can pad them; plain
    # layers keep the model loadable without custom objects.
    x = layers.Permute((3, 1, 2), name=f"{name}_to_cf")(x)
    x = layers.ZeroPadding2D(padding=((extra // 2, extra - extra // 2), (0, 0)), name=f"{name}_pad")(x)
    return layers.Permute((2, 3, 1), name=f"{name}_to_cl")(x)


# --- stems and stacks -------------------------------------------------------


def _imagenet_stem(x: Any, *, kind: str) -> Any:
    torch_layout = kind == "basic"
    x = layers.ZeroPadding2D(padding=((3, 3), (3, 3)), name="conv1_pad")(x)
    x = layers.Conv2D(64, 7, strides=2, use_bias=not torch_layout, name="conv1_conv")(x)
    if kind != "preact":
        x = _bn(x, "conv1_bn", TORCH_BN_EPSILON if torch_layout else BN_EPSILON)
        x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.ZeroPadding2D(padding=((1, 1), (1, 1)), name="pool1_pad")(x)
    return layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)


def _imagenet_stacks(x: Any, kind: str, blocks: tuple[int, ...]) -> Any:
    for stage, (filters, n) in enumerate(zip(IMAGENET_FILTERS, blocks, strict=True)):
        prefix = f"conv{stage + 2}"
        first_stride = 1 if stage == 0 else 2
        for i in range(1, n + 1):
            name = f"{prefix}_block{i}"
            if kind == "basic":
                x = basic_block(x, filters, stride=first_stride if i == 1 else 1, name=name)
            elif kind == "bottleneck":
                x = bottleneck_block(x, filters, stride=first_stride if i == 1 else 1, name=name)
            else:
                # v2 downsamples in the *last* block of each stage but the last stage.
                last_stride = 2 if stage < len(blocks) - 1 else 1
                x = preact_block(x, filters, stride=last_stride if i == n else 1, name=name, project=i == 1)
    if kind == "preact":
        x = _bn(x, "post_bn")
        x = layers.Activation("relu", name="post_relu")(x)
    return x


def _cifar_body(x: Any, blocks: tuple[int, ...]) -> Any:
    x = layers.Conv2D(16, 3, padding="same", use_bias=False, kernel_initializer="he_normal", name="conv1_conv")(x)
    x = _bn(x, "conv1_bn", TORCH_BN_EPSILON)
    x = layers.Activation("relu", name="conv1_relu")(x)
    for stage, (filters, n) in enumerate(zip(CIFAR_FILTERS, blocks, strict=True)):
        for i in range(1, n + 1):
            stride = 2 if stage > 0 and i == 1 else 1
            x = cifar_block(x, filters, stride=stride, name=f"conv{stage + 2}_block{i}")
    return x


# --- the one builder --------------------------------------------------------


def build_resnet(
    arch: str,
    *,
    include_top: bool = True,
    weights: str | None = "imagenet",
    input_tensor: Any = None,
    input_shape: tuple[int | None, int | None, int] | None = None,
    pooling: str | None = None,
    classes: int | None = None,
    classifier_activation: str | None = "softmax",
    name: str | None = None,
) -> keras.Model:
    """Builds any ResNet of the registry (:mod:`floranet.models.registry`), with keras.applications' arguments.

    Args:
        arch: A registered ResNet, e.g. ``"resnet50"``.
        include_top: Add global average pooling and the ``predictions`` Dense layer.
        weights: ``"imagenet"`` (official Keras file, downloaded and verified),
            ``None`` (random init) or a path to a weights file.
        input_tensor: Optional Keras tensor to use as the image input.
        input_shape: ``(h, w, 3)``; defaults to (224, 224, 3), or (32, 32, 3) for CIFAR
            models. Height and width may be ``None`` when ``include_top`` is False.
        pooling: ``None``, ``"avg"`` or ``"max"`` when ``include_top`` is False.
        classes: Output classes with ``include_top``; 1000 (ImageNet) or 10 (CIFAR) by default.
        classifier_activation: Activation of the ``predictions`` layer.
        name: Model name; ``arch`` by default.

    Returns:
        A functional ``keras.Model``.

    Raises:
        ConfigError: An argument is invalid.
        WeightsError: Weights cannot be obtained or do not fit.
    """
    info = registry.resnet(arch)
    kind, blocks = str(info.block), info.depths
    if pooling not in (None, "avg", "max"):
        raise ConfigError(f"pooling must be None, 'avg' or 'max'. Received: pooling={pooling!r}")
    if weights is not None and not isinstance(weights, str | os.PathLike):
        raise ConfigError(f"weights must be 'imagenet', None or a weights file's path. Received: weights={weights!r}")
    cifar = kind == "cifar"
    if classes is None:
        classes = 10 if cifar else 1000
    if not is_int(classes) or classes < 1:
        raise ConfigError(f"classes must be a positive int. Received: classes={classes!r}")
    classes = int(classes)  # np.int64(5) as image_size takes it
    if weights == "imagenet" and include_top and classes != 1000:
        raise ConfigError(
            f"With weights='imagenet' and include_top=True, classes must be 1000. Received: classes={classes}"
        )
    check_activation(classifier_activation)  # before the layers are built
    input_shape = check_input_shape(input_shape, (32, 32, 3) if cifar else (224, 224, 3), include_top)

    inputs = layers.Input(shape=input_shape, name="input_layer") if input_tensor is None else input_tensor
    x = _cifar_body(inputs, blocks) if cifar else _imagenet_stacks(_imagenet_stem(inputs, kind=kind), kind, blocks)

    return finish_model(inputs, x, arch, include_top, pooling, classes, classifier_activation, name, weights)


def finish_model(
    inputs: Any,
    x: Any,
    arch: str,
    include_top: bool,
    pooling: str | None,
    classes: int,
    classifier_activation: Any,
    name: str | None,
    weights: str | None,
) -> keras.Model:
    """The keras.applications ending shared by floranet's backbones: top or pooling, the model, its weights (each
    builder has checked ``classifier_activation`` before building its layers: :func:`check_activation`)."""
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)
    model = keras.Model(inputs, x, name=name or arch)
    if weights is not None:
        weights_lib.load_into(model, arch, weights, include_top=include_top)
    return model


def check_activation(activation: Any) -> None:
    """ConfigError unless ``activation`` is None, a Keras activation's name or a callable (a typo was Keras's
    ValueError from deep inside the build)."""
    try:
        ok = activation is None or callable(activation) or (isinstance(activation, str) and bool(activation))
        ok = ok and keras.activations.get(activation) is not None
    except (ValueError, TypeError):
        ok = False
    if not ok:
        raise ConfigError(
            "classifier_activation must be None, a Keras activation's name (softmax, sigmoid, ...) or a callable. "
            f"Received: classifier_activation={activation!r}"
        )


def check_input_shape(shape: Any, default: tuple[int, int, int], include_top: bool) -> tuple[Any, ...]:
    """``input_shape`` checked as keras.applications' builders take it (``default`` when None)."""
    if shape is None:
        return default
    # Any sequence, a NumPy array too (lists were taken, np.array([40, 48, 3]) refused); not text.
    dims = tuple(shape) if isinstance(shape, Sequence | np.ndarray) and not isinstance(shape, str | bytes) else ()
    ok = len(dims) == 3 and is_int(dims[2]) and dims[2] == 3
    sides = [d for d in dims[:2] if d is not None] if ok else []
    ok = ok and (not include_top or len(sides) == 2)
    try:  # each side given is checked; None (any size) only without the top
        for side in sides if ok else []:
            parse_image_size(side, name="input_shape")
    except ConfigError:
        ok = False
    if not ok:
        raise ConfigError(
            f"input_shape must be (height, width, 3) with sizes >= {MIN_IMAGE_SIZE} (None allowed only "
            f"without the top). Received: input_shape={shape!r}"
        )
    return tuple(None if d is None else int(d) for d in dims)  # Python ints, as Keras's Input shows them


_BUILDER_DOC = """Builds {title}{what}, with keras.applications' arguments (as ``keras.applications.ResNet50``).

    Args:
        include_top: Add global average pooling and the ``predictions`` Dense layer.
        weights: {source}``None`` (random init) or a weights file's path.
        input_tensor: Optional Keras tensor to use as the image input.
        input_shape: ``(h, w, 3)`` (any sequence of ints, a NumPy array too); {size} by default. Height and width
            may be ``None`` when ``include_top`` is False.
        pooling: ``None``, ``"avg"`` or ``"max"`` when ``include_top`` is False.
        classes: Output classes with ``include_top``.
        classifier_activation: Activation of the ``predictions`` layer (a Keras activation's name or a callable).
        name: The model's name.

    Returns:
        A functional ``keras.Model``.

    Raises:
        ConfigError: An argument is invalid.
        WeightsError: Weights cannot be obtained or do not fit.
    """


def _factory(arch: str) -> Callable[..., keras.Model]:
    """``arch``'s builder: keras.applications' parameters in their order, its name in errors and ``help()``."""
    info = registry.resnet(arch)
    # Architectures with official ImageNet files default to them, as keras.applications does.
    default_weights = "imagenet" if info.has_imagenet_weights else None
    cifar = str(info.block) == "cifar"

    def build(
        include_top: bool = True,
        weights: str | None = default_weights,
        input_tensor: Any = None,
        input_shape: Any = None,
        pooling: str | None = None,
        classes: int = 10 if cifar else 1000,
        classifier_activation: Any = "softmax",
        name: str = arch,
    ) -> keras.Model:
        return build_resnet(
            arch,
            include_top=include_top,
            weights=weights,
            input_tensor=input_tensor,
            input_shape=input_shape,
            pooling=pooling,
            classes=classes,
            classifier_activation=classifier_activation,
            name=name,
        )

    depth = int("".join(c for c in arch.removeprefix("resnet").removesuffix("v2") if c.isdigit()))
    title = f"ResNet-{depth}{'V2' if arch.endswith('v2') else ''}"
    what = " (CIFAR, He et al. 2015 section 4.2)" if cifar else f" ({depth} layers)"
    source = '``"imagenet"`` (the official Keras file, downloaded and verified), ' if default_weights else ""
    build.__name__ = build.__qualname__ = arch
    build.__doc__ = _BUILDER_DOC.format(
        title=title, what=what, source=source, size="(32, 32, 3)" if cifar else "(224, 224, 3)"
    )
    return build


resnet18 = _factory("resnet18")
resnet34 = _factory("resnet34")
resnet50 = _factory("resnet50")
resnet101 = _factory("resnet101")
resnet152 = _factory("resnet152")
resnet50v2 = _factory("resnet50v2")
resnet101v2 = _factory("resnet101v2")
resnet152v2 = _factory("resnet152v2")
resnet20 = _factory("resnet20")
resnet32 = _factory("resnet32")
resnet44 = _factory("resnet44")
resnet56 = _factory("resnet56")
resnet110 = _factory("resnet110")
