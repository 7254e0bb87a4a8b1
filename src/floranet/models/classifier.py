"""The classifier: raw RGB pixels in, class probabilities out.

Layout (every part a plain Keras layer, so a saved ``.keras`` file reloads
with ``keras.saving.load_model`` in safe mode and no custom objects)::

    image (H, W, 3, RGB 0..255)
      → preprocessing layers the backbone's weights expect
      → backbone (headless, average pooled; called with training=False)
      → head: Flatten → Dense(512, relu) → [Dropout] → Dense(n, softmax)

The head is its own sub-model named ``head`` so stage 1 can train it on cached
backbone features and drop it back in unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import keras
import numpy as np
from keras import layers

from floranet.config import parse_image_size
from floranet.errors import ConfigError
from floranet.models import backbones

IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)  # Caffe-style ResNet weights
IMAGENET_RGB_MEAN = (0.485, 0.456, 0.406)
IMAGENET_RGB_STD = (0.229, 0.224, 0.225)

BACKBONE_LAYER = "backbone"
HEAD_LAYER = "head"


def preprocessing_layers(mode: str) -> list[layers.Layer]:
    """Layers that turn raw RGB 0..255 into what a backbone's weights expect."""
    if mode == "caffe":
        # RGB→BGR and mean subtraction as one frozen 1x1 convolution: exact in
        # float32 (a permutation plus a bias) and a plain, serialisable layer.
        conv = layers.Conv2D(3, 1, name="preprocess_caffe", trainable=False)
        kernel = np.zeros((1, 1, 3, 3), dtype="float32")
        for out_channel, in_channel in enumerate((2, 1, 0)):
            kernel[0, 0, in_channel, out_channel] = 1.0
        conv.build((None, None, None, 3))
        conv.set_weights([kernel, -np.asarray(IMAGENET_BGR_MEAN, dtype="float32")])
        return [conv]
    if mode == "tf":
        return [layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess_tf")]
    if mode == "torch":
        return [
            layers.Rescaling(1.0 / 255.0, name="preprocess_torch_scale"),
            layers.Normalization(
                mean=IMAGENET_RGB_MEAN, variance=np.square(IMAGENET_RGB_STD).tolist(), name="preprocess_torch_norm"
            ),
        ]
    if mode == "none":
        return []
    raise ConfigError(f"Unknown preprocessing mode. Valid modes: caffe, tf, torch, none. Received: mode={mode!r}")


def build_head(
    feature_dim: int,
    num_classes: int,
    *,
    units: int = 512,
    dropout: float = 0.0,
    flatten: bool = True,
    name: str = HEAD_LAYER,
) -> keras.Sequential:
    """The tutorial's head as a sub-model: Flatten → Dense(units, relu) → Dense(n, softmax)."""
    if not isinstance(units, int) or units < 0:
        raise ConfigError(f"head_units must be an int >= 0 (0: no hidden layer). Received: head_units={units!r}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1). Received: dropout={dropout!r}")
    stack: list[layers.Layer] = [keras.Input(shape=(feature_dim,), name="features")]
    if flatten:
        stack.append(layers.Flatten(name="flatten"))
    if units:
        stack.append(layers.Dense(units, activation="relu", name="dense"))
    if dropout:
        stack.append(layers.Dropout(dropout, name="dropout"))
    # float32 output keeps softmax stable under a mixed-precision policy.
    stack.append(layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions"))
    return keras.Sequential(stack, name=name)


def build_classifier(
    backbone: str = "resnet50",
    num_classes: int = 5,
    *,
    image_size: int | Sequence[int] = 180,
    weights: str | os.PathLike[str] | None = "imagenet",
    head_units: int = 512,
    dropout: float = 0.0,
    flatten: bool = True,
) -> keras.Model:
    """Builds backbone + head taking raw RGB pixels 0–255 of size ``image_size``.

    Args:
        backbone: A name from :func:`floranet.models.backbones.names`.
        num_classes: Number of output classes (>= 2).
        image_size: Input height and width, an int or ``(h, w)``.
        weights: ``"imagenet"``, ``None`` (random init) or a weights file for the backbone.
        head_units: Hidden units of the head's Dense layer; 0 for a linear head.
        dropout: Dropout before the output layer.
        flatten: Keep the tutorial's Flatten (a no-op after pooling).

    Returns:
        A functional model with layers ``backbone`` and ``head``; the backbone is
        frozen (``trainable=False``) and always runs BatchNorm in inference mode.
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ConfigError(f"num_classes must be an int >= 2. Received: num_classes={num_classes!r}")
    h, w = parse_image_size(image_size)
    spec = backbones.get(backbone)
    base = spec.build(input_shape=(h, w, 3), weights=weights)
    base.name = BACKBONE_LAYER
    base.trainable = False

    inputs = keras.Input(shape=(h, w, 3), name="image")
    x = inputs
    for layer in preprocessing_layers(spec.preprocessing):
        x = layer(x)
    # training=False documents the intent; Keras 3 lets an outer fit() override it,
    # so unfreeze_top() also keeps every BatchNorm layer non-trainable (inference mode).
    features = base(x, training=False)
    head = build_head(int(features.shape[-1]), num_classes, units=head_units, dropout=dropout, flatten=flatten)
    outputs = head(features)
    return keras.Model(inputs, outputs, name=f"floranet_{spec.name}")


def unfreeze_top(model: keras.Model, backbone: str | backbones.Backbone) -> int:
    """Unfreezes the backbone from its registry's fine-tuning layer onwards.

    BatchNorm layers stay frozen: with ``trainable=False`` Keras runs them in
    inference mode, so their ImageNet statistics survive fine-tuning on small
    batches.

    Returns:
        The number of backbone layers left trainable.
    """
    spec = backbones.get(backbone) if isinstance(backbone, str) else backbone
    base = backbone_of(model)
    start = backbones.fine_tune_start(base, spec)
    base.trainable = True
    count = 0
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= start and not isinstance(layer, keras.layers.BatchNormalization)
        count += int(layer.trainable and bool(layer.weights))
    return count


def backbone_of(model: keras.Model) -> keras.Model:
    """The backbone sub-model of a classifier built here."""
    return model.get_layer(BACKBONE_LAYER)


def head_of(model: keras.Model) -> keras.Model:
    """The head sub-model of a classifier built here."""
    return model.get_layer(HEAD_LAYER)


def feature_extractor(model: keras.Model) -> keras.Model:
    """Raw pixels → pooled backbone features, sharing the classifier's layers and weights."""
    inputs = keras.Input(shape=model.inputs[0].shape[1:], name="image")
    x = inputs
    for layer in model.layers[1:]:
        if layer.name == HEAD_LAYER:
            break
        x = layer(x, training=False) if layer.name == BACKBONE_LAYER else layer(x)
    return keras.Model(inputs, x, name="features")


def probabilities_and_features(model: keras.Model) -> keras.Model:
    """Raw pixels → two outputs, ``(probabilities, pooled backbone features)``, sharing ``model``'s layers
    (the run's compiled model: its first output stays what ``model`` outputs)."""
    extractor = feature_extractor(model)
    features = extractor.outputs[0]
    probs = head_of(model)(features)
    return keras.Model(extractor.inputs, [probs, keras.ops.cast(features, probs.dtype)], name="probabilities_features")


def with_features(model: keras.Model) -> keras.Model:
    """Raw pixels → ``[probabilities | pooled backbone features]`` in one call, sharing ``model``'s layers.

    One concatenated output (columns ``0..n-1`` the probabilities, the rest the features), so every
    runtime that runs a single-output model runs it unchanged; ``model`` itself keeps its one output.
    """
    both = probabilities_and_features(model)
    joined = layers.Concatenate(name="probabilities_and_features")(both.outputs)
    return keras.Model(both.inputs, joined, name="probabilities_and_features")
