"""Weights for our ResNets: Keras's official ImageNet files, or a local file.

Official files are keras.applications' legacy HDF5 files; they are loaded by
*layer name*, which is why our layers carry keras.applications' names.
Keras 3 ``.weights.h5`` files store no layer names (groups are named by class
and position), so they are loaded by Keras itself, by structure.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import keras
import numpy as np

from floranet.download import cache_dir, download
from floranet.errors import DownloadError, WeightsError

BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
URL_ENV = "FLORANET_WEIGHTS_URL"  # mirror for air-gapped sites: a base URL holding the same file names

# arch -> (md5 of the file with top, md5 without top); Keras's published hashes.
OFFICIAL_MD5: dict[str, tuple[str, str]] = {
    "resnet50": ("2cb95161c43110f7111970584f804107", "4d473c1dd8becc155b73f8504c6f6626"),
    "resnet101": ("f1aeb4b969a6efcfb50fad2f0c20cfc5", "88cf7a10940856eca736dc7b7e228a21"),
    "resnet152": ("100835be76be38e30d865e96f2aaae62", "ee4c566cf9a93f14d82f913c2dc6dd0c"),
    "resnet50v2": ("3ef43a0b657b3be2300d5770ece849e0", "fac2f116257151a9d068a22e544a4917"),
    "resnet101v2": ("6343647c601c52e1368623803854d971", "c0ed64b8031c3730f411d2eb4eea35b5"),
    "resnet152v2": ("a49b44d1979771252814e80f8ec446f9", "ed17cf2e0169df9d443503ef94b23b33"),
}


def official_file(arch: str, *, include_top: bool) -> tuple[str, str, str]:
    """Returns ``(file_name, url, md5)`` of Keras's ImageNet weights for ``arch``."""
    if arch not in OFFICIAL_MD5:
        raise WeightsError(
            f"There are no official Keras ImageNet weights for {arch!r} "
            f"(available: {', '.join(OFFICIAL_MD5)}). Use weights=None (random init) or "
            f"weights=PATH with a converted weights file. Received: weights='imagenet'"
        )
    suffix = "" if include_top else "_notop"
    file_name = f"{arch}_weights_tf_dim_ordering_tf_kernels{suffix}.h5"
    base = os.environ.get(URL_ENV, BASE_URL)
    if not base.endswith("/"):
        base += "/"
    return file_name, base + file_name, OFFICIAL_MD5[arch][0 if include_top else 1]


def fetch_imagenet(arch: str, *, include_top: bool, timeout: float = 10.0) -> Path:
    """Downloads (or finds in Keras's cache) the official weights file, checksum verified."""
    file_name, url, md5 = official_file(arch, include_top=include_top)
    dest = cache_dir("models") / file_name
    hint = (
        f"Without network access: download {url} on a machine that has it, put it at {dest} "
        f"(where Keras caches weights), or pass weights=PATH (CLI: --weights PATH) with its path."
    )
    try:
        return download(url, dest, file_hash=md5, timeout=timeout, manual_hint=hint)
    except DownloadError as e:
        raise WeightsError(str(e)) from e


def load_into(model: keras.Model, arch: str, weights: str | os.PathLike[str], *, include_top: bool) -> None:
    """Loads ``weights`` ("imagenet" or a file path) into ``model`` built for ``arch``."""
    if weights == "imagenet":
        path = fetch_imagenet(arch, include_top=include_top)
    else:
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(
                "weights must be 'imagenet', None or the path of an existing weights file. "
                f"Received: weights={str(weights)!r}"
            )
    load_file(model, path)


def load_file(model: keras.Model, path: str | os.PathLike[str]) -> None:
    """Loads a legacy HDF5 file by layer name, or a Keras 3 ``.weights.h5`` by structure."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            legacy = "layer_names" in f.attrs or "model_weights" in f
    except OSError as e:
        raise WeightsError(f"Cannot read weights file {path}: not an HDF5 file ({e}).") from e
    if legacy:
        load_legacy_h5_by_name(model, path)
        return
    try:
        model.load_weights(path)
    except Exception as e:  # Keras raises ValueError/KeyError on any structural mismatch
        raise WeightsError(f"Weights file {path} does not fit model {model.name!r}: {e}") from e


def load_legacy_h5_by_name(model: keras.Model, path: Path) -> None:
    """Sets every weighted layer of ``model`` from the same-named group of a legacy HDF5 file.

    Layers in the file that the model lacks (e.g. ``predictions`` when loading
    a with-top file into a headless model) are skipped; a model layer missing
    from the file, or a shape mismatch, is an error.
    """
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f
        stored = {_str(n): root[_str(n)] for n in root.attrs["layer_names"]}
        missing, mismatched, updates = [], [], []
        for layer in _weighted_layers(model):
            group = stored.get(layer.name)
            if group is None:
                missing.append(layer.name)
                continue
            arrays = [np.asarray(group[_str(n)]) for n in group.attrs["weight_names"]]
            current = layer.get_weights()
            if [a.shape for a in arrays] != [c.shape for c in current]:
                mismatched.append(
                    f"{layer.name}: file {[a.shape for a in arrays]} vs model {[c.shape for c in current]}"
                )
                continue
            updates.append((layer, arrays))
    if missing or mismatched:
        details = "; ".join(
            ([f"missing layers {missing[:5]}" + (" ..." if len(missing) > 5 else "")] if missing else [])
            + ([f"shape mismatch {mismatched[:3]}"] if mismatched else [])
        )
        raise WeightsError(f"Weights file {path} does not fit model {model.name!r}: {details}.")
    for layer, arrays in updates:
        layer.set_weights(arrays)


def _weighted_layers(model: keras.Model) -> list[keras.layers.Layer]:
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out.extend(_weighted_layers(layer))
        elif layer.weights:
            out.append(layer)
    return out


def _str(name: bytes | str) -> str:
    return name.decode("utf8") if isinstance(name, bytes) else name
