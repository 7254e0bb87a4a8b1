"""Stage 2 without redoing frozen work: the frozen prefix's outputs, cached per view.

In stage 2 every layer below the fine-tuning point is frozen, so its output for a given input never changes.
The prefix (preprocessing and the backbone up to the first unfrozen layer) runs once per *view* of the training
images (augmented, or the images as they are), on the fastest inference runtime, and once on the validation
images; its outputs are stored as float16 ``.npy`` files (:mod:`floranet.training.views`) in
``RUN_DIR/features/prefix-<key>/``; the trainable top (the rest of the backbone and the head, sharing the
classifier's layers) trains on them, epoch ``e`` on view ``e mod views``. BatchNorm stays in inference mode as
before (frozen layers; the top's BatchNorm layers are not trainable), and the stage checkpoints and resumes as
every stage does.

The unaugmented outputs cost no pass of their own: stage 1's feature extraction runs the same frozen layers
on the same images, so it also writes their prefix outputs (:func:`stage1_writer`, ``prefix-stage1-<key>/``),
and :func:`build_cache` copies the validation set and an unaugmented training view from there.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from floranet.config import TrainConfig
from floranet.errors import DatasetError
from floranet.inference import runtime
from floranet.models import backbones, classifier
from floranet.rundir import RunDir
from floranet.training import features as feature_cache
from floranet.training.data import Prepared
from floranet.training.views import ViewFile, view_writer, write_view
from floranet.utils.files import atomic_path

# The cached views may use at most this share of the free disk space, and never more than MAX_CACHE_BYTES.
DISK_SHARE = 0.5
MAX_CACHE_BYTES = 16 << 30
STAGE1 = "prefix-stage1-"  # folder prefix of stage 1's unaugmented outputs


@dataclass(frozen=True)
class Split:
    """A classifier cut at the fine-tuning point: ``top(prefix(x)) == model(x)``, layers shared with ``model``.

    Attributes:
        prefix: Raw pixels → the frozen layers' output at the cut.
        top: The cut's output → probabilities (the rest of the backbone, then the head).
        cut: Name of the first layer above the cut.
        rest: The cut's output → pooled backbone features (``top`` without the head).
    """

    prefix: keras.Model
    top: keras.Model
    cut: str
    rest: keras.Model

    @property
    def cut_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.top.inputs[0].shape[1:])

    def features_and_prefix(self) -> keras.Model:
        """Raw pixels → ``[pooled features | flattened prefix output]``: stage 1's extractor when it also writes
        the prefix outputs."""
        image = keras.Input(shape=self.prefix.inputs[0].shape[1:], name="image")
        cut = self.prefix(image)
        flat = keras.layers.Flatten(name="prefix_flat")(keras.ops.cast(cut, "float32"))
        pooled = keras.ops.cast(self.rest(cut), "float32")
        return keras.Model(image, keras.layers.Concatenate(name="features_and_prefix")([pooled, flat]))

    def probabilities_and_features(self) -> keras.Model:
        """The cut's output → ``[probabilities | pooled features]`` (what the compiled model outputs from pixels)."""
        cut = keras.Input(shape=self.cut_shape, name="cut")
        pooled = self.rest(cut)
        probs = self.top.get_layer(classifier.HEAD_LAYER)(pooled)
        return keras.Model(cut, keras.layers.Concatenate()([probs, keras.ops.cast(pooled, probs.dtype)]))


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
    pooled = above(cut_input, training=False)
    rest = keras.Model(cut_input, pooled, name="rest")
    top = keras.Model(cut_input, classifier.head_of(model)(pooled), name="top")
    return Split(prefix, top, base.layers[start].name, rest)


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
    # A view's rows are positions in its subset: a resumed run whose images changed needs new views.
    key = _key(split, config, choice.key, augment, config.seed, _images_digest(prepared))
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
        copied = not aug and retry and _copy_from_stage1(split, prepared, run, choice, subset, path)
        if not _complete(path) and not copied:
            fn = fn or runtime.compile_inference(
                split.prefix, choice, streaming=True, calibration=prepared.calibration_images(choice.precision)
            )
            _compute(fn, prepared, subset, seed, aug, path, split.cut_shape, progress)
        rows = np.load(_rows_path(path))
        outputs.append((ViewFile(path, len(rows)), rows))
    train, validation = outputs[:-1], outputs[-1]
    if any(not np.array_equal(rows, train[0][1]) for _, rows in train):
        # Decoding fails alike in every view unless files changed between views (e.g. before a resume).
        if retry:  # again, every view computed here
            shutil.rmtree(folder)
            return build_cache(
                split, prepared, run, views=views, augment=augment, choice=choice, progress=progress, retry=False
            )
        raise DatasetError(f"The images of {prepared.data_dir} changed while stage 2 cached them; train again.")
    return PrefixCache(folder, [t[0] for t in train], train[0][1], validation[0], validation[1])


@contextlib.contextmanager
def stage1_writer(
    split: Split, prepared: Prepared, run: RunDir, choice: runtime.RuntimeChoice, images: int
) -> Iterator[Callable[[Sequence[str], np.ndarray], None]]:
    """A sink for stage 1's extraction with :meth:`Split.features_and_prefix`: it takes each batch's sha256s and
    flattened prefix outputs (up to ``images`` rows), kept in ``prefix-stage1-<key>/`` for :func:`build_cache`."""
    folder = _stage1_folder(split, prepared, run, choice)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sha256.npy").unlink(missing_ok=True)  # written last: its presence means the outputs are complete
    hashes: list[str] = []
    with view_writer(folder / "outputs.npy", split.cut_shape, images) as writer:

        def sink(batch_hashes: Sequence[str], flat: np.ndarray) -> None:
            writer.write(flat.reshape(len(flat), *split.cut_shape))
            hashes.extend(batch_hashes)

        yield sink
    _save_array(folder / "sha256.npy", np.asarray(hashes, dtype="U64"))


def stage1_outputs(
    split: Split, prepared: Prepared, run: RunDir, choice: runtime.RuntimeChoice, subset: str
) -> tuple[ViewFile, np.ndarray] | None:
    """Stage 1's unaugmented prefix outputs of every image of ``subset``: (the file, the file's row of each image,
    in the subset's order), or None when stage 1 did not write them all (a resumed run, another cut or runtime)."""
    folder = _stage1_folder(split, prepared, run, choice)
    if not (folder / "sha256.npy").exists():
        return None
    hashes = np.load(folder / "sha256.npy")
    index = {str(h): i for i, h in enumerate(hashes)}
    rows = prepared.rows(subset)
    if not all(r.sha256 in index for r in rows):
        return None
    return ViewFile(folder / "outputs.npy", len(hashes)), np.asarray([index[r.sha256] for r in rows], np.int64)


def _copy_from_stage1(
    split: Split, prepared: Prepared, run: RunDir, choice: runtime.RuntimeChoice, subset: str, path: Path
) -> bool:
    """Writes an unaugmented view (+ its rows) of ``subset`` from stage 1's outputs; False when there are none."""
    if _complete(path):
        return True
    found = stage1_outputs(split, prepared, run, choice, subset)
    if found is None:
        return False
    source, file_rows = found
    blocks = (source.take(file_rows[i : i + 256]) for i in range(0, len(file_rows), 256))
    write_view(path, split.cut_shape, len(file_rows), blocks)
    _save_array(_rows_path(path), np.arange(len(file_rows), dtype=np.int64))  # every image of the subset
    return True


def _images_digest(prepared: Prepared) -> str:
    digest = hashlib.sha256()
    for subset in ("train", "validation"):
        for r in prepared.rows(subset):
            digest.update(f"{subset}|{r.path}|{r.sha256}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _complete(view: Path) -> bool:
    """Whether a view and its rows are both on disk (the rows are written last: a kill between the two leaves a
    view to compute again, not one without rows)."""
    return view.exists() and _rows_path(view).exists()


def _rows_path(view: Path) -> Path:
    """Where a view's rows (the subset positions of the images it holds, in order) are kept."""
    return view.with_name(view.stem + ".rows.npy")


def _save_array(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def _stage1_folder(split: Split, prepared: Prepared, run: RunDir, choice: runtime.RuntimeChoice) -> Path:
    config = prepared.config
    key = _key(split, config, choice.key, False, 0)  # its outputs are found by sha256, whatever the split
    return run / RunDir.FEATURES / f"{STAGE1}{key}"


def _key(split: Split, config: TrainConfig, precision: str, augment: bool, seed: int, images: str = "") -> str:
    """A cache's name: the frozen prefix and its weights, how the images are fed, and (``images``, for views)
    which images in which order."""
    fingerprint = feature_cache.weights_fingerprint(split.prefix)
    size = config.image_size
    text = f"{config.backbone}|{split.cut}|{fingerprint}|{size[0]}x{size[1]}|{precision}|{augment}|{seed}|{images}"
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
    _save_array(_rows_path(path), np.asarray(positions, np.int64))
    bar.close()


def remove_caches(run: RunDir) -> None:
    """Drops the run's prefix caches once stage 2 is complete: they only serve training (and take space)."""
    for folder in (run / RunDir.FEATURES).glob("prefix-*"):
        shutil.rmtree(folder, ignore_errors=True)


__all__ = [
    "PrefixCache",
    "Split",
    "build_cache",
    "cache_budget",
    "cache_bytes",
    "remove_caches",
    "split_model",
    "stage1_outputs",
    "stage1_writer",
]
