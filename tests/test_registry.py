"""The backbone registry drives everything: every registered name builds, round-trips and agrees with itself."""

from __future__ import annotations

import numpy as np
import pytest

from floranet.cli import main
from floranet.config import MIN_IMAGE_SIZE
from floranet.errors import ConfigError
from floranet.models import backbones, classifier, registry, weights

NAMES = sorted(registry.REGISTRY)


@pytest.mark.parametrize("name", NAMES)
def test_entry_is_consistent(name: str) -> None:
    info = registry.REGISTRY[name]
    assert info.name == name and info.preprocessing in registry.PREPROCESSING_MODES
    assert (info.imagenet == "official") == (info.weights_file is not None)
    assert (info.imagenet == "bundled") == (info.bundled is not None)
    if info.family == "resnet":
        assert info.block in registry.RESNET_BLOCKS and info.depths and info.keras_name is None
    elif info.family == "mobilenet":
        assert info.imagenet == "bundled" and not info.depths and info.keras_name is None
    else:
        assert info.keras_name and not info.depths and info.weights_file is None and info.bundled is None
    if info.weights_file is not None:
        file_name, url, md5 = weights.official_file(name, include_top=False)
        assert file_name.startswith(name) and url.endswith(file_name) and len(md5) == 32
    else:
        with pytest.raises(Exception, match="no official Keras ImageNet weights"):
            weights.official_file(name, include_top=False)


@pytest.mark.parametrize("name", NAMES)
def test_every_registered_backbone_builds_and_round_trips(name: str, tmp_path) -> None:
    """A classifier on each backbone (random weights, smallest size), saved and reloaded in safe mode."""
    import keras

    size = MIN_IMAGE_SIZE
    model = classifier.build_classifier(name, 3, image_size=size, weights=None)
    spec = backbones.get(name)
    base = classifier.backbone_of(model)
    start = backbones.fine_tune_start(base, spec)
    if spec.fine_tune_prefix is not None:  # the registry's fine-tune layer exists in the built model
        assert base.layers[start].name.startswith(spec.fine_tune_prefix)
    x = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    before = model(x, training=False)
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_allclose(again(x, training=False), before, atol=1e-6)


def test_registry_refuses_inconsistent_entries() -> None:
    with pytest.raises(ConfigError, match="name taken"):
        registry.register(registry.REGISTRY["resnet50"])
    with pytest.raises(ConfigError, match="preprocessing"):
        registry.register(registry.BackboneInfo("odd", "keras", "sepia", None, keras_name="MobileNetV2"))
    with pytest.raises(ConfigError, match="block"):
        registry.register(registry.BackboneInfo("odd", "resnet", "tf", None))
    with pytest.raises(ConfigError, match="bundled"):
        registry.register(registry.BackboneInfo("odd", "mobilenet", "torch", None, imagenet="bundled"))
    assert "odd" not in registry.REGISTRY


def test_cli_lists_the_registry_and_where_weights_come_from(capsys) -> None:
    assert main(["backbones"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[: len(NAMES)]] == list(registry.REGISTRY)
    marks = {line.split()[0]: line.split(None, 1)[1] for line in lines[: len(NAMES)]}
    assert marks["mobilenet_v2"] == "(ImageNet weights bundled)"
    assert [n for n, m in marks.items() if "bundled" in m] == [
        n for n, i in registry.REGISTRY.items() if i.weights_in_box
    ]
    assert marks["resnet50"] == "(ImageNet weights downloaded on first use)"
    assert marks["resnet20"] == "(no ImageNet weights)"


def test_a_backbone_is_named_as_spelled_and_finds_its_fine_tune_layer_however_spelled() -> None:
    """keras:mobilenet_v2 (Keras's model, padding and weights) took floranet mobilenet_v2's name, and with it
    the stage-1 feature cache of the other model."""
    from floranet.training.features import cache_key

    ours, theirs = backbones.get("mobilenet_v2"), backbones.get("keras:mobilenet_v2")
    assert (ours.name, theirs.name) == ("mobilenet_v2", "keras:mobilenet_v2")
    assert cache_key(ours.name, "f", (96, 96), "k") != cache_key(theirs.name, "f", (96, 96), "k")
    for spelled, prefix in (
        ("efficientnet_b0", "block6a_"),
        ("keras:EfficientNetB0", "block6a_"),
        ("resnet_50", "conv5_"),
    ):
        assert backbones.get(spelled).fine_tune_prefix == prefix, spelled


@pytest.mark.parametrize("weights", [None, "imagenet"])
def test_a_keras_model_too_small_for_the_image_size_is_a_config_error(weights) -> None:
    """Keras's Inception needs 75 px: a raw ValueError (or a WeightsError blaming the weights) before."""
    from floranet.errors import ConfigError
    from floranet.models import backbones

    with pytest.raises(ConfigError, match=r"backbone 'keras:inception_v3' cannot take images of 32x32 px"):
        backbones.get("keras:inception_v3").build((32, 32, 3), weights)
    backbones.check_input_size("resnet20", (32, 32))  # floranet's own: any size
