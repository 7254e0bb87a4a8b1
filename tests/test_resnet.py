"""Our ResNet family: parameter counts, layer names and exact equivalence with keras.applications."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from floranet.errors import ConfigError, WeightsError
from floranet.models import registry, resnet
from modelfiles import write_legacy_h5

KERAS_APPS = {
    "resnet50": keras.applications.ResNet50,
    "resnet101": keras.applications.ResNet101,
    "resnet152": keras.applications.ResNet152,
    "resnet50v2": keras.applications.ResNet50V2,
    "resnet101v2": keras.applications.ResNet101V2,
    "resnet152v2": keras.applications.ResNet152V2,
}


def trainable_count(model: keras.Model) -> int:
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def test_resnet50_parameter_count_equals_keras_applications() -> None:
    # keras.applications counts BatchNorm moving statistics too: 25,636,712 with top.
    assert resnet.resnet50(weights=None).count_params() == 25_636_712


@pytest.mark.parametrize("arch, expected", [("resnet18", 11_689_512), ("resnet34", 21_797_672)])
def test_basic_resnets_match_torchvision_parameter_count(arch: str, expected: int) -> None:
    # torchvision counts learnable parameters only (BatchNorm statistics are buffers).
    model = resnet.build_resnet(arch, weights=None)
    assert trainable_count(model) == expected
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs and not any(c.use_bias for c in convs)


@pytest.mark.parametrize(
    "arch, paper_millions",
    [("resnet20", 0.27), ("resnet32", 0.46), ("resnet44", 0.66), ("resnet56", 0.85), ("resnet110", 1.7)],
)
def test_cifar_resnets_match_he_et_al_table6(arch: str, paper_millions: float) -> None:
    model = resnet.build_resnet(arch, weights=None)
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 10)
    # Table 6 rounds to two significant digits.
    assert abs(trainable_count(model) / 1e6 - paper_millions) <= 0.01 * max(1.0, paper_millions / 0.5)


def test_cifar_option_a_shortcut_has_no_parameters() -> None:
    model = resnet.build_resnet("resnet20", weights=None, include_top=False)
    shortcut_layers = [layer for layer in model.layers if "_0_" in layer.name]
    assert shortcut_layers and all(not layer.weights for layer in shortcut_layers)
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in model.layers)


@pytest.mark.parametrize("side", [32, 33])
def test_cifar_strided_conv_samples_the_pixels_its_shortcut_keeps(side: int) -> None:
    """At an even size, "same" padding centred the strided 3x3 on odd pixels, the shortcut on even ones."""
    inputs = keras.Input((side, side, 16))
    out = resnet.cifar_block(inputs, 16, stride=2, name="b")
    model = keras.Model(inputs, [out, keras.Model(inputs, out).get_layer("b_1_conv").output])
    conv = model.get_layer("b_1_conv")
    kernel = np.zeros(conv.kernel.shape, np.float32)
    kernel[1, 1] = np.eye(16)  # the centre tap only: the conv samples its input
    conv.set_weights([kernel])
    ramp = np.broadcast_to(np.arange(side, dtype=np.float32)[None, :, None, None], (1, side, side, 16))
    sampled = np.asarray(model(ramp)[1])[0, :, 0, 0]
    np.testing.assert_array_equal(sampled, np.arange(0, side, 2))  # rows 0, 2, 4, ... as MaxPooling2D(1, 2)


def test_registry_drives_block_counts() -> None:
    model = resnet.build_resnet("resnet101", weights=None, include_top=False, input_shape=(64, 64, 3))
    blocks = {n.split("_")[1] for n in (layer.name for layer in model.layers) if n.startswith("conv4_block")}
    assert len(blocks) == registry.resnet("resnet101").depths[2] == 23


@pytest.mark.parametrize("arch", sorted(KERAS_APPS))
def test_equivalent_to_keras_applications(arch: str, tmp_path) -> None:
    shape = (64, 64, 3)
    reference = KERAS_APPS[arch](weights=None, include_top=True, input_shape=shape, classes=7)
    ours = resnet.build_resnet(arch, weights=None, include_top=True, input_shape=shape, classes=7)
    weighted = lambda m: [layer.name for layer in m.layers if layer.weights]  # noqa: E731
    assert weighted(ours) == weighted(reference)
    for layer in reference.layers:
        if layer.weights:
            ours.get_layer(layer.name).set_weights(layer.get_weights())
    x = np.random.default_rng(0).normal(size=(2, *shape)).astype("float32")
    np.testing.assert_allclose(ours(x, training=False), reference(x, training=False), atol=1e-5)

    # A Keras 3 weights file saved from keras.applications loads into ours by weights=PATH.
    path = tmp_path / f"{arch}.weights.h5"
    reference.save_weights(path)
    loaded = resnet.build_resnet(arch, weights=str(path), include_top=True, input_shape=shape, classes=7)
    np.testing.assert_allclose(loaded(x, training=False), reference(x, training=False), atol=1e-5)


def test_official_legacy_h5_layout_loads_by_name(tmp_path) -> None:
    shape = (64, 64, 3)
    reference = keras.applications.ResNet50V2(weights=None, include_top=False, pooling="avg", input_shape=shape)
    path = tmp_path / "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"
    write_legacy_h5(reference, path)
    ours = resnet.resnet50v2(weights=str(path), include_top=False, pooling="avg", input_shape=shape)
    x = np.random.default_rng(1).normal(size=(2, *shape)).astype("float32")
    np.testing.assert_allclose(ours(x), reference(x), atol=1e-5)


def test_weights_that_do_not_fit_are_a_clear_error(tmp_path) -> None:
    small = resnet.build_resnet("resnet18", weights=None, include_top=False, input_shape=(64, 64, 3))
    path = tmp_path / "r18.h5"
    write_legacy_h5(small, path)
    with pytest.raises(WeightsError, match="does not fit.*missing layers"):
        resnet.resnet50(weights=str(path), include_top=False, input_shape=(64, 64, 3))
    with pytest.raises(WeightsError, match="existing weights file"):
        resnet.resnet50(weights=str(tmp_path / "nope.h5"))
    not_h5 = tmp_path / "junk.h5"
    not_h5.write_bytes(b"not hdf5")
    with pytest.raises(WeightsError, match="not an HDF5 file"):
        resnet.resnet50(weights=str(not_h5))


def test_arguments_are_validated_keras_style() -> None:
    with pytest.raises(ConfigError, match="Received: arch='resnet51'"):
        resnet.build_resnet("resnet51", weights=None)
    with pytest.raises(ConfigError, match="Received: pooling='mean'"):
        resnet.resnet50(weights=None, include_top=False, pooling="mean")
    with pytest.raises(ConfigError, match="Received: classes=5"):
        resnet.resnet50(weights="imagenet", classes=5)
    with pytest.raises(ConfigError, match="input_shape"):
        resnet.resnet50(weights=None, input_shape=(None, None, 3))
    with pytest.raises(WeightsError, match="no official Keras ImageNet weights for 'resnet18'"):
        resnet.resnet18(weights="imagenet")


def test_headless_models_accept_any_size_and_pool() -> None:
    model = resnet.resnet18(weights=None, include_top=False, pooling="max", input_shape=(None, None, 3))
    assert model.get_layer("max_pool")
    out = model(np.zeros((1, 96, 80, 3), "float32"))
    assert out.shape == (1, 512)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"include_top": False, "input_shape": (None, 8, 3)}, r"input_shape=\(None, 8, 3\)"),  # a side below 32
        ({"include_top": False, "input_shape": (None, "a", 3)}, "input_shape="),
        ({"include_top": False, "input_shape": (32, 32, 3.0)}, "input_shape="),
        ({"weights": 123}, "weights must be 'imagenet', None or a weights file's path. Received: weights=123"),
    ],
)
def test_builder_arguments_are_named_not_keras_errors(kwargs: dict, match: str) -> None:
    """A side given beside None skipped the size check; 3.0 channels and a 'a' side reached Keras's own errors."""
    with pytest.raises(ConfigError, match=match):
        resnet.build_resnet("resnet50", **{"weights": None, **kwargs})


def test_numpy_class_counts_are_taken_as_image_sizes_are() -> None:
    model = resnet.build_resnet("resnet20", weights=None, classes=np.int64(5))
    assert model.output_shape == (None, 5)


def test_each_builder_has_keras_applications_parameters_and_its_own_name() -> None:
    """The builders were (*, weights, **kwargs): resnet20(False, weights=None) was a TypeError, help() showed
    **kwargs, a misspelled keyword's TypeError named build_resnet, classifier_activation='sofmax' was Keras's
    ValueError and input_shape=np.array([40, 48, 3]) was refused though a list was taken."""
    import inspect

    keras_order = list(inspect.signature(keras.applications.ResNet50).parameters)
    for arch in ("resnet18", "resnet50", "resnet152v2", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"):
        builder = getattr(resnet, arch)
        assert list(inspect.signature(builder).parameters) == keras_order, arch
        assert builder.__name__ == arch and f"ResNet-{arch[6:].replace('v2', 'V2')}" in builder.__doc__
        assert "Args:" in builder.__doc__ and "classifier_activation" in builder.__doc__
    assert inspect.signature(resnet.resnet50).parameters["weights"].default == "imagenet"
    assert inspect.signature(resnet.resnet20).parameters["classes"].default == 10
    model = resnet.resnet20(False, None, input_shape=np.array([40, 48, 3]), pooling="avg")
    assert model.input_shape == (None, 40, 48, 3) and model.output_shape == (None, 64) and model.name == "resnet20"
    with pytest.raises(TypeError, match=r"^resnet20\(\) got an unexpected keyword argument 'wieghts'"):
        resnet.resnet20(wieghts=None)
    with pytest.raises(ConfigError, match=r"Received: classifier_activation='sofmax'$"):
        resnet.resnet20(weights=None, classifier_activation="sofmax")
