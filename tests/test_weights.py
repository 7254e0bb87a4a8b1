"""weights="imagenet": download from a (local) server, checksum, cache, and fast offline failure."""

from __future__ import annotations

import dataclasses
import hashlib
import time

import keras
import numpy as np
import pytest

from floranet.errors import WeightsError
from floranet.models import registry, resnet, weights
from httpserver import closed_port_url, serve, silent_server
from modelfiles import write_legacy_h5


def official_copy(tmp_path, monkeypatch) -> tuple[keras.Model, str, bytes]:
    """A keras.applications ResNet50 notop file under its official name, with the table patched to its md5."""
    shape = (64, 64, 3)
    reference = keras.applications.ResNet50(weights=None, include_top=False, pooling="avg", input_shape=shape)
    path = tmp_path / "src.h5"
    write_legacy_h5(reference, path)
    data = path.read_bytes()
    entry = registry.REGISTRY["resnet50"]
    patched = dataclasses.replace(entry.weights_file, md5_notop=hashlib.md5(data).hexdigest())
    monkeypatch.setitem(registry.REGISTRY, "resnet50", dataclasses.replace(entry, weights_file=patched))
    name, _, _ = weights.official_file("resnet50", include_top=False)
    return reference, name, data


def test_imagenet_weights_download_verify_and_cache(tmp_path, monkeypatch, keras_home) -> None:
    reference, name, data = official_copy(tmp_path, monkeypatch)
    with serve({f"/w/{name}": data}) as server:
        monkeypatch.setenv(weights.URL_ENV, server.url + "/w/")
        ours = resnet.resnet50(weights="imagenet", include_top=False, pooling="avg", input_shape=(64, 64, 3))
        assert (keras_home / "models" / name).read_bytes() == data  # cached where Keras caches
        resnet.resnet50(weights="imagenet", include_top=False, pooling="avg", input_shape=(64, 64, 3))
        assert len(server.requests) == 1  # second build used the cache
    x = np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(ours(x), reference(x), atol=1e-5)


def test_corrupted_download_is_refused_and_not_kept(tmp_path, monkeypatch, keras_home) -> None:
    _, name, data = official_copy(tmp_path, monkeypatch)
    with serve({f"/w/{name}": data[:-100] + b"x" * 100}) as server:
        monkeypatch.setenv(weights.URL_ENV, server.url + "/w/")
        with pytest.raises(WeightsError, match="Checksum mismatch"):
            resnet.resnet50(weights="imagenet", include_top=False, input_shape=(64, 64, 3))
    assert not (keras_home / "models" / name).exists()


def test_pre_seeded_cache_needs_no_network(tmp_path, monkeypatch, keras_home) -> None:
    reference, name, data = official_copy(tmp_path, monkeypatch)
    (keras_home / "models").mkdir(parents=True)
    (keras_home / "models" / name).write_bytes(data)
    monkeypatch.setenv(weights.URL_ENV, closed_port_url() + "/")
    ours = resnet.resnet50(weights="imagenet", include_top=False, pooling="avg", input_shape=(64, 64, 3))
    x = np.ones((1, 64, 64, 3), "float32")
    np.testing.assert_allclose(ours(x), reference(x), atol=1e-5)


@pytest.mark.parametrize("kind", ["refused", "stalled"])
def test_offline_fails_fast_with_instructions(kind: str, monkeypatch, keras_home) -> None:
    start = time.monotonic()
    with silent_server() as stalled:
        url = closed_port_url() if kind == "refused" else stalled
        monkeypatch.setenv(weights.URL_ENV, url + "/")
        with pytest.raises(WeightsError) as info:
            weights.fetch_imagenet("resnet50", include_top=False, timeout=3.0)
    elapsed = time.monotonic() - start
    assert elapsed < 30
    message = str(info.value)
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert str(keras_home / "models") in message and "--weights PATH" in message


def test_a_backbone_without_imagenet_weights_is_refused_before_any_data() -> None:
    """resnet56 has no ImageNet weights: ensure_available let it pass, and train made the run's folder (config,
    split, ...) before the build refused it, leaving a run that blocked a retry with other weights."""
    with pytest.raises(WeightsError, match="Backbone 'resnet56' has no ImageNet weights.*weights='imagenet'"):
        weights.ensure_available("resnet56", "imagenet")
    weights.ensure_available("resnet56", None)


@pytest.mark.parametrize("damage", ["weight_names", "group", "dataset", "layer_names"])
def test_a_damaged_legacy_file_is_named_not_a_key_error(damage: str, tmp_path) -> None:
    import h5py

    model = resnet.build_resnet("resnet20", weights=None, include_top=False, input_shape=(32, 32, 3))
    path = tmp_path / "damaged.h5"
    write_legacy_h5(model, path)
    with h5py.File(path, "r+") as f:
        first = f.attrs["layer_names"][0]
        first = first.decode() if isinstance(first, bytes) else first
        if damage == "weight_names":
            del f[first].attrs["weight_names"]
        elif damage == "group":
            del f[first]
        elif damage == "dataset":
            group = f[first]
            name = group.attrs["weight_names"][0]
            del group[name.decode() if isinstance(name, bytes) else name]
        else:
            del f.attrs["layer_names"]
    with pytest.raises(WeightsError, match=r"damaged\.h5 is not a usable Keras weights file"):
        weights.load_legacy_h5_by_name(model, path)


def test_an_empty_weights_url_variable_is_unset_and_an_unusable_one_is_named(monkeypatch) -> None:
    """FLORANET_WEIGHTS_URL= (empty) gave "url must be an http(s):// or file:// URL. Received:
    url='/resnet50_..._notop.h5'", naming neither the variable nor what to do."""
    from floranet.errors import ConfigError

    monkeypatch.setenv(weights.URL_ENV, " ")
    assert weights.official_file("resnet50", include_top=False)[1].startswith(weights.BASE_URL)
    monkeypatch.setenv(weights.URL_ENV, "mirror.local/keras")
    with pytest.raises(ConfigError, match=r"FLORANET_WEIGHTS_URL must be an http\(s\):// or file:// URL .*unset.*"):
        weights.ensure_available("resnet50", "imagenet")


def point_outside(path, kind: str, other, secret) -> None:
    """Replaces the first weight of ``path`` (legacy or .weights.h5) with a member whose data lies outside it."""
    import h5py

    with h5py.File(path, "r+") as f:
        found: list[str] = []
        f.visititems(lambda name, obj: None if found or not isinstance(obj, h5py.Dataset) else found.append(name))
        name = found[0]  # a legacy file's first kernel, or a .weights.h5's first variable
        shape, dtype = f[name].shape, f[name].dtype
        del f[name]
        if kind == "external_raw":
            f.create_dataset(name, shape=shape, dtype=dtype, external=[(str(secret), 0, h5py.h5f.UNLIMITED)])
        elif kind == "external_link":
            f[name] = h5py.ExternalLink(str(other), "/" + name)
        elif kind == "soft_link":
            f.create_dataset("elsewhere", shape=shape, dtype=dtype)  # in the file, but reached by no hard link
            f[name] = h5py.SoftLink("/elsewhere")
        else:
            layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
            layout[...] = h5py.VirtualSource(str(other), name, shape=shape)
            f.create_virtual_dataset(name, layout)


@pytest.mark.parametrize("kind", ["external_raw", "external_link", "soft_link", "virtual"])
@pytest.mark.parametrize("suffix", [".h5", ".weights.h5"])
def test_a_weights_file_that_refers_to_data_outside_itself_is_refused(kind: str, suffix: str, tmp_path) -> None:
    """A legacy .h5 whose kernel kept its bytes in another file (external raw storage) loaded that file's bytes
    as weights, and an external or soft link or a virtual dataset was followed as well; Keras 3.15 refuses all
    of these in a .weights.h5 ("Not allowed: H5 file with external Dataset")."""
    model = resnet.build_resnet("resnet20", weights=None, include_top=False, input_shape=(32, 32, 3))
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"SECRET-TOKEN" * 200)
    other, path = tmp_path / f"other{suffix}", tmp_path / f"hostile{suffix}"
    for target in (other, path):
        write_legacy_h5(model, target) if suffix == ".h5" else model.save_weights(target)
    point_outside(path, kind, other, secret)
    before = [w.copy() for w in model.get_weights()]
    refused = r"(?s)hostile(\.weights)?\.h5 (refers to data outside itself|.*Not allowed)"  # floranet's, or Keras's
    with pytest.raises(WeightsError, match=refused):
        weights.load_file(model, path)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))


@pytest.mark.parametrize("kind", ["bomb", "strings"])
def test_a_legacy_weight_is_compared_before_it_is_read(kind: str, tmp_path) -> None:
    """A 1 MB file declaring conv1_conv's kernel as a 1 TiB gzip-chunked dataset was read whole before shapes
    were compared: "_ArrayMemoryError: Unable to allocate 1.00 TiB". Strings were read and failed to convert."""
    import h5py

    model = resnet.build_resnet("resnet20", weights=None, include_top=False, input_shape=(32, 32, 3))
    path = tmp_path / f"{kind}.h5"
    write_legacy_h5(model, path)
    with h5py.File(path, "r+") as f:
        name = "conv1_conv/conv1_conv/kernel:0"
        shape = f[name].shape
        del f[name]
        if kind == "bomb":
            f.create_dataset(name, shape=(1 << 38,), dtype="f4", chunks=(1 << 20,), compression="gzip")
        else:
            f.create_dataset(name, data=np.full(shape, "x", dtype=object), dtype=h5py.string_dtype())
    assert path.stat().st_size < 2 << 20
    bomb = r"conv1_conv: file \[\(274877906944,\)\] vs model \[\(3, 3, 3, 16\)\]"
    expected = bomb if kind == "bomb" else "conv1_conv: file dtype object is not a number type"
    with pytest.raises(WeightsError, match=rf"{kind}\.h5 does not fit model 'resnet20': .*{expected}"):
        weights.load_file(model, path)


def test_a_legacy_file_of_a_deeper_network_is_refused_and_a_with_top_one_loads(tmp_path) -> None:
    """Layers of the file that the model lacks were skipped: a resnet32 file loaded into resnet20 (and a
    ResNet101 one into resnet50) silently, its deeper blocks dropped. A with-top file (predictions, every layer
    listed as in Keras's own files) or one with a head of its own naming still loads into a headless model."""
    shape = (32, 32, 3)
    deeper = tmp_path / "r32.h5"
    write_legacy_h5(resnet.resnet32(weights=None, include_top=False, input_shape=shape), deeper)
    headless = resnet.resnet20(weights=None, include_top=False, pooling="avg", input_shape=shape)
    lacks = r"the file has 24 layers this model lacks \(is it another depth\?\): conv2_block4_1_conv, .* and 21 more\.$"
    with pytest.raises(WeightsError, match=lacks):
        weights.load_file(headless, deeper)
    backbone = resnet.resnet20(weights=None, include_top=False, pooling="avg", input_shape=shape)
    with_head = keras.Model(backbone.input, keras.layers.Dense(5, name="head_dense")(backbone.output))
    write_legacy_h5(with_head, tmp_path / "head.h5")
    weights.load_file(headless, tmp_path / "head.h5")
    x = np.random.default_rng(2).normal(size=(1, *shape)).astype("float32")
    np.testing.assert_allclose(headless(x), backbone(x), atol=1e-5)

    shape = (64, 64, 3)
    official = keras.applications.ResNet50(weights=None, include_top=True, input_shape=shape)
    write_legacy_h5(official, tmp_path / "resnet50_with_top.h5", every_layer=True)
    ours = resnet.resnet50(weights=str(tmp_path / "resnet50_with_top.h5"), include_top=False, input_shape=shape)
    x = np.random.default_rng(3).normal(size=(1, *shape)).astype("float32")
    reference = keras.Model(official.input, official.get_layer("conv5_block3_out").output)
    np.testing.assert_allclose(ours(x), reference(x), atol=1e-4)
