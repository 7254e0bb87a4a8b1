"""Robust decoding of one image file into upright 8-bit RGB pixels.

Every reader in floranet (the doctor, the slow tf.data path, the REST server)
goes through this module, so a file is judged the same way everywhere:

* the decompression-bomb check uses the header size only, before any pixel
  is decoded;
* truncated files raise (``ImageFile.LOAD_TRUNCATED_IMAGES`` is never set), and so does a JPEG whose coded
  data is damaged (cut but ended by an end-of-image marker, bytes changed), which Pillow and TensorFlow decode
  without a word to grey or garbage pixels (:func:`floranet.data.formats.jpeg_damage`);
* CMYK, grayscale, 16-bit, palette and alpha images become RGB (alpha is
  composited over white), animations give their first frame, and the EXIF
  orientation is applied, so the pixels are what a person sees.

Failures raise :class:`UnusableImageError` (a ``DatasetError``) whose
``reason`` is the short sentence the doctor reports.
"""

from __future__ import annotations

import errno
import io
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from floranet.config import DEFAULT_MAX_PIXELS, check_positive_int
from floranet.data import formats
from floranet.errors import DatasetError
from floranet.utils.files import read_capped
from floranet.utils.system import usable_cpus
from floranet.utils.text import quoted


class UnusableImageError(DatasetError):
    """A file cannot be used as an image.

    Attributes:
        name: The file name as given (relative path, ``"<bytes>"``, ...).
        reason: A short sentence for reports, e.g. ``"empty file (0 bytes)"``.
        kind: What went wrong, one of :data:`KINDS` (the server maps it to an HTTP status).
    """

    KINDS = (
        "unreadable",
        "missing",
        "directory",
        "empty",
        "too_large",
        "not_image",
        "unsupported_format",
        "corrupt",
        "truncated",
        "colour_mode",
        "too_complex",
    )

    def __init__(self, name: str, reason: str, *, kind: str, phrase: str | None = None, hint: str = "") -> None:
        # ``phrase`` lets the reason read naturally after "is" in the message; ``hint`` is what the local user
        # can do about it (a server's client cannot raise its limits: it answers without the hint).
        super().__init__(f"Cannot decode image: {quoted(name)} is {phrase or reason}" + (f"; {hint}" if hint else ""))
        self.name = name
        self.reason = reason
        self.kind = kind
        self.phrase = phrase or reason
        self.hint = hint

    @property
    def detail(self) -> str:
        """The reason with the local user's hint, for reports (the doctor's rows)."""
        return f"{self.reason}; {self.hint}" if self.hint else self.reason


# A too-large image's hint where the limit is a trained run's (predict, explain, evaluate): those commands have no
# --max-pixels, they decode within the max_pixels the run's config.yaml holds.
RUN_LIMIT_HINT = "raise max_pixels in the run's config.yaml to accept it"


def with_run_limit(error: DatasetError) -> DatasetError:
    """``error`` as a command that decodes within a run's limit says it: a too-large image's hint names the run's
    ``config.yaml`` instead of a ``max_pixels`` argument the command does not have; any other error as it is."""
    if not isinstance(error, UnusableImageError) or error.kind != "too_large":
        return error
    return UnusableImageError(error.name, error.reason, kind=error.kind, phrase=error.phrase, hint=RUN_LIMIT_HINT)


@dataclass(frozen=True)
class ImageInfo:
    """What :func:`inspect_image` learned about a usable image.

    Attributes:
        format: Pillow format name, e.g. ``"JPEG"``, ``"PNG"``, ``"WEBP"``.
        width: Width after the EXIF orientation is applied.
        height: Height after the EXIF orientation is applied.
        mode: Original Pillow mode, e.g. ``"RGB"``, ``"CMYK"``, ``"I;16"``.
        notes: What decoding changed, e.g. ``("CMYK converted to RGB",)``.
        tf_decodable: True when ``tf.io.decode_image`` on the raw bytes gives
            the same upright RGB pixels as :func:`load_image`.
    """

    format: str
    width: int
    height: int
    mode: str
    notes: tuple[str, ...]
    tf_decodable: bool


def max_file_bytes(max_pixels: int) -> int:
    """The largest file an image of ``max_pixels`` can need (uncompressed 16-bit RGBA, 8 bytes a pixel, plus
    16 MiB of metadata); anything larger is refused before a byte is read."""
    return max_pixels * 8 + (16 << 20)


def read_image_file(path: str | os.PathLike, *, name: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """Reads a file's bytes, refusing one too large to be an image of ``max_pixels`` before reading it.

    Args:
        path: The file.
        name: How errors name the file (default: ``path``).
        max_pixels: The image size limit the file's size limit follows from (:func:`max_file_bytes`).

    Returns:
        The file contents.

    Raises:
        UnusableImageError: Missing, a directory, unreadable, or too large.
    """
    shown = name if name is not None else os.fsdecode(path)
    limit = max_file_bytes(max_pixels)
    try:
        return read_capped(path, limit, regular_only=True)
    except PermissionError:
        raise UnusableImageError(shown, "unreadable: permission denied", kind="unreadable") from None
    except FileNotFoundError:
        raise UnusableImageError(shown, "missing (no such file, or a broken symlink)", kind="missing") from None
    except IsADirectoryError:
        raise UnusableImageError(shown, "a directory, not an image file", kind="directory") from None
    except OSError as e:
        if e.errno == errno.EFBIG:
            raise UnusableImageError(
                shown, f"too large: {e.strerror} (max_pixels {max_pixels:,})", kind="too_large"
            ) from None
        raise UnusableImageError(shown, f"unreadable: {e.strerror or e}", kind="unreadable") from None


def inspect_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Checks that a file is a usable image and describes it.

    The size is checked against ``max_pixels`` from the header before any
    pixel is decoded; then the image is fully decoded to catch truncation.

    Args:
        path: The image file.
        max_pixels: Largest accepted ``width * height``.

    Returns:
        The :class:`ImageInfo`.

    Raises:
        UnusableImageError: (a ``DatasetError``) with the reason.
        ConfigError: ``max_pixels`` is not a positive int.
    """
    _check_max_pixels(max_pixels)
    name = os.fsdecode(path)
    return inspect_image_bytes(
        read_image_file(path, name=name, max_pixels=max_pixels), name=name, max_pixels=max_pixels
    )


def inspect_image_bytes(data: bytes, *, name: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Same as :func:`inspect_image` for bytes already read (the doctor hashes them too)."""
    _check_max_pixels(max_pixels)
    with _opened(data, name, max_pixels) as (im, animated):
        orientation = _load_and_orientation(im, data, name)
        notes, tf_ok = formats.describe(im, data, orientation, animated=animated)
        w, h = im.size
        if orientation in (5, 6, 7, 8):  # these orientations swap width and height
            w, h = h, w
        return ImageInfo(
            format=im.format or "unknown", width=w, height=h, mode=im.mode, notes=tuple(notes), tf_decodable=tf_ok
        )


def load_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decodes an image file into upright RGB pixels.

    Args:
        path: The image file.
        max_pixels: Largest accepted ``width * height``.

    Returns:
        A new ``(height, width, 3)`` uint8 array.

    Raises:
        UnusableImageError: (a ``DatasetError``) with the reason.
        ConfigError: ``max_pixels`` is not a positive int.
    """
    _check_max_pixels(max_pixels)
    name = os.fsdecode(path)
    return decode_image_bytes(read_image_file(path, name=name, max_pixels=max_pixels), name=name, max_pixels=max_pixels)


def decode_image_bytes(data: bytes, *, name: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decodes encoded image bytes (e.g. an upload) like :func:`load_image`.

    Args:
        data: The encoded image.
        name: How error messages name the image.
        max_pixels: Largest accepted ``width * height``.

    Returns:
        A new ``(height, width, 3)`` uint8 array.

    Raises:
        UnusableImageError: (a ``DatasetError``) with the reason.
        ConfigError: ``max_pixels`` is not a positive int.
    """
    _check_max_pixels(max_pixels)
    with _opened(data, name, max_pixels) as (im, _):
        orientation = _load_and_orientation(im, data, name)
        try:
            upright = ImageOps.exif_transpose(im) if orientation in range(2, 9) else im
            pixels = np.array(formats.to_rgb(upright), dtype=np.uint8)
        except Exception as e:  # noqa: BLE001 - Pillow raises ValueError/OSError/... for modes it cannot convert
            raise UnusableImageError(
                name, f"in an unsupported colour mode {im.mode!r} ({_short(e)})", kind="colour_mode"
            ) from None
    if pixels.ndim != 3 or pixels.shape[2] != 3:  # defensive: _to_rgb always ends in RGB
        raise UnusableImageError(name, f"not convertible to RGB (got shape {pixels.shape})", kind="colour_mode")
    return pixels


def decode_threads() -> int:
    """Threads that read and check files at once by default (the doctor, the decoder guess): the CPUs this process
    may use, at most 8."""
    return min(8, usable_cpus())


def _check_max_pixels(max_pixels: object) -> None:
    check_positive_int("max_pixels", max_pixels)


_PILLOW_GUARD_LOCK = threading.Lock()
# Baseline JPEGs have 1 scan, progressive ones from libjpeg, mozjpeg and cameras about 6 to 12.
MAX_JPEG_SCANS = 100


@contextmanager
def _pillow_guard_lifted() -> Iterator[None]:
    """Turns off Pillow's own decompression-bomb guard for one header read.

    Pillow checks ``Image.MAX_IMAGE_PIXELS`` inside ``Image.open`` and raises
    before we can learn the size (or warns on images we accept); we enforce
    ``max_pixels`` ourselves right after. The lock keeps our threads from
    restoring each other's value; the window is a header parse (and, for
    GIF, a skip over the first frame to see whether a second one follows).
    """
    with _PILLOW_GUARD_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


@contextmanager
def _opened(data: bytes, name: str, max_pixels: int) -> Iterator[tuple[Image.Image, bool]]:
    """Opens (header only) and size-checks; yields ``(image, is_animated)``."""
    if not data:
        raise UnusableImageError(name, "empty file (0 bytes)", kind="empty", phrase="an empty file (0 bytes)")
    allowed = formats.allowed_formats()  # a bad setting is its own error, not every file's "corrupt"
    try:
        with _pillow_guard_lifted():
            im = Image.open(io.BytesIO(data), formats=allowed)
            w, h = im.size
            animated = w * h <= max_pixels and _is_animated(im)
    except UnidentifiedImageError:
        raise _unidentified(data, name) from None
    except Exception as e:  # noqa: BLE001 - a plugin may raise anything on a damaged header
        raise UnusableImageError(name, f"corrupt ({_short(e)})", kind="corrupt") from None
    with im:
        if w * h > max_pixels:
            size, limit = _pixel_counts(w * h, max_pixels)
            raise UnusableImageError(
                name,
                f"too large: {w}x{h} = {size} exceeds the limit of {limit} (max_pixels)",
                kind="too_large",
                hint="raise max_pixels to accept it",
            )
        _check_scans(data, name, im.format)
        # Pillow re-checks some sizes while decoding: lift its guard only when
        # the caller accepts images beyond it (rare; serialises those decodes).
        big = Image.MAX_IMAGE_PIXELS is not None and w * h > Image.MAX_IMAGE_PIXELS
        with _pillow_guard_lifted() if big else nullcontext():
            yield im, animated


def _check_scans(data: bytes, name: str, fmt: str | None) -> None:
    """Refuses a JPEG of more than :data:`MAX_JPEG_SCANS` scans before decoding it.

    A progressive JPEG's decoder makes a pass over the whole image per scan, and nothing in the format bounds
    how many there are: 31 bytes a scan make a 0.5 MB upload of 16 MP that decodes for 20 s, holding a decode
    thread. Counting start-of-scan markers is exact enough: inside entropy-coded data a 0xFF byte is always
    followed by 0x00 or a restart marker, so ``FF DA`` appears only as a marker (an embedded EXIF thumbnail
    adds its own one).
    """
    if fmt not in ("JPEG", "MPO"):
        return
    scans = jpeg_scans(data)
    if scans > MAX_JPEG_SCANS:
        raise UnusableImageError(
            name,
            f"too complex to decode: a JPEG of {scans:,} scans, more than the {MAX_JPEG_SCANS} accepted "
            "(each scan is a decoding pass over the whole image; encoders write 1 to about 12)",
            kind="too_complex",
            phrase=f"a JPEG of {scans:,} scans, more than the {MAX_JPEG_SCANS} accepted (each is a decoding pass "
            "over the whole image; encoders write 1 to about 12): re-save it as an ordinary JPEG",
        )


def jpeg_scans(data: bytes) -> int:
    """How many scans a JPEG's bytes hold (start-of-scan markers; see :func:`_check_scans`)."""
    return data.count(b"\xff\xda")


def _pixel_counts(pixels: int, limit: int) -> tuple[str, str]:
    """``("400.0 MP", "50.0 MP")``; exact counts when megapixels would hide the difference."""
    size, cap = f"{pixels / 1e6:.1f} MP", f"{limit / 1e6:.1f} MP"
    if size == cap or limit < 100_000:
        size, cap = f"{pixels:,} pixels", f"{limit:,} pixels"
    return size, cap


def _is_animated(im: Image.Image) -> bool:
    try:
        return bool(getattr(im, "is_animated", False))
    except Exception:  # noqa: BLE001 - a damaged later frame; the first one may be fine
        return False


def _unidentified(data: bytes, name: str) -> UnusableImageError:
    fmt = formats.sniff_format(data[:32])
    allowed = formats.allowed_formats()
    if fmt in ("HEIC", "HEIF", "AVIF") and ("HEIF" if fmt == "HEIC" else fmt) not in allowed:
        family = "HEIF" if fmt == "HEIC" else fmt
        hint = "pillow-heif" if family == "HEIF" else "Pillow's AVIF support"
        return UnusableImageError(
            name,
            f"unsupported format {fmt}: convert it to JPEG, or enable it with "
            f"{formats.EXTRA_FORMATS_ENV}={family} (needs {hint})",
            phrase=f"in {fmt} format, which is off unless {formats.EXTRA_FORMATS_ENV}={family} enables it "
            f"(needs {hint}); convert it to JPEG",
            kind="unsupported_format",
        )
    if fmt is not None:
        return UnusableImageError(
            name, f"corrupt: looks like {fmt} but its header cannot be read (truncated or damaged)", kind="corrupt"
        )
    return UnusableImageError(
        name, f"not a supported image (content is not one of {', '.join(allowed)}, MPO)", kind="not_image"
    )


def _load_and_orientation(im: Image.Image, data: bytes, name: str) -> int:
    """Decodes all pixels (so truncation, and a JPEG's damaged data, raise) and returns the EXIF orientation."""
    try:
        im.load()
    except Exception as e:  # noqa: BLE001 - decoders raise OSError, SyntaxError, ValueError, zlib.error, ...
        text = _short(e)
        if "truncated" in text:
            # "image file is truncated (90 bytes not processed)" without nested brackets
            text = text.replace(" (", ", ").rstrip(")")
            raise UnusableImageError(name, f"truncated ({text})", kind="truncated") from None
        raise UnusableImageError(name, f"corrupt ({text})", kind="corrupt") from None
    damage = formats.jpeg_damage(data) if im.format in ("JPEG", "MPO") else ""
    if damage:  # Pillow decoded it, to pixels partly grey or garbage: refused as the doctor refuses it
        raise UnusableImageError(name, damage, kind="corrupt")
    try:
        return int(im.getexif().get(formats.ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001 - a damaged EXIF block: keep the pixels as stored
        return 1


def _short(e: BaseException) -> str:
    """Pillow's message without its repr-of-BytesIO noise."""
    text = str(e).split(" <_io.", 1)[0].strip() or type(e).__name__
    return text[:200]
