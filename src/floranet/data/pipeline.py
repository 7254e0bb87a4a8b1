"""The tf.data input pipeline: decode, resize, shuffle, batch, augment.

Two decoders share one pipeline:

* the fast path, ``tf.io.decode_image`` in parallel tf.data threads (for
  JPEG ``decode_jpeg`` with the accurate IDCT, which matches Pillow bit for
  bit), for plain 8-bit RGB/gray files (what ``ImageInfo.tf_decodable`` promises);
* the safe path, :func:`floranet.data.images.load_image` (Pillow) through
  ``tf.numpy_function``, for everything else (EXIF rotation, CMYK, alpha,
  palette, 16-bit, ...).

Each file is decoded in a tiny per-file dataset ``tf-attempt -> Pillow
attempt -> take(1)`` (the tf attempt swallows its own errors), so a file tf
cannot read falls back to Pillow, and a file neither can read becomes an
element with ``ok=False`` that names its path. That is how ``on_error="skip"``
drops exactly the bad files (and logs each once) without ever crashing a
training run, while the order of the good files stays deterministic.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import tensorflow as tf

from floranet.config import DEFAULT_MAX_PIXELS, check_positive_int
from floranet.data.augment import Augment
from floranet.data.decode import check_image_size, encode_paths, pillow_decode, resolve_flags
from floranet.data.images import max_file_bytes
from floranet.errors import ConfigError, DatasetError
from floranet.utils.text import quoted

if TYPE_CHECKING:
    from floranet.data.split import Split

log = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE
ON_ERROR = ("skip", "raise")
SUBSETS = ("train", "validation", "all")
_MAX_LISTED = 10


def _header_pixels(contents: tf.Tensor) -> tf.Tensor:
    """Pixel count from the header, so huge images never reach the tf decoder."""

    def be32(pos: int) -> tf.Tensor:
        b = tf.cast(tf.io.decode_raw(tf.strings.substr(contents, pos, 4), tf.uint8), tf.int64)
        return ((b[0] * 256 + b[1]) * 256 + b[2]) * 256 + b[3]

    def png() -> tf.Tensor:
        return be32(16) * be32(20)

    def jpeg() -> tf.Tensor:
        shape = tf.cast(tf.io.extract_jpeg_shape(contents), tf.int64)
        return shape[0] * shape[1]

    magic = tf.strings.substr(contents, 0, 4)
    is_png = tf.equal(magic, b"\x89PNG")
    is_jpeg = tf.equal(tf.strings.substr(magic, 0, 2), b"\xff\xd8")
    # Other formats are routed to tf only when the doctor said so; their size
    # is capped by the doctor's own max_pixels check.
    return tf.case([(is_png, png), (is_jpeg, jpeg)], default=lambda: tf.constant(0, tf.int64))


def _resize(image: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
    # Same as keras.utils.image_dataset_from_directory: bilinear, no antialias, no crop.
    out = tf.image.resize(image, image_size, method="bilinear", antialias=False)
    out.set_shape((*image_size, 3))
    return tf.cast(out, tf.float32)


def decoders(image_size: tuple[int, int], max_pixels: int) -> tuple[Any, Any]:
    """Returns ``(tf_decode, pillow)``: ``fn(path) -> (float32 image at image_size, ok)`` each."""

    def resize(image: tf.Tensor) -> tf.Tensor:
        return _resize(image, image_size)

    def tf_decode(path: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        contents = tf.io.read_file(path)
        small = tf.debugging.assert_less_equal(_header_pixels(contents), tf.constant(max_pixels, tf.int64))
        with tf.control_dependencies([small]):
            # JPEG with the accurate integer IDCT: bit-identical to Pillow (libjpeg-turbo
            # islow), so both paths agree; decode_image's default fast IDCT is off by up
            # to ~20 levels at edges, for ~10% more speed.
            image = tf.cond(
                tf.equal(tf.strings.substr(contents, 0, 2), b"\xff\xd8"),
                lambda: tf.io.decode_jpeg(contents, channels=3, dct_method="INTEGER_ACCURATE"),
                lambda: tf.io.decode_image(contents, channels=3, expand_animations=False),
            )
        return resize(image), tf.constant(True)

    def pillow(path: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image, ok = tf.numpy_function(
            pillow_decode, [path, tf.constant(max_pixels, tf.int64)], [tf.uint8, tf.bool], stateful=False
        )
        image.set_shape((None, None, 3))
        ok.set_shape(())
        return resize(image), ok

    return tf_decode, pillow


def _decode_stage(image_size: tuple[int, int], max_pixels: int) -> Any:
    """Returns ``fn(path, use_tf) -> Dataset`` of exactly one ``(image, ok)``."""
    tf_decode, pillow = decoders(image_size, max_pixels)

    def stage(path: tf.Tensor, use_tf: tf.Tensor) -> tf.data.Dataset:
        first = (
            tf.data.Dataset.from_tensors((path, use_tf))
            .filter(lambda p, u: u)
            .map(lambda p, u: tf_decode(p))
            .ignore_errors()  # any tf failure -> empty -> Pillow gets its turn
        )
        second = tf.data.Dataset.from_tensors(path).map(pillow)
        return first.concatenate(second).take(1)

    return stage


def _decoded(
    paths: list[bytes],
    flags: list[bool],
    image_size: tuple[int, int],
    max_pixels: int,
    extra: tuple[Any, ...] = (),
    *,
    shuffle: bool = False,
    seed: int = 0,
) -> tf.data.Dataset:
    """Dataset of ``(image, ok, path, *extra)`` per file, in order (or seeded shuffle)."""
    # tf.io.read_file reads a file whole: one larger than any image of max_pixels can be (a 1.3 KB JPEG padded to
    # 1.5 GB took 2.2 GB of memory) goes to Pillow's path, which refuses it before reading it, as it refuses it
    # for any other runtime.
    flags = [use_tf and not _over_file_limit(p, max_pixels) for p, use_tf in zip(paths, flags, strict=True)]
    ds = tf.data.Dataset.from_tensor_slices((paths, flags, *extra))
    if shuffle:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    stage = _decode_stage(image_size, max_pixels)

    def one(path: tf.Tensor, use_tf: tf.Tensor, *rest: tf.Tensor) -> tf.data.Dataset:
        return stage(path, use_tf).map(lambda image, ok: (image, ok, path, *rest))

    return ds.interleave(one, num_parallel_calls=AUTOTUNE, deterministic=True)


def _over_file_limit(path: bytes, max_pixels: int) -> bool:
    """Whether ``path`` is larger than :func:`floranet.data.images.max_file_bytes` allows (False where it cannot be
    read: the decoders say why)."""
    try:
        return os.stat(path).st_size > max_file_bytes(max_pixels)
    except OSError:
        return False


def _raise_bad(path: bytes) -> bool:
    raise ValueError(f"DatasetError: Cannot decode image file {quoted(os.fsdecode(path))}")


def make_dataset(
    paths: Sequence[str | os.PathLike[str]],
    labels: Sequence[int] | None,
    *,
    image_size: tuple[int, int],
    batch_size: int,
    tf_decodable: Sequence[bool | None] | None = None,
    shuffle: bool = False,
    augment: Augment | None = None,
    seed: int = 123,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_error: str = "skip",
    skipped: list[str] | None = None,
) -> tf.data.Dataset:
    """Builds a batched dataset of resized images (and labels).

    Args:
        paths: Image files (absolute or openable from the working directory).
        labels: Integer class per path, or None for images only.
        image_size: ``(height, width)`` to resize to (bilinear, no crop).
        batch_size: Images per batch (the last batch may be smaller).
        tf_decodable: Per path, whether ``tf.io.decode_image`` reads it exactly
            (from the doctor); None entries (or None) are guessed per file.
        shuffle: Seeded shuffle, a new (deterministic) order each epoch.
        augment: Random augmentation of each batch; use it for training only.
        seed: Seed for shuffling and augmentation.
        max_pixels: Larger images are unusable (decompression-bomb guard).
        on_error: ``"skip"`` drops unreadable files with a warning (once per
            file); ``"raise"`` decodes every file once up front and raises
            DatasetError naming the bad ones (a file that breaks later raises
            ``tf.errors.InvalidArgumentError`` naming it during iteration).
        skipped: If given, each skipped file's path is appended once.

    Returns:
        Dataset of ``(float32 [B, H, W, 3] in 0..255 RGB, int32 [B])``, or of
        images only when ``labels`` is None; prefetched.

    Raises:
        ConfigError: An argument is invalid.
        DatasetError: No paths, or (``on_error="raise"``) unreadable files.
    """
    size = check_image_size(image_size)
    batch = check_positive_int("batch_size", batch_size)
    max_px = check_positive_int("max_pixels", max_pixels)
    if on_error not in ON_ERROR:
        raise ConfigError(f"on_error must be one of {ON_ERROR}. Received: on_error={on_error!r}")
    if augment is not None and not isinstance(augment, Augment):
        raise ConfigError(f"augment must be an Augment or None. Received: augment={augment!r}")
    encoded = encode_paths(paths)
    if not encoded:
        raise DatasetError("make_dataset got no image paths")
    extra: tuple[Any, ...] = ()
    if labels is not None:
        if len(labels) != len(encoded):
            raise ConfigError(
                f"labels must have one entry per path ({len(encoded)}). Received: len(labels)={len(labels)}"
            )
        if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0 for v in labels):
            raise ConfigError(f"labels must be non-negative ints. Received: labels={list(labels)[:_MAX_LISTED]}...")
        extra = (np.asarray(labels, dtype=np.int32),)
    flags = resolve_flags(encoded, tf_decodable, max_px)

    if on_error == "raise":
        _verify_all(encoded, flags, size, max_px)
        check = _raise_check
    else:
        check = _skip_check(set(), skipped)

    ds = _decoded(encoded, flags, size, max_px, extra, shuffle=shuffle, seed=seed)
    ds = ds.filter(check)
    ds = ds.map(
        lambda image, ok, path, *rest: (image, *rest) if rest else image,
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    ds = ds.batch(batch, num_parallel_calls=AUTOTUNE, deterministic=True)
    if augment is not None:
        # One seed per batch from a seeded stream that draws anew each epoch; stateless ops, so parallel.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip(ds, seeds).map(
            lambda batch, s: (
                (augment.apply(batch[0], s), *batch[1:]) if isinstance(batch, tuple) else augment.apply(batch, s)
            ),
            num_parallel_calls=AUTOTUNE,
            deterministic=True,
        )
    return ds.prefetch(AUTOTUNE)


def _check_calling(on_bad: Any) -> Any:
    """A dataset filter: keeps decoded elements, and hands a failed one's path to ``on_bad(path) -> bool``."""

    def check(image: tf.Tensor, ok: tf.Tensor, path: tf.Tensor, *rest: tf.Tensor) -> tf.Tensor:
        def bad() -> tf.Tensor:
            out = tf.numpy_function(on_bad, [path], tf.bool, stateful=True)
            out.set_shape(())
            return out

        return tf.cond(ok, lambda: tf.constant(True), bad)

    return check


def _skip_check(seen: set[bytes], skipped: list[str] | None) -> Any:
    def note(path: bytes) -> bool:
        if path not in seen:  # warn once per file, not once per epoch
            seen.add(path)
            name = os.fsdecode(path)
            log.warning("Skipping unreadable image file %r", name)
            if skipped is not None:
                skipped.append(name)
        return False

    return _check_calling(note)


_raise_check = _check_calling(_raise_bad)


def _verify_all(paths: list[bytes], flags: list[bool], image_size: tuple[int, int], max_pixels: int) -> None:
    """One parallel decode pass; DatasetError listing the files that fail."""
    oks = _decoded(paths, flags, (1, 1), max_pixels).map(lambda image, ok, path: ok).batch(1024)
    status = np.concatenate([b.numpy() for b in oks])
    bad = [os.fsdecode(p) for p, ok in zip(paths, status, strict=True) if not ok]
    if bad:
        more = f" and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else ""
        raise DatasetError(
            f"{len(bad)} image file(s) cannot be decoded: {', '.join(map(repr, bad[:_MAX_LISTED]))}{more}. "
            "Run `floranet doctor` on the folder, or use on_error='skip'."
        )


def dataset_from_split(
    split: Split,
    data_dir: str | os.PathLike[str],
    subset: str,
    *,
    tf_decodable: Mapping[str, bool] | None = None,
    augment: Augment | None = None,
    **kwargs: Any,
) -> tf.data.Dataset:
    """Builds :func:`make_dataset` for one subset of a split manifest.

    Args:
        split: The manifest.
        data_dir: The dataset folder its paths are relative to.
        subset: ``"train"``, ``"validation"`` or ``"all"``.
        tf_decodable: ``{relative path: bool}`` from the doctor; missing
            entries are guessed.
        augment: Applied to ``"train"`` only; ignored for the other subsets,
            so validation/evaluation data is never augmented.
        **kwargs: Passed to :func:`make_dataset` (image_size, batch_size, ...).

    Returns:
        The dataset of ``(images, labels)`` with labels from ``split.label_index``.

    Raises:
        ConfigError: ``subset`` is invalid.
        DatasetError: The subset is empty.
    """
    if subset not in SUBSETS:
        raise ConfigError(f"subset must be one of {SUBSETS}. Received: subset={subset!r}")
    rows = split.rows if subset == "all" else split.train() if subset == "train" else split.validation()
    if not rows:
        raise DatasetError(f"The split has no {subset} images")
    root = os.fspath(data_dir)
    paths = [os.path.join(root, *r.path.split("/")) for r in rows]
    labels = [split.label_index(r.label) for r in rows]
    flags = [tf_decodable.get(r.path) for r in rows] if tf_decodable is not None else None
    return make_dataset(paths, labels, tf_decodable=flags, augment=augment if subset == "train" else None, **kwargs)
