"""floranet's MobileNetV2 (alpha 1.0): keras.applications' layers and names, torchvision's padding.

``keras.applications.MobileNetV2`` pads every stride-2 layer "same" way: at even input sizes one pixel on the
bottom/right only. torchvision's MobileNetV2 (whose ImageNet weights floranet ships, see
:mod:`floranet.models.registry`) pads one pixel on every side. Here every stride-2 layer is an explicit
``ZeroPadding2D(1)`` followed by a ``"valid"`` convolution, so the model computes what torchvision's does at
*any* image size (at sizes 32k+1 the two paddings coincide). Everything else is keras.applications'
layer for layer, with the same names (``Conv1``, ``block_13_expand``, ...) and the same weighted layers in
the same order: a weights file of either loads into the other (BatchNorm epsilon 1e-3, as Keras's).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers

from floranet.errors import ConfigError
from floranet.models.resnet import check_activation, check_input_shape, finish_model

ARCH = "mobilenet_v2"
BN_EPSILON = 1e-3  # keras.applications' value; the conversion folds torchvision's 1e-5 into the variances
BN_MOMENTUM = 0.999
LAST_FILTERS = 1280
# (expansion, output filters, repeats, first stride) per stage, as in the paper's Table 2.
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _bn(x: Any, name: str) -> Any:
    return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)(x)


def inverted_residual(x: Any, *, expansion: int, filters: int, stride: int, block_id: int) -> Any:
    """One inverted residual block; block 0 (no expansion) is keras.applications' ``expanded_conv_``."""
    inputs = x
    in_channels = int(x.shape[-1])
    prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
    if block_id:
        x = layers.Conv2D(expansion * in_channels, 1, use_bias=False, name=f"{prefix}expand")(x)
        x = _bn(x, f"{prefix}expand_BN")
        x = layers.ReLU(6.0, name=f"{prefix}expand_relu")(x)
    if stride == 2:  # symmetric, as torchvision; Keras pads bottom/right only at even sizes
        x = layers.ZeroPadding2D(1, name=f"{prefix}pad")(x)
    x = layers.DepthwiseConv2D(
        3, strides=stride, padding="same" if stride == 1 else "valid", use_bias=False, name=f"{prefix}depthwise"
    )(x)
    x = _bn(x, f"{prefix}depthwise_BN")
    x = layers.ReLU(6.0, name=f"{prefix}depthwise_relu")(x)
    x = layers.Conv2D(filters, 1, use_bias=False, name=f"{prefix}project")(x)
    x = _bn(x, f"{prefix}project_BN")
    if stride == 1 and in_channels == filters:
        return layers.Add(name=f"{prefix}add")([inputs, x])
    return x


def features(inputs: Any) -> Any:
    """The convolutional body: image (already normalised) → 1280-channel map at 1/32 of the input size."""
    x = layers.ZeroPadding2D(1, name="Conv1_pad")(inputs)
    x = layers.Conv2D(32, 3, strides=2, padding="valid", use_bias=False, name="Conv1")(x)
    x = _bn(x, "bn_Conv1")
    x = layers.ReLU(6.0, name="Conv1_relu")(x)
    block_id = 0
    for expansion, filters, repeats, first_stride in STAGES:
        for i in range(repeats):
            stride = first_stride if i == 0 else 1
            x = inverted_residual(x, expansion=expansion, filters=filters, stride=stride, block_id=block_id)
            block_id += 1
    x = layers.Conv2D(LAST_FILTERS, 1, use_bias=False, name="Conv_1")(x)
    x = _bn(x, "Conv_1_bn")
    return layers.ReLU(6.0, name="out_relu")(x)


def build_mobilenet_v2(
    *,
    include_top: bool = True,
    weights: str | None = "imagenet",
    input_tensor: Any = None,
    input_shape: tuple[int | None, int | None, int] | None = None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation: str | None = "softmax",
    name: str | None = None,
) -> keras.Model:
    """Builds MobileNetV2 (alpha 1.0) with keras.applications' arguments and symmetric stride-2 padding.

    Args:
        include_top: Add global average pooling and the ``predictions`` Dense layer.
        weights: ``"imagenet"`` (the bundled file, sha256-verified, headless: needs ``include_top=False``),
            ``None`` (random init) or a path to a weights file.
        input_tensor: Optional Keras tensor to use as the image input.
        input_shape: ``(h, w, 3)``, default (224, 224, 3); ``None`` sizes allowed without the top.
        pooling: ``None``, ``"avg"`` or ``"max"`` when ``include_top`` is False.
        classes: Output classes with ``include_top``.
        classifier_activation: Activation of the ``predictions`` layer.
        name: Model name; ``"mobilenet_v2"`` by default.

    Returns:
        A functional ``keras.Model`` taking images normalised as torchvision's (``preprocessing="torch"``).

    Raises:
        ConfigError: An argument is invalid.
        WeightsError: Weights cannot be found or do not fit.
    """
    if pooling not in (None, "avg", "max"):
        raise ConfigError(f"pooling must be None, 'avg' or 'max'. Received: pooling={pooling!r}")
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 1:
        raise ConfigError(f"classes must be a positive int. Received: classes={classes!r}")
    check_activation(classifier_activation)  # before the layers are built
    shape = check_input_shape(input_shape, (224, 224, 3), include_top)
    inputs = layers.Input(shape=shape, name="input_layer") if input_tensor is None else input_tensor
    x = features(inputs)
    return finish_model(inputs, x, ARCH, include_top, pooling, classes, classifier_activation, name, weights)
