"""Frozen-backbone features, computed once and cached on disk.

The cache lives in ``RUN_DIR/features/<key>/``; the key hashes the backbone
name, its actual weights, the image size and the compute precision, and each
row is keyed by the image file's sha256. Features are written in chunks (each
file atomic), so a run killed mid-extraction resumes at the last chunk.

:func:`stage1_cache` and :func:`fill_stage1` are stage 1's cache of a classifier's pooled features, used by
training (:func:`floranet.training.stages.cached_head_stage1`) and by the audit and the unknown answer
(:mod:`floranet.training.embeddings`); :func:`stage1_matches` tells whether a cache found on disk is one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from floranet.config import TrainConfig
from floranet.inference import batch, runtime
from floranet.models import backbones, classifier, weights
from floranet.rundir import RunDir
from floranet.utils.files import atomic_path, write_json

log = logging.getLogger(__name__)
CHUNK = 256


def weights_fingerprint(model: keras.Model) -> str:
    """sha256 over every weight of ``model`` (cheap next to one forward pass)."""
    h = hashlib.sha256()
    for w in model.weights:
        h.update(np.ascontiguousarray(keras.ops.convert_to_numpy(w)).tobytes())
    return h.hexdigest()


def cache_key(backbone: str, fingerprint: str, image_size: tuple[int, int], precision: str) -> str:
    text = f"{backbone}|{fingerprint}|{image_size[0]}x{image_size[1]}|{precision}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class AlsoWrite:
    """More outputs of the same pass as the pooled features (stage 1 also writes the frozen prefix's outputs).

    Attributes:
        model: The extractor: raw pixels → ``[features | more]``.
        width: How many columns are the features.
        sink: Takes each computed batch's sha256s and its ``more`` columns.
    """

    model: keras.Model
    width: int
    sink: Callable[[Sequence[str], np.ndarray], None]


def missing(cache_dir: str | os.PathLike[str], hashes: Sequence[str]) -> int:
    """How many distinct files of ``hashes`` the cache does not hold yet."""
    known = load_cache(Path(cache_dir)) if Path(cache_dir).exists() else {}
    return len({h for h in hashes if h not in known})


def extract(
    extractor: Callable[[np.ndarray], np.ndarray],
    paths: Sequence[str],
    hashes: Sequence[str],
    *,
    cache_dir: str | os.PathLike[str],
    image_size: tuple[int, int],
    batch_size: int,
    tf_decodable: Sequence[bool] | None = None,
    progress: bool = True,
    also: AlsoWrite | None = None,
) -> dict[str, np.ndarray]:
    """Returns ``{sha256: feature vector}`` for every decodable file, computing only what is missing.

    Files that fail to decode are left out (and logged), never fatal. With ``also``, ``extractor`` is its model's
    and the columns after the features go to its sink.
    """
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    known, damaged = read_cache(cache)
    todo = [i for i, h in enumerate(hashes) if h not in known]
    # One copy per distinct file: duplicates share their features.
    first: dict[str, int] = {}
    for i in todo:
        first.setdefault(hashes[i], i)
    todo = list(first.values())
    if todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="Computing backbone features (once)", unit="img", disable=not progress)
        # After the highest number: with a chunk set aside, their count would name one that exists.
        next_chunk = 1 + max((int(p.stem[6:]) for p in cache.glob("chunk-*.npz") if p.stem[6:].isdigit()), default=-1)
        # One pipeline for the whole pass (decoding stays ahead of the model across chunk
        # boundaries); a chunk file is written every CHUNK images so a kill loses at most one.
        feats: list[np.ndarray] = []
        got: list[int] = []
        seen_positions: set[int] = set()

        def flush() -> None:
            nonlocal next_chunk
            if not got:
                return
            chunk_hashes = np.asarray([hashes[todo[p]] for p in got])
            chunk = np.concatenate(feats, axis=0)
            with atomic_path(cache / f"chunk-{next_chunk:05d}.npz") as tmp, open(tmp, "wb") as f:
                np.savez(f, sha256=chunk_hashes, features=chunk)
            known.update(zip(chunk_hashes.tolist(), chunk, strict=True))
            next_chunk += 1
            feats.clear()
            got.clear()

        for positions, out in batch.iter_outputs(
            extractor,
            [paths[i] for i in todo],
            image_size=image_size,
            batch_size=batch_size,
            tf_decodable=None if tf_decodable is None else [tf_decodable[i] for i in todo],
        ):
            if also is not None:
                also.sink([hashes[todo[p]] for p in positions], out[:, also.width :])
                out = out[:, : also.width]
            feats.append(out)
            got.extend(positions)
            seen_positions.update(positions)
            bar.update(len(positions))
            if len(got) >= CHUNK:
                flush()
        flush()
        for m in sorted(set(range(len(todo))) - seen_positions):
            log.warning("Skipped %s: it could not be decoded", paths[todo[m]])
        bar.close()
    set_aside(damaged)  # every image asked for is computed now (or could not be decoded)
    return {h: known[h] for h in hashes if h in known}


def load_cache(cache: Path) -> dict[str, np.ndarray]:
    """``{sha256: features}`` of every chunk in ``cache`` (see :func:`read_cache`)."""
    return read_cache(cache)[0]


def read_cache(cache: Path) -> tuple[dict[str, np.ndarray], list[Path]]:
    """``{sha256: features}`` of every chunk in ``cache``, and the chunks that cannot be read (damaged on disk, or
    not written by floranet): skipped with a warning, so their images are computed again rather than the run
    failing on a cache, and then set aside (:func:`set_aside`)."""
    known: dict[str, np.ndarray] = {}
    damaged: list[Path] = []
    for chunk in sorted(cache.glob("chunk-*.npz")):
        try:
            with np.load(chunk) as data:
                known.update(zip(data["sha256"].tolist(), data["features"], strict=True))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            log.warning("Skipped the damaged feature cache chunk %s (%s): its images are computed again", chunk, e)
            damaged.append(chunk)
    return known, damaged


def set_aside(damaged: Sequence[Path]) -> None:
    """Renames damaged chunks to ``<name>.damaged`` in their cache folder (floranet's own files, kept to look at,
    not deleted), once the images asked for are in other chunks: left as they were, every later run warned that
    their images were computed again, though nothing was."""
    for chunk in damaged:
        try:
            os.replace(chunk, chunk.with_name(f"{chunk.name}.damaged"))
        except OSError as e:  # a read-only cache: the warning comes again, nothing worse
            log.warning("Could not set the damaged feature cache chunk %s aside: %s", chunk, e)


def describe(cache: Path, info: dict[str, Any]) -> None:
    write_json(cache / "key.json", info)


def weights_source(config: TrainConfig) -> str | None:
    """What gives ``config``'s backbone its weights, known without building it (None: a file that cannot be read).

    ``key.json``'s ``weights_sha256`` hashes the built backbone's weights, so comparing it needs the model built
    (and its weights file loaded): the cost a found cache saves. This is what decides those weights instead: a
    file's sha256 (not its path: a file replaced at one path is other weights), the seed of a random init, the
    registry's file identity of ImageNet weights (Keras's own for a ``keras:`` model: its name).
    """
    if config.weights is None:
        return f"random init, seed {config.seed}"
    if config.weights == "imagenet":
        info = backbones.get(config.backbone).info
        if info.bundled is not None:
            return f"imagenet bundled {info.bundled.file} sha256 {info.bundled.sha256}"
        if info.weights_file is not None:
            return "imagenet official {} md5 {}".format(*info.weights_file.file(include_top=False))
        return f"imagenet keras {backbones.get(config.backbone).name}"
    digest = weights.file_sha256(config.weights)  # None: gone or unreadable, no cache can hold its features
    return None if digest is None else f"file sha256 {digest}"


@dataclass(frozen=True)
class Stage1Cache:
    """Where stage 1 keeps a classifier's pooled features: the folder, the backbone's weights fingerprint, what
    gave the backbone those weights (:func:`weights_source`, read when it was built) and the runtime."""

    path: Path
    fingerprint: str
    choice: runtime.RuntimeChoice
    source: str | None = None

    def describe(self, config: TrainConfig) -> dict[str, Any]:
        """What ``key.json`` records (and :func:`stage1_matches` compares)."""
        return {
            "backbone": backbones.get(config.backbone).name,
            "weights": config.weights or "none",
            "weights_sha256": self.fingerprint,
            "weights_source": self.source,
            "image_size": list(config.image_size),
            "runtime": self.choice.runtime,
            "precision": self.choice.precision,
        }


def stage1_cache(run: RunDir, model: keras.Model, config: TrainConfig) -> Stage1Cache:
    """The cache of ``model``'s frozen-backbone features under ``config`` (backbone, weights, size, runtime)."""
    choice = runtime.choose(config.runtime, config.precision)
    fingerprint = weights_fingerprint(classifier.backbone_of(model))
    key = cache_key(backbones.get(config.backbone).name, fingerprint, config.image_size, choice.key)
    return Stage1Cache(run / RunDir.FEATURES / key, fingerprint, choice, weights_source(config))


def stage1_matches(
    info: dict[str, Any], config: TrainConfig, choice: runtime.RuntimeChoice, source: str | None
) -> bool:
    """Whether a cache's ``key.json`` says it holds ``config``'s stage-1 features on ``choice``, of the weights
    ``source`` (:func:`weights_source` of ``config`` now: a ``key.json`` without one, from before it was recorded,
    matches nothing, and its features are computed again, into the same folder when the weights are the same)."""
    return (
        source is not None
        and info.get("weights_source") == source
        and info.get("backbone") == backbones.get(config.backbone).name
        and info.get("weights") == (config.weights or "none")
        and list(info.get("image_size", [])) == list(config.image_size)
        and (info.get("runtime"), info.get("precision")) == (choice.runtime, choice.precision)
    )


def fill_stage1(
    cache: Stage1Cache,
    model: keras.Model,
    config: TrainConfig,
    paths: Sequence[str],
    hashes: Sequence[str],
    *,
    tf_decodable: Sequence[bool] | None = None,
    calibration: np.ndarray | None = None,
    progress: bool = False,
    also: AlsoWrite | None = None,
) -> dict[str, np.ndarray]:
    """``{sha256: pooled features}`` of every decodable file through ``model``'s frozen backbone, the missing
    ones computed into ``cache`` (``calibration``: images for int8; ``also``: more outputs of the same pass).

    Raises:
        ConfigError: int8 without calibration images.
    """
    extractor = stage1_extractor(cache, model, calibration=calibration, also=also)
    return fill_with(extractor, cache, config, paths, hashes, tf_decodable=tf_decodable, progress=progress, also=also)


def stage1_extractor(
    cache: Stage1Cache, model: keras.Model, *, calibration: np.ndarray | None = None, also: AlsoWrite | None = None
) -> Callable[[np.ndarray], np.ndarray]:
    """The runtime function that computes the cache's features (``also``'s model when given)."""
    return runtime.compile_inference(
        also.model if also is not None else classifier.feature_extractor(model),
        cache.choice,
        streaming=True,
        calibration=calibration,
    )


def fill_with(
    extractor: Callable[[np.ndarray], np.ndarray],
    cache: Stage1Cache,
    config: TrainConfig,
    paths: Sequence[str],
    hashes: Sequence[str],
    *,
    tf_decodable: Sequence[bool] | None = None,
    progress: bool = False,
    also: AlsoWrite | None = None,
) -> dict[str, np.ndarray]:
    """:func:`fill_stage1` with an extractor made by :func:`stage1_extractor`."""
    feats = extract(
        extractor,
        list(paths),
        list(hashes),
        cache_dir=cache.path,
        image_size=config.image_size,
        batch_size=config.batch_size,
        tf_decodable=tf_decodable,
        progress=progress,
        also=also,
    )
    describe(cache.path, cache.describe(config))
    return feats
