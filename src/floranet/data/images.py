"""Robust decoding of one image file into upright 8-bit RGB pixels.

Every reader in floranet (the doctor, the slow tf.data path, the REST server)
goes through this module, so a file is judged the same way everywhere:

* the decompression-bomb check uses the header size only, before any pixel
  is decoded;
* truncated files raise (``ImageFile.LOAD_TRUNCATED_IMAGES`` is never set);
* CMYK, grayscale, 16-bit, palette and alpha images become RGB (alpha is
  composited over white), animations give their first frame, and the EXIF
  orientation is applied, so the pixels are what a person sees.

Failures raise :class:`UnusableImageError` (a ``DatasetError``) whose
``reason`` is the short sentence the doctor reports.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError, features

from floranet.errors import ConfigError, DatasetError

DEFAULT_MAX_PIXELS = 50_000_000

_ORIENTATION_TAG = 0x0112
_TF_FORMATS = frozenset({"JPEG", "PNG", "BMP"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_SIXTEEN_BIT_GRAY = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
# ISO-BMFF brands (the 4 bytes after "ftyp") of the HEIF family.
_HEIF_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"heim": "HEIC", b"heis": "HEIC", b"hevc": "HEIC",
                b"hevx": "HEIC", b"mif1": "HEIF", b"msf1": "HEIF", b"avif": "AVIF", b"avis": "AVIF"}
# Magic numbers, to tell "damaged image" from "not an image at all".
_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
               (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


class UnusableImageError(DatasetError):
    """A file cannot be used as an image.

    Attributes:
        name: The file name as given (relative path, ``"<bytes>"``, ...).
        reason: A short sentence for reports, e.g. ``"empty file (0 bytes)"``.
    """

    def __init__(self, name: str, reason: str, *, phrase: str | None = None) -> None:
        # ``phrase`` lets the reason read naturally after "is" in the message.
        super().__init__(f"Cannot decode image: {name!r} is {phrase or reason}")
        self.name = name
        self.reason = reason


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


def sniff_format(data: bytes) -> str | None:
    """Names the image format from its first bytes (no decoding), or None.

    Args:
        data: The start of a file (32 bytes are enough).

    Returns:
        e.g. ``"JPEG"``, ``"PNG"``, ``"WEBP"``, ``"HEIC"``, ``"AVIF"``; None when
        the bytes match no known image signature.
    """
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp":
        return _HEIF_BRANDS.get(data[8:12])
    return next((fmt for magic, fmt in _SIGNATURES if data.startswith(magic)), None)


def read_image_file(path: str | os.PathLike, *, name: str | None = None) -> bytes:
    """Reads a file's bytes, turning OS errors into :class:`UnusableImageError`.

    Args:
        path: The file.
        name: How errors name the file (default: ``path``).

    Returns:
        The file contents.

    Raises:
        UnusableImageError: Missing, a directory, or unreadable.
    """
    shown = name if name is not None else os.fsdecode(path)
    try:
        with open(path, "rb") as f:
            return f.read()
    except PermissionError:
        raise UnusableImageError(shown, "unreadable: permission denied") from None
    except FileNotFoundError:
        raise UnusableImageError(shown, "missing (no such file, or a broken symlink)") from None
    except IsADirectoryError:
        raise UnusableImageError(shown, "a directory, not an image file") from None
    except OSError as e:
        raise UnusableImageError(shown, f"unreadable: {e.strerror or e}") from None


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
    return inspect_image_bytes(read_image_file(path, name=name), name=name, max_pixels=max_pixels)


def inspect_image_bytes(data: bytes, *, name: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Same as :func:`inspect_image` for bytes already read (the doctor hashes them too)."""
    _check_max_pixels(max_pixels)
    with _opened(data, name, max_pixels) as (im, animated):
        orientation = _load_and_orientation(im, name)
        notes, tf_ok = _describe(im, data, orientation, animated=animated)
        w, h = im.size
        if orientation in (5, 6, 7, 8):  # these orientations swap width and height
            w, h = h, w
        return ImageInfo(format=im.format or "unknown", width=w, height=h, mode=im.mode, notes=tuple(notes),
                         tf_decodable=tf_ok)


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
    return decode_image_bytes(read_image_file(path, name=name), name=name, max_pixels=max_pixels)


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
        orientation = _load_and_orientation(im, name)
        try:
            upright = ImageOps.exif_transpose(im) if orientation in range(2, 9) else im
            pixels = np.array(_to_rgb(upright), dtype=np.uint8)
        except Exception as e:  # noqa: BLE001 - Pillow raises ValueError/OSError/... for modes it cannot convert
            raise UnusableImageError(name, f"in an unsupported colour mode {im.mode!r} ({_short(e)})") from None
    if pixels.ndim != 3 or pixels.shape[2] != 3:  # defensive: _to_rgb always ends in RGB
        raise UnusableImageError(name, f"not convertible to RGB (got shape {pixels.shape})")
    return pixels


def _check_max_pixels(max_pixels: object) -> None:
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0:
        raise ConfigError(f"max_pixels must be a positive int. Received: max_pixels={max_pixels!r}")


_PILLOW_GUARD_LOCK = threading.Lock()


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
        raise UnusableImageError(name, "empty file (0 bytes)", phrase="an empty file (0 bytes)")
    try:
        with _pillow_guard_lifted():
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            animated = w * h <= max_pixels and _is_animated(im)
    except UnidentifiedImageError:
        raise _unidentified(data, name) from None
    except Exception as e:  # noqa: BLE001 - a plugin may raise anything on a damaged header
        raise UnusableImageError(name, f"corrupt ({_short(e)})") from None
    with im:
        if w * h > max_pixels:
            size, limit = _pixel_counts(w * h, max_pixels)
            raise UnusableImageError(name, f"too large: {w}x{h} = {size} exceeds the limit of {limit} (max_pixels); "
                                     "raise max_pixels to accept it")
        # Pillow re-checks some sizes while decoding: lift its guard only when
        # the caller accepts images beyond it (rare; serialises those decodes).
        big = Image.MAX_IMAGE_PIXELS is not None and w * h > Image.MAX_IMAGE_PIXELS
        with _pillow_guard_lifted() if big else nullcontext():
            yield im, animated


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
    fmt = sniff_format(data[:32])
    # Pillow 11.2+ may read AVIF itself; then an unreadable AVIF is damaged, not unsupported.
    if fmt in ("HEIC", "HEIF") or (fmt == "AVIF" and not features.check("avif")):
        return UnusableImageError(
            name, f"unsupported format {fmt}: Pillow cannot decode it without a plugin (e.g. pillow-heif); "
            "convert it to JPEG", phrase=f"in {fmt} format, which Pillow cannot decode without a plugin "
            "(e.g. pillow-heif); convert it to JPEG")
    if fmt is not None:
        return UnusableImageError(name, f"corrupt: looks like {fmt} but its header cannot be read "
                                  "(truncated or damaged)")
    return UnusableImageError(name, "not an image (content is not a recognised image format)")


def _load_and_orientation(im: Image.Image, name: str) -> int:
    """Decodes all pixels (so truncation raises) and returns the EXIF orientation."""
    try:
        im.load()
    except Exception as e:  # noqa: BLE001 - decoders raise OSError, SyntaxError, ValueError, zlib.error, ...
        text = _short(e)
        if "truncated" in text:
            # "image file is truncated (90 bytes not processed)" without nested brackets
            text = text.replace(" (", ", ").rstrip(")")
            raise UnusableImageError(name, f"truncated ({text})") from None
        raise UnusableImageError(name, f"corrupt ({text})") from None
    try:
        return int(im.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001 - a damaged EXIF block: keep the pixels as stored
        return 1


def _short(e: BaseException) -> str:
    """Pillow's message without its repr-of-BytesIO noise."""
    text = str(e).split(" <_io.", 1)[0].strip() or type(e).__name__
    return text[:200]


def _describe(im: Image.Image, data: bytes, orientation: int, *, animated: bool) -> tuple[list[str], bool]:
    """Notes about the conversions :func:`decode_image_bytes` will make, and tf-decodability."""
    mode, fmt = im.mode, im.format or ""
    has_transparency = "transparency" in im.info
    notes = []
    if mode == "CMYK":
        notes.append("CMYK converted to RGB")
    elif mode in _SIXTEEN_BIT_GRAY:
        notes.append("16-bit grayscale scaled to 8-bit RGB")
    elif mode in ("I", "F"):
        notes.append(f"{'32-bit integer' if mode == 'I' else 'floating-point'} grayscale scaled to 8-bit RGB")
    elif mode in ("L", "1"):
        notes.append(f"{'grayscale' if mode == 'L' else 'black-and-white'} converted to RGB")
    elif mode not in ("RGB", "P", *_ALPHA_MODES):  # palette to RGB is lossless: no note
        notes.append(f"{mode} converted to RGB")
    if mode in _ALPHA_MODES or has_transparency:
        notes.append("transparency composited over white")
    deep = _png_bit_depth(data) == 16 or (fmt == "TIFF" and 16 in _tiff_bits(im))
    if deep and mode == "RGB":
        notes.append("16-bit per channel reduced to 8-bit")
    if orientation in range(2, 9):
        notes.append(f"EXIF orientation {orientation} applied")
    if animated and fmt != "MPO":  # MPO's extra pictures are previews/depth maps, not frames
        notes.append(f"multi-page {fmt}: first page used" if fmt == "TIFF" else f"animated {fmt}: first frame used")
    tf_ok = (fmt in _TF_FORMATS and mode in ("RGB", "L") and not has_transparency and not deep and not animated
             and orientation in (0, 1) and (fmt != "BMP" or _bmp_is_plain_24bit(data)))
    return notes, tf_ok


def _png_bit_depth(data: bytes) -> int | None:
    return data[24] if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 24 else None


def _tiff_bits(im: Image.Image) -> tuple[int, ...]:
    bits = getattr(im, "tag_v2", {}).get(258, ())  # BitsPerSample
    return tuple(bits) if isinstance(bits, (tuple, list)) else (bits,)


def _bmp_is_plain_24bit(data: bytes) -> bool:
    # tf's BMP decoder reads uncompressed 24-bit BITMAPINFOHEADER files like Pillow.
    if len(data) < 34 or int.from_bytes(data[14:18], "little") < 40:
        return False
    return int.from_bytes(data[28:30], "little") == 24 and int.from_bytes(data[30:34], "little") == 0


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB (alpha over white, 16-bit scaled, not clipped)."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode in _SIXTEEN_BIT_GRAY or mode in ("I", "F"):
        # Pillow's convert("L") clips these at 255: scale the full range instead.
        values = np.asarray(im).astype(np.float64)
        top = 65535.0 if mode in _SIXTEEN_BIT_GRAY or values.max(initial=0) > 255 else 255.0
        if mode == "F" and values.max(initial=0) <= 1.0:
            top = 1.0
        gray = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode == "1":
        im = im.convert("L")
    return im.convert("RGB")
