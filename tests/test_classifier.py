"""The classifier: preprocessing inside, frozen backbone in inference mode, clean save/load."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from floranet.errors import ConfigError
from floranet.models import backbones, classifier

PIXELS = np.random.default_rng(0).uniform(0, 255, size=(3, 48, 40, 3)).astype("float32")


@pytest.mark.parametrize(
    "mode, reference",
    [
        ("caffe", keras.applications.resnet50.preprocess_input),
        ("tf", keras.applications.mobilenet_v2.preprocess_input),
        ("torch", keras.applications.densenet.preprocess_input),
    ],
)
def test_preprocessing_layers_equal_keras_preprocess_input(mode, reference) -> None:
    x = PIXELS
    for layer in classifier.preprocessing_layers(mode):
        x = layer(x)
    np.testing.assert_allclose(np.asarray(x), reference(PIXELS.copy()), atol=1e-4)


def test_classifier_layout_and_tutorial_head() -> None:
    model = classifier.build_classifier("resnet18", 5, image_size=(48, 40), weights=None)
    assert model.input_shape == (None, 48, 40, 3) and model.output_shape == (None, 5)
    head = classifier.head_of(model)
    assert [type(layer).__name__ for layer in head.layers] == ["Flatten", "Dense", "Dense"]
    assert head.layers[1].units == 512 and head.layers[2].activation.__name__ == "softmax"
    assert not classifier.backbone_of(model).trainable
    probs = model.predict(PIXELS, verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_head_options() -> None:
    model = classifier.build_classifier("resnet20", 3, image_size=32, weights=None, head_units=0, dropout=0.3)
    assert [type(layer).__name__ for layer in classifier.head_of(model).layers] == ["Flatten", "Dropout", "Dense"]


def test_fine_tuning_trains_the_top_only_and_keeps_batchnorm_statistics() -> None:
    model = classifier.build_classifier("resnet18", 2, image_size=32, weights=None)
    base = classifier.backbone_of(model)
    n_trainable = classifier.unfreeze_top(model, "resnet18")
    assert n_trainable > 0
    early = base.get_layer("conv2_block1_1_conv")
    late = base.get_layer("conv5_block2_2_conv")
    bns = [layer for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)]
    before = {id(v): np.array(v) for layer in [early, late, *bns] for v in layer.weights}
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    model.fit(PIXELS[:, :32, :32], np.array([0, 1, 0]), epochs=2, verbose=0)
    changed = lambda layer: any(  # noqa: E731
        not np.array_equal(before[id(v)], np.array(v)) for v in layer.weights
    )
    assert changed(late) and not changed(early)
    assert not any(changed(bn) for bn in bns)  # statistics and scale untouched


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50", "mobilenet_v2"])
def test_keras_round_trip_in_safe_mode_without_custom_objects(backbone, tmp_path) -> None:
    model = classifier.build_classifier(backbone, 4, image_size=(48, 40), weights=None, dropout=0.2)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(model.predict(PIXELS, verbose=0), loaded.predict(PIXELS, verbose=0))


def test_head_on_features_equals_full_model() -> None:
    model = classifier.build_classifier("resnet18", 3, image_size=(48, 40), weights=None)
    features = classifier.feature_extractor(model).predict(PIXELS, verbose=0)
    assert features.shape == (3, 512)
    np.testing.assert_allclose(
        classifier.head_of(model).predict(features, verbose=0), model.predict(PIXELS, verbose=0), atol=1e-6
    )


def test_invalid_arguments() -> None:
    with pytest.raises(ConfigError, match="Received: image_size=-3"):
        classifier.build_classifier("resnet18", 3, image_size=-3, weights=None)
    with pytest.raises(ConfigError, match="Received: num_classes=1"):
        classifier.build_classifier("resnet18", 1, weights=None)
    with pytest.raises(ConfigError, match="Received: dropout=1.5"):
        classifier.build_classifier("resnet18", 3, image_size=32, weights=None, dropout=1.5)


def test_backbone_registry() -> None:
    assert backbones.get("resnet50").preprocessing == "caffe"
    assert backbones.get("resnet50v2").preprocessing == "tf"
    # Ours carries torchvision's bundled weights (their normalisation); Keras's own expects [-1, 1].
    assert backbones.get("mobilenet_v2").preprocessing == "torch"
    assert backbones.get("mobilenet_v2").info.family == "mobilenet"
    assert backbones.get("keras:mobilenet_v2").preprocessing == "tf"
    assert backbones.get("keras:mobilenet_v2").info.family == "keras"
    assert backbones.get("efficientnet_b0").preprocessing == "none"
    assert backbones.get("convnext_tiny").info.family == "keras"
    assert backbones.get("keras:resnet50").info.family == "keras"
    assert backbones.get("keras:resnet50").fine_tune_prefix == backbones.get("resnet50").fine_tune_prefix
    with pytest.raises(ConfigError) as info:
        backbones.get("resnet51")
    assert (
        "resnet50" in str(info.value)
        and "mobilenet_v2" in str(info.value)
        and "Received: backbone='resnet51'" in str(info.value)
    )


@pytest.mark.parametrize(
    "name, prefix", [("resnet50", "conv5_"), ("mobilenet_v2", "block_13_"), ("efficientnet_b0", "block6a_")]
)
def test_fine_tune_start_is_the_named_stage(name, prefix) -> None:
    spec = backbones.get(name)
    base = spec.build((64, 64, 3), weights=None)
    i = backbones.fine_tune_start(base, spec)
    assert base.layers[i].name.startswith(prefix)
    assert not any(layer.name.startswith(prefix) for layer in base.layers[:i])


def test_keras_application_backbone_loads_a_local_weights_file(tmp_path) -> None:
    spec = backbones.get("mobilenet_v2")
    source = spec.build((64, 64, 3), weights=None)
    path = tmp_path / "mnv2.weights.h5"
    source.save_weights(path)
    model = classifier.build_classifier("mobilenet_v2", 3, image_size=64, weights=str(path))
    for a, b in zip(classifier.backbone_of(model).get_weights(), source.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backbone", ["convnext_tiny", "resnet20", "mobilenet_v2"])
def test_gradcam_explains_the_feature_map_the_pooling_reads(backbone) -> None:
    """ConvNeXt's last residual sum is an operation, not a layer: the last layer with a 4-D output was the residual
    branch alone (activations ~1e-7), and its maps were uncorrelated with the stage's."""
    from floranet.evaluation.gradcam import GradCAM, last_feature_map

    model = classifier.build_classifier(backbone, 3, image_size=64, weights=None)
    base = classifier.backbone_of(model)
    pooling = next(layer for layer in base.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D))
    name, tensor = last_feature_map(base)
    assert tensor is pooling.input and name == f"{pooling.name} input"
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    cam = GradCAM(model)
    conv = keras.ops.convert_to_numpy(cam._model(x, training=False)[0])
    pixels = x
    for layer in model.layers[1:]:  # the preprocessing before the backbone
        if layer.name == classifier.BACKBONE_LAYER:
            break
        pixels = layer(pixels)
    stage = keras.ops.convert_to_numpy(keras.Model(base.inputs, pooling.input)(pixels))
    np.testing.assert_allclose(conv, stage, rtol=1e-5, atol=1e-5)
    heat, probs = cam.heatmaps(x)
    assert heat.shape == conv.shape[:3] and np.isfinite(heat).all() and probs.shape == (2, 3)
