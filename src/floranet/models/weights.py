"""Weights for our own backbones: Keras's official ImageNet files, the files bundled with floranet, or a local file.

Official files are keras.applications' legacy HDF5 files, downloaded once; bundled files
(``floranet/models/pretrained/``, see :class:`floranet.models.registry.BundledWeights`) are in the same
layout and need no network. Both are loaded by *layer name*, which is why our layers carry
keras.applications' names.
Keras 3 ``.weights.h5`` files store no layer names (groups are named by class
and position), so they are loaded by Keras itself, by structure.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np

from floranet.errors import DownloadError, WeightsError
from floranet.models import registry
from floranet.utils.download import cache_dir, download, env_url, redacted
from floranet.utils.files import file_digest

BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
URL_ENV = "FLORANET_WEIGHTS_URL"  # mirror for air-gapped sites: a base URL holding the same file names
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"


def offline_hint() -> str:
    """The sentence that names the backbones whose ImageNet weights need no network (from the registry)."""
    boxed = [n for n, i in registry.REGISTRY.items() if i.weights_in_box]
    if not boxed:
        return ""
    flags = " or ".join(f"--backbone {n}" for n in boxed)
    return f"To train without network, use a backbone whose ImageNet weights ship with floranet: {flags}."


def official_file(arch: str, *, include_top: bool) -> tuple[str, str, str]:
    """Returns ``(file_name, url, md5)`` of Keras's ImageNet weights for ``arch`` (from the registry)."""
    info = registry.lookup(arch)
    if info is None or info.weights_file is None:
        available = ", ".join(n for n, i in registry.REGISTRY.items() if i.weights_file is not None)
        raise WeightsError(
            f"There are no official Keras ImageNet weights for {arch!r} "
            f"(available: {available}). Use weights=None (random init) or "
            f"weights=PATH with a converted weights file. Received: weights='imagenet'"
        )
    file_name, md5 = info.weights_file.file(include_top=include_top)
    base = env_url(URL_ENV) or BASE_URL
    if not base.endswith("/"):
        base += "/"
    return file_name, base + file_name, md5


def fetch_imagenet(arch: str, *, include_top: bool, timeout: float = 10.0) -> Path:
    """Downloads (or finds in Keras's cache) the official weights file, checksum verified."""
    file_name, url, md5 = official_file(arch, include_top=include_top)
    dest = cache_dir("models") / file_name
    hint = (
        f"Without network access: download {redacted(url)} on a machine that has it, put it at {dest} "
        f"(where Keras caches weights), or pass weights=PATH (CLI: --weights PATH) with its path."
    )
    try:
        return download(url, dest, file_hash=md5, timeout=timeout, manual_hint=hint)
    except DownloadError as e:
        raise WeightsError(f"{e} {offline_hint()}".strip()) from e


def bundled_file(arch: str) -> Path:
    """The ImageNet weights file shipped with floranet for ``arch``, sha256-verified.

    Raises:
        WeightsError: ``arch`` has no bundled weights, or the file is missing or damaged.
    """
    info = registry.lookup(arch)
    if info is None or info.bundled is None:
        boxed = ", ".join(n for n, i in registry.REGISTRY.items() if i.weights_in_box)
        raise WeightsError(f"No ImageNet weights for {arch!r} ship with floranet (bundled: {boxed}).")
    path = PRETRAINED_DIR / info.bundled.file
    if not path.is_file():
        raise WeightsError(f"The bundled weights file {path} is missing from this installation; reinstall floranet.")
    digest = file_digest(path)
    if digest != info.bundled.sha256:
        raise WeightsError(
            f"The bundled weights file {path} is damaged (sha256 {digest}, expected {info.bundled.sha256}); "
            "reinstall floranet."
        )
    return path


def imagenet_file(arch: str, *, include_top: bool, timeout: float = 10.0) -> Path:
    """The ImageNet weights file of a registered backbone: bundled (no network) or official (downloaded once).

    Raises:
        WeightsError: No such weights, a headless bundled file asked for with its top, or no network.
    """
    info = registry.lookup(arch)
    if info is not None and info.bundled is not None:
        if include_top:
            raise WeightsError(
                f"The ImageNet weights bundled for {arch!r} are headless (no classification top): "
                "use include_top=False. Received: weights='imagenet', include_top=True"
            )
        return bundled_file(arch)
    return fetch_imagenet(arch, include_top=include_top, timeout=timeout)


def ensure_available(backbone: str, weights: str | os.PathLike[str] | None, *, timeout: float = 10.0) -> None:
    """Fails fast, before any data is read, when a backbone's weights cannot be had.

    Official files are fetched into Keras's cache now (a later build finds them there), bundled files
    verified, a path checked for existence. Models of ``keras.applications`` download their own
    weights when built; they are not checked here.

    Raises:
        ConfigError: An unknown backbone name (whatever the weights).
        WeightsError: The weights cannot be had; offline, the message names the backbones whose
            weights ship with floranet.
    """
    if weights != "imagenet":  # none, or a file of the user's
        if registry.lookup(backbone) is None:  # a name to check before any data is read, whatever the weights
            from floranet.models import backbones  # here: backbones builds with this module

            backbones.get(backbone)
        if weights is None:
            return
        if not Path(weights).is_file():
            raise WeightsError(
                "weights must be 'imagenet', None or the path of an existing weights file. "
                f"Received: weights={os.fspath(weights)!r}"
            )
        try:  # one the user may not read fails now, not at the model's build after the data scan
            with open(weights, "rb"):
                pass
        except OSError as e:
            raise WeightsError(
                f"Cannot read weights file {os.fspath(weights)}: {e.strerror or e}. "
                f"Received: weights={os.fspath(weights)!r}"
            ) from None
        return
    info = registry.lookup(backbone)
    if info is not None and info.imagenet in ("official", "bundled"):
        imagenet_file(info.name, include_top=False, timeout=timeout)
        return
    from floranet.models import backbones  # here: backbones builds with this module

    spec = backbones.get(backbone)  # an unknown name fails here too
    spec.check_imagenet(weights)  # resnet56 has none: said before the run's folder is made, not at its build
    if spec.info.family == "keras":
        # Keras fetches (or finds in its cache) its own file when the model is built: build it once now, before
        # any data is read (offline: a WeightsError within its network timeout).
        spec.builder(input_shape=(224, 224, 3), weights="imagenet")


def file_sha256(weights: str | os.PathLike[str] | None) -> str | None:
    """The sha256 of a ``--weights`` file: what decides its weights, where its path does not (a file replaced at
    one path is other weights). None for ``imagenet`` or ``none``, or a file that cannot be read (the weights
    check says why)."""
    if weights is None or weights == "imagenet":
        return None
    try:
        return file_digest(weights)
    except OSError:
        return None


def load_into(model: keras.Model, arch: str, weights: str | os.PathLike[str], *, include_top: bool) -> None:
    """Loads ``weights`` ("imagenet" or a file path) into ``model`` built for ``arch``."""
    if weights == "imagenet":
        path = imagenet_file(arch, include_top=include_top)
    else:
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(
                "weights must be 'imagenet', None or the path of an existing weights file. "
                f"Received: weights={str(weights)!r}"
            )
    load_file(model, path)


def load_file(model: keras.Model, path: str | os.PathLike[str]) -> None:
    """Loads a legacy HDF5 file by layer name, or a Keras 3 ``.weights.h5`` by structure.

    Raises:
        WeightsError: Not an HDF5 file, a file that refers to data outside itself (an external or soft link,
            external raw storage, a virtual dataset), or one that does not fit ``model``.
    """
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            legacy = "layer_names" in f.attrs or f.get("model_weights", getlink=True) is not None
            if not legacy:
                refuse_outside_data(f, path)  # Keras 3.15 refuses them too; here whatever the version
    except OSError as e:
        raise WeightsError(f"Cannot read weights file {path}: not an HDF5 file ({e}).") from e
    if legacy:
        load_legacy_h5_by_name(model, path)
        return
    try:
        model.load_weights(path)
    except Exception as e:  # Keras raises ValueError/KeyError on any structural mismatch
        raise WeightsError(f"Weights file {path} does not fit model {model.name!r}: {e}") from e


def refuse_outside_data(root: h5py.Group, path: Path) -> None:
    """WeightsError when a member of ``root`` refers to data outside the file: an external or soft link, a dataset
    with external raw storage, or a virtual dataset (h5py would read any file they name, as weights).

    Only hard links are walked, each group once (hard links may make cycles).
    """
    seen: set[int] = set()
    groups = [root]
    while groups:
        group = groups.pop()
        for name in group:
            member = f"{group.name.rstrip('/')}/{name}"
            link = group.get(name, getlink=True)
            if not isinstance(link, h5py.HardLink):
                raise _outside(path, member, f"is a link ({type(link).__name__})")
            obj = group[name]
            if isinstance(obj, h5py.Dataset):
                if obj.external:
                    raise _outside(path, member, f"keeps its data in {obj.external[0][0]!r}")
                if obj.is_virtual:
                    raise _outside(path, member, "is a virtual dataset")
            elif isinstance(obj, h5py.Group) and hash(obj.id) not in seen:
                seen.add(hash(obj.id))
                groups.append(obj)


def _outside(path: Path, member: str, what: str) -> WeightsError:
    return WeightsError(
        f"Weights file {path} refers to data outside itself ({member} {what}); floranet reads weights only "
        "from within the file. Received: weights=" + repr(str(path))
    )


def load_legacy_h5_by_name(model: keras.Model, path: Path) -> None:
    """Sets every weighted layer of ``model`` from the same-named group of a legacy HDF5 file.

    Layers in the file that the model lacks (e.g. ``predictions`` when loading
    a with-top file into a headless model) are skipped, unless named like the
    model's own (a file of a deeper network); a model layer missing from the
    file, or a shape or dtype mismatch, is an error.
    """
    try:
        missing, mismatched, lacking, updates = _matched_by_name(model, path)
    # h5py's words for a group or attribute not there; MemoryError: the weights of a model too big to hold
    except (KeyError, OSError, ValueError, TypeError, MemoryError) as e:
        raise WeightsError(f"Weights file {path} is not a usable Keras weights file: {e}") from e
    details = [f"missing layers {missing[:5]}" + (" ..." if len(missing) > 5 else "")] if missing else []
    if mismatched:
        details.append(f"weights that differ {mismatched[:3]}")
    if lacking:
        named = ", ".join(lacking[:3]) + (f" and {len(lacking) - 3} more" if len(lacking) > 3 else "")
        details.append(f"the file has {len(lacking)} layers this model lacks (is it another depth?): {named}")
    if details:
        raise WeightsError(f"Weights file {path} does not fit model {model.name!r}: {'; '.join(details)}.")
    for layer, arrays in updates:
        layer.set_weights(arrays)


def _matched_by_name(
    model: keras.Model, path: Path
) -> tuple[list[str], list[str], list[str], list[tuple[Any, list[Any]]]]:
    """``(missing layer names, misfits, layers the model lacks, (layer, arrays) to set)`` from a legacy HDF5 file."""
    with h5py.File(path, "r") as f:
        refuse_outside_data(f, path)
        root = f.get("model_weights", f)
        stored = {_str(n): root[_str(n)] for n in root.attrs["layer_names"]}
        missing, mismatched, updates = [], [], []
        for layer in _weighted_layers(model):
            group = stored.get(layer.name)
            if group is None:
                missing.append(layer.name)
                continue
            datasets = [group[_str(n)] for n in group.attrs["weight_names"]]
            current = layer.get_weights()
            misfit = _misfit(datasets, current)
            if misfit:
                mismatched.append(f"{layer.name}: {misfit}")
                continue
            # Read only now, each no bigger than the layer's own weight (a 1 MB file may declare 1 TiB). A file
            # may store a narrower dtype (the bundled one keeps float16): cast to the layer's own.
            arrays = [np.asarray(d[()]).astype(c.dtype, copy=False) for d, c in zip(datasets, current, strict=True)]
            updates.append((layer, arrays))
        lacking = _lacking(model, stored)
    return missing, mismatched, lacking, updates


def _lacking(model: keras.Model, stored: dict[str, Any]) -> list[str]:
    """The file's weighted layers that ``model`` lacks and that are named like its own, digits aside
    (``conv4_block7_1_conv`` beside ``conv4_block6_1_conv``: a file of another depth). A classification top
    (``predictions``) or a head of the file's own naming is not one: a with-top file loads into a headless model.
    """
    ours = {layer.name for layer in _weighted_layers(model)}
    kinds = {re.sub(r"[0-9]+", "#", name) for name in ours}
    return [
        name
        for name, group in stored.items()
        if name not in ours and re.sub(r"[0-9]+", "#", name) in kinds and len(group.attrs.get("weight_names", []))
    ]


def _misfit(datasets: list[Any], current: list[np.ndarray]) -> str | None:
    """Why a layer's stored weights cannot be its ``current`` ones, from their shapes and dtypes (nothing read)."""
    if not all(isinstance(d, h5py.Dataset) for d in datasets):
        return "the file holds a group, not an array, for one of its weights"
    stored, wanted = [d.shape for d in datasets], [c.shape for c in current]
    if stored != wanted:
        return f"file {stored} vs model {wanted}"
    odd = [d.dtype for d in datasets if d.dtype.kind not in "fiu"]
    return f"file dtype {odd[0]} is not a number type" if odd else None


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
