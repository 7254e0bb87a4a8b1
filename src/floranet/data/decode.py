"""Decoding and resizing one image, the same way everywhere: eagerly and without TensorFlow (predict, server,
report), or inside a tf.data graph (:mod:`floranet.data.pipeline`, which holds the graph decoders).

Two decoders give identical pixels: the fast path, ``tf.io.decode_image`` (for JPEG ``decode_jpeg`` with the
accurate IDCT, which matches Pillow bit for bit), for plain 8-bit RGB/gray files; and the safe path,
:func:`floranet.data.images.load_image` (Pillow), for everything else (EXIF rotation, CMYK, alpha, palette,
16-bit, ...). Resizing is bilinear without antialias or crop, as ``keras.utils.image_dataset_from_directory``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image

from floranet.config import DEFAULT_MAX_PIXELS, check_positive_int, parse_image_size
from floranet.data.formats import allowed_formats, jpeg_damage, png_may_rotate
from floranet.data.images import (
    MAX_JPEG_SCANS,
    decode_image_bytes,
    decode_threads,
    jpeg_scans,
    load_image,
    max_file_bytes,
)
from floranet.data.resize import bilinear
from floranet.data.scan import JPEG_EXTENSIONS
from floranet.errors import ConfigError, DatasetError
from floranet.utils.files import read_capped
from floranet.utils.text import quoted

log = logging.getLogger(__name__)
_TF_EXTENSIONS = (*sorted(JPEG_EXTENSIONS), ".png")
_THREADED_GUESSES = 32


def check_image_size(image_size: Any) -> tuple[int, int]:
    return parse_image_size(image_size, minimum=1, allow_int=False)


def _guess_tf_decodable(path: bytes, max_pixels: int) -> bool:
    """Cheap per-file guess when the doctor's ``tf_decodable`` is unknown.

    Extension first (a JPEG's names, .png), then Pillow's lazy header read (no
    pixel decode) to route EXIF-rotated, CMYK, alpha, palette and 16-bit files
    to Pillow, which tf would silently decode differently (a PNG's orientation is looked for in every chunk
    Pillow reads one from: :func:`floranet.data.formats.png_may_rotate`), and JPEGs of too many
    scans, or of damaged data, to Pillow's path, which refuses them. A file larger than any image of
    ``max_pixels`` can be is not read (a 1.3 KB JPEG padded to 1.5 GB was read
    whole here, then by tf.io.read_file): Pillow's path refuses it, naming the limit.
    """
    if not path.lower().endswith(tuple(e.encode() for e in _TF_EXTENSIONS)):
        return False
    try:
        data = read_capped(os.fsdecode(path), max_file_bytes(max_pixels), regular_only=True)
        with Image.open(io.BytesIO(data), formats=allowed_formats()) as im:
            if im.format not in ("JPEG", "PNG") or im.mode not in ("RGB", "L") or "transparency" in im.info:
                return False
            if b"tiff:Orientation" in data:  # an XMP orientation, which Pillow applies (before or after IDAT)
                return False
            if im.format == "PNG":
                # IHDR bit depth (Pillow reports 16-bit RGB as "RGB"); an eXIf chunk, or a text chunk of EXIF or
                # XMP (ImageMagick's zTXt "Raw profile type exif", a compressed iTXt XMP), may rotate the image.
                return data[24] == 8 and not png_may_rotate(data)
            # A damaged JPEG: tf decodes it without a word; Pillow's path refuses it, naming the damage.
            return im.getexif().get(0x0112, 1) == 1 and jpeg_scans(data) <= MAX_JPEG_SCANS and not jpeg_damage(data)
    except Image.DecompressionBombError:  # a header declaring a huge image: Pillow's path names the limit
        return False
    except (OSError, ValueError, SyntaxError):  # what Pillow raises on a damaged or unknown header
        # Pillow decides, and names the reason: TensorFlow decodes some of these (libpng only warns on a bad
        # ancillary CRC), so a file the doctor and serve refuse was answered in a batch predict.
        return False


def pillow_decode(path: bytes | np.ndarray, max_pixels: np.int64) -> tuple[np.ndarray, bool]:
    # Eager numpy_function passes a 0-d array, tf.data passes bytes.
    name = os.fsdecode(path.item() if isinstance(path, np.ndarray) else path)
    try:
        image = load_image(name, max_pixels=int(max_pixels))
        return np.ascontiguousarray(image, dtype=np.uint8), True
    except Exception as e:  # noqa: BLE001 - any failure means "unusable file"
        log.debug("Pillow cannot decode %r: %s", name, e)
        return np.zeros((1, 1, 3), np.uint8), False


def resolve_flags(
    paths: list[bytes], tf_decodable: Sequence[bool | None] | None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> list[bool]:
    """Which of ``paths`` TensorFlow decodes: ``tf_decodable`` as given (the doctor's), else guessed per file."""
    if tf_decodable is None:
        return _guesses(paths, max_pixels)
    if len(tf_decodable) != len(paths):
        raise ConfigError(
            f"tf_decodable must have one entry per path ({len(paths)}). Received: len(tf_decodable)={len(tf_decodable)}"
        )
    unknown = [i for i, flag in enumerate(tf_decodable) if flag is None]
    guessed = dict(zip(unknown, _guesses([paths[i] for i in unknown], max_pixels), strict=True))
    return [guessed[i] if flag is None else bool(flag) for i, flag in enumerate(tf_decodable)]


def _guesses(paths: list[bytes], max_pixels: int) -> list[bool]:
    # Each guess reads a file and checks a JPEG's coded data (~0.6 ms for a flower photo), both mostly without the
    # GIL (simplejpeg releases it): in threads, as the doctor checks files, where there are enough to be worth it.
    if len(paths) < _THREADED_GUESSES:
        return [_guess_tf_decodable(p, max_pixels) for p in paths]
    with ThreadPoolExecutor(decode_threads(), thread_name_prefix="floranet-guess") as pool:
        return list(pool.map(functools.partial(_guess_tf_decodable, max_pixels=max_pixels), paths))


def encode_paths(paths: Sequence[str | bytes | os.PathLike[str]]) -> list[bytes]:
    if isinstance(paths, (str, bytes)):
        raise ConfigError(f"paths must be a sequence of paths, not one path. Received: paths={paths!r}")
    # fsencode keeps surrogate-escaped (non-UTF-8) names byte-exact.
    return [os.fsencode(p) for p in paths]


def decode_and_resize(
    path: str | os.PathLike[str],
    image_size: tuple[int, int],
    *,
    tf_decodable: bool | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decodes and resizes one image exactly as :func:`floranet.data.pipeline.make_dataset` does.

    Args:
        path: The image file.
        image_size: ``(height, width)``.
        tf_decodable: As in :func:`floranet.data.pipeline.make_dataset`; None or False: Pillow's path (the same
            pixels as TensorFlow's for a file it can take).
        max_pixels: Larger images are unusable.

    Returns:
        float32 array ``(height, width, 3)`` in 0..255, RGB.

    Raises:
        DatasetError: The file is missing or cannot be decoded.
    """
    size = check_image_size(image_size)
    max_px = check_positive_int("max_pixels", max_pixels)
    if tf_decodable:  # the fast path asked for by name: the dataset's own TensorFlow decoders, run eagerly
        return _tf_decode_and_resize(path, size, max_px)
    # Pillow and NumPy: the same pixels the dataset gives (its TensorFlow decoders are bit-identical to Pillow
    # on the files they take, and bilinear() to its resize), without TensorFlow.
    return load_resized(path, size, max_pixels=max_px)


def load_resized(
    path: str | os.PathLike[str], image_size: tuple[int, int], *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decodes (Pillow) and resizes (NumPy) one image file: float32 ``(h, w, 3)`` in 0..255, no TensorFlow.

    Raises:
        DatasetError: The file is missing or cannot be decoded.
    """
    return bilinear(load_image(path, max_pixels=max_pixels), check_image_size(image_size))


def _tf_decode_and_resize(path: str | os.PathLike[str], size: tuple[int, int], max_px: int) -> np.ndarray:
    import tensorflow as tf

    from floranet.data.pipeline import decoders

    encoded = encode_paths([path])
    # The dataset's own decoders, run eagerly: a one-file tf.data pipeline costs ~0.5 s to build.
    tf_decode, pillow = decoders(size, max_px)
    path_t = tf.constant(encoded[0])
    ok = tf.constant(False)
    with contextlib.suppress(tf.errors.OpError):  # as in the dataset: any tf failure gives Pillow its turn
        image, ok = tf_decode(path_t)
    if not bool(ok):
        image, ok = pillow(path_t)
    if not bool(ok):
        load_image(os.fsdecode(encoded[0]), max_pixels=max_px)  # raises DatasetError with the reason
        raise DatasetError(f"Cannot decode image file {quoted(os.fsdecode(encoded[0]))}")
    result: np.ndarray = image.numpy()
    return result


def decode_bytes(
    data: bytes, image_size: tuple[int, int], *, name: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, np.ndarray]:
    """Decodes encoded image bytes (an upload) and resizes them as :func:`floranet.data.pipeline.make_dataset` does.

    Returns:
        ``(upright uint8 RGB at full size, float32 (height, width, 3) in 0..255 at image_size)``.

    Raises:
        UnusableImageError: (a ``DatasetError``) with the reason and its ``kind``.
    """
    size = check_image_size(image_size)
    pixels = decode_image_bytes(data, name=name, max_pixels=max_pixels)
    # The pipeline's resize, computed in NumPy (bit-identical) from the uint8 pixels: no full-size float copy.
    return pixels, bilinear(pixels, size)
