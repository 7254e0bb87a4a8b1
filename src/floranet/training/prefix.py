"""Stage 2 without redoing frozen work: the frozen prefix's outputs, cached per augmented view.

In stage 2 every layer below the fine-tuning point is frozen, so its output for a given input never changes.
The prefix (preprocessing and the backbone up to the first unfrozen layer) runs once per augmented *view* of
the training images, on the fastest inference runtime, and once on the validation images; its outputs are
stored as float16 ``.npy`` files (read a batch at a time) in ``RUN_DIR/features/prefix-<key>/``; the trainable top
(the rest of the backbone and the head, sharing the classifier's layers) trains on them, epoch ``e`` on view
``e mod views``. BatchNorm stays in inference mode as before (frozen layers; the top's BatchNorm layers are
not trainable), and the stage checkpoints and resumes as every stage does.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from floranet.errors import DatasetError
from floranet.inference import runtime
from floranet.models import backbones, classifier
from floranet.rundir import RunDir
from floranet.training import features as feature_cache
from floranet.training.data import Prepared
from floranet.utils.files import atomic_path

# The cached views may use at most this share of the free disk space, and never more than MAX_CACHE_BYTES.
DISK_SHARE = 0.5
MAX_CACHE_BYTES = 16 << 30
FLOAT16_MAX = 65504.0


@dataclass(frozen=True)
class Split:
    """A classifier cut at the fine-tuning point: ``top(prefix(x)) == model(x)``, layers shared with ``model``."""

    prefix: keras.Model
    top: keras.Model
    cut: str

    @property
    def cut_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.top.inputs[0].shape[1:])


def split_model(model: keras.Model, spec: backbones.Backbone) -> Split | None:
    """Cuts ``model`` before its first fine-tuned layer; None when no single tensor separates the two parts."""
    base = classifier.backbone_of(model)
    start = backbones.fine_tune_start(base, spec)
    cut = base.layers[start].input
    if not hasattr(cut, "shape") or isinstance(cut, (list, tuple)):
        return None
    try:
        below, above = keras.Model(base.inputs, cut), keras.Model(cut, base.outputs[0])
    except (ValueError, KeyError):  # the layers after the cut also read tensors from before it
        return None
    image = keras.Input(shape=model.inputs[0].shape[1:], name="image")
    x = image
    for layer in model.layers[1:]:
        if layer.name == classifier.BACKBONE_LAYER:
            break
        x = layer(x)
    prefix = keras.Model(image, below(x, training=False), name="prefix")
    cut_input = keras.Input(shape=cut.shape[1:], name="cut")
    top = keras.Model(cut_input, classifier.head_of(model)(above(cut_input, training=False)), name="top")
    return Split(prefix, top, base.layers[start].name)


def cache_bytes(split: Split, prepared: Prepared, views: int) -> int:
    """Disk space of ``views`` training views and the validation set (float16)."""
    per_image = math.prod(split.cut_shape) * 2
    return per_image * (views * len(prepared.split.train()) + len(prepared.split.validation()))


def cache_budget(folder: Path) -> int:
    """Bytes the cache may take on the disk holding ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    return min(MAX_CACHE_BYTES, int(shutil.disk_usage(folder).free * DISK_SHARE))


@dataclass
class PrefixCache:
    """The cached prefix outputs of one run: ``views`` training views and the validation set."""

    folder: Path
    train: list[ViewFile]  # per view: float16 [n, *cut_shape]
    train_rows: np.ndarray  # positions in the train split of the rows each view holds
    validation: ViewFile
    validation_rows: np.ndarray


def build_cache(
    split: Split,
    prepared: Prepared,
    run: RunDir,
    *,
    views: int,
    augment: bool,
    choice: runtime.RuntimeChoice,
    progress: bool,
    retry: bool = True,
) -> PrefixCache:
    """Computes (or, on resume, reuses) every view and the validation outputs of the prefix."""
    config = prepared.config
    key = _key(split, config.backbone, config.image_size, choice.key, augment, config.seed)
    folder = run / RunDir.FEATURES / f"prefix-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    feature_cache.describe(
        folder,
        {
            "cut": split.cut,
            "shape": list(split.cut_shape),
            "views": views,
            "augment": augment,
            "runtime": choice.runtime,
            "precision": choice.precision,
        },
    )
    fn = None
    jobs = [(f"train-view-{v}", "train", config.seed + 1000 * v, augment) for v in range(views)]
    outputs: list[tuple[ViewFile, np.ndarray]] = []
    for name, subset, seed, aug in [*jobs, ("validation", "validation", config.seed, False)]:
        path = folder / f"{name}.npy"
        if not path.exists():
            fn = fn or runtime.compile_inference(
                split.prefix, choice, streaming=True, calibration=prepared.calibration_images(choice.precision)
            )
            _compute(fn, prepared, subset, seed, aug, path, split.cut_shape, progress)
        rows = np.load(folder / f"{name}.rows.npy")
        outputs.append((ViewFile(path, len(rows)), rows))
    train, validation = outputs[:-1], outputs[-1]
    if any(not np.array_equal(rows, train[0][1]) for _, rows in train):
        # Decoding fails alike in every view unless files changed between views (e.g. before a resume).
        if retry:
            shutil.rmtree(folder)
            return build_cache(
                split, prepared, run, views=views, augment=augment, choice=choice, progress=progress, retry=False
            )
        raise DatasetError(f"The images of {prepared.data_dir} changed while stage 2 cached them; train again.")
    return PrefixCache(folder, [t[0] for t in train], train[0][1], validation[0], validation[1])


def _key(split: Split, backbone: str, size: tuple[int, int], precision: str, augment: bool, seed: int) -> str:
    fingerprint = feature_cache.weights_fingerprint(split.prefix)
    text = f"{backbone}|{split.cut}|{fingerprint}|{size[0]}x{size[1]}|{precision}|{augment}|{seed}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _compute(
    fn: Any,
    prepared: Prepared,
    subset: str,
    seed: int,
    augment: bool,
    path: Path,
    shape: tuple[int, ...],
    progress: bool,
) -> None:
    """One view (or the validation set) through the prefix, streamed into a float16 ``.npy`` (+ its rows)."""
    from tqdm.auto import tqdm

    n = len(prepared.rows(subset))
    ds = prepared.dataset(subset, augment=augment, seed=seed, with_index=True)
    positions: list[int] = []

    def images() -> Any:
        for pixels, index in ds:
            positions.extend(int(i) for i in index.numpy())
            yield pixels.numpy()

    bar = tqdm(total=n, desc=f"Stage 2 prefix: {path.stem}", unit="img", disable=not progress)

    def outputs() -> Any:
        for out in fn.map(images()) if hasattr(fn, "map") else map(fn, images()):
            bar.update(len(out))
            yield out

    write_view(path, shape, n, outputs())
    with atomic_path(path.with_name(path.stem + ".rows.npy")) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(positions, np.int64))
    bar.close()


def write_view(path: Path, shape: tuple[int, ...], n: int, batches: Any) -> int:
    """Streams ``batches`` into a float16 ``.npy`` of ``n`` rows (zero rows after the last batch); returns the
    rows written. Plain file writes: a memory map would count every written page in the process's memory."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # renamed last: the view's presence means it is complete
        np.lib.format.write_array_header_1_0(f, {"descr": "<f2", "fortran_order": False, "shape": (n, *shape)})
        done = 0
        for batch in batches:
            # Saturate rather than overflow to inf: these activations stay far below float16's range.
            f.write(np.clip(batch, -FLOAT16_MAX, FLOAT16_MAX).astype("<f2").tobytes())
            done += len(batch)
        f.write(bytes(2 * math.prod(shape) * (n - done)))  # rows of images that failed to decode: never read
    return done


class ViewFile:
    """Rows of one cached view, read with ``pread`` on demand (float16 ``.npy``; only the first ``count`` rows
    hold images). Reads, not a memory map, keep the process's memory at one batch whatever the cache size."""

    def __init__(self, path: Path, count: int) -> None:
        with open(path, "rb") as f:
            np.lib.format.read_magic(f)
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            self.offset = f.tell()
        if dtype != np.dtype("<f2") or shape[0] < count:
            raise ValueError(f"{path} is not a cached view of {count} float16 rows (shape {shape}, {dtype})")
        self.path, self.count, self.shape = path, count, tuple(shape[1:])
        self.row_bytes = 2 * math.prod(self.shape)

    def __len__(self) -> int:
        return self.count

    def take(self, rows: np.ndarray) -> np.ndarray:
        """float32 ``[len(rows), *shape]`` of the given (sorted) rows; consecutive rows are read at once."""
        out = np.empty((len(rows), *self.shape), np.float32)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            start = 0
            while start < len(rows):
                end = start + 1
                while end < len(rows) and rows[end] == rows[end - 1] + 1:
                    end += 1
                data = os.pread(fd, self.row_bytes * (end - start), self.offset + int(rows[start]) * self.row_bytes)
                out[start:end] = np.frombuffer(data, "<f2").reshape(end - start, *self.shape)
                start = end
        finally:
            os.close(fd)
        return out


class ViewSequence(keras.utils.PyDataset):
    """Batches of one cached view per epoch (epoch ``e``: view ``e mod views``), shuffled per epoch.

    Args:
        views: Per view, its cached float16 prefix outputs.
        labels: Label of each row (the same rows in every view).
        batch_size: Rows per batch.
        seed: Seeds each epoch's order.
        first_epoch: The epoch training starts at (a resumed run continues the view cycle).
        class_weight: Per-class sample weights, or None.
    """

    def __init__(
        self,
        views: list[ViewFile],
        labels: np.ndarray,
        batch_size: int,
        seed: int,
        first_epoch: int = 0,
        class_weight: dict[int, float] | None = None,
    ) -> None:
        super().__init__()
        self.views, self.labels, self.batch_size, self.seed = views, labels, batch_size, seed
        self.weights = (
            None if class_weight is None else np.asarray([class_weight.get(int(c), 1.0) for c in labels], np.float32)
        )
        self.epoch = first_epoch
        self._order = self._shuffled()

    def _shuffled(self) -> np.ndarray:
        return np.random.default_rng(self.seed + self.epoch).permutation(len(self.labels))

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __getitem__(self, i: int) -> tuple[np.ndarray, ...]:
        rows = np.sort(self._order[i * self.batch_size : (i + 1) * self.batch_size])  # sorted: sequential reads
        x = self.views[self.epoch % len(self.views)].take(rows)
        if self.weights is None:
            return x, self.labels[rows]
        return x, self.labels[rows], self.weights[rows]

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self._order = self._shuffled()


def remove_caches(run: RunDir) -> None:
    """Drops the run's prefix caches once stage 2 is complete: they only serve training (and take space)."""
    for folder in (run / RunDir.FEATURES).glob("prefix-*"):
        shutil.rmtree(folder, ignore_errors=True)


__all__ = [
    "PrefixCache",
    "Split",
    "ViewSequence",
    "build_cache",
    "cache_budget",
    "cache_bytes",
    "remove_caches",
    "split_model",
]
