"""What an image file's bytes and Pillow modes mean: which decoders may run at all, the format by its
signature, the conversions to 8-bit RGB, and whether TensorFlow's fast decoder gives the same pixels."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, features

from floranet.errors import ConfigError
from floranet.utils.optional import require

# The only Pillow decoders floranet lets run. Everything else Pillow can read (EPS via Ghostscript, PSD, FITS,
# McIdas, TGA, JPEG 2000, ICO, PCX, SGI, ...) is "not a supported image": those readers are where Pillow's
# recent CVEs live, and EPS starts an external program.
ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")  # Pillow's JPEG reader also opens MPO
# Opt-in, where a plugin provides them: FLORANET_EXTRA_IMAGE_FORMATS=AVIF,HEIF
EXTRA_FORMATS_ENV = "FLORANET_EXTRA_IMAGE_FORMATS"
_OPTIONAL = ("AVIF", "HEIF")
_CHUNK_PIXELS = 1 << 20

ORIENTATION_TAG = 0x0112
_TF_FORMATS = frozenset({"JPEG", "PNG", "BMP"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_SIXTEEN_BIT_GRAY = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
# ISO-BMFF brands (the 4 bytes after "ftyp") of the HEIF family.
_HEIF_BRANDS = {
    b"heic": "HEIC",
    b"heix": "HEIC",
    b"heim": "HEIC",
    b"heis": "HEIC",
    b"hevc": "HEIC",
    b"hevx": "HEIC",
    b"mif1": "HEIF",
    b"msf1": "HEIF",
    b"avif": "AVIF",
    b"avis": "AVIF",
}
# Magic numbers, to tell "damaged image" from "not an image at all".
_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


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


def describe(im: Image.Image, data: bytes, orientation: int, *, animated: bool) -> tuple[list[str], bool]:
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
        notes.append("16-bit per channel reduced to 8-bit (the high byte)")
    if orientation in range(2, 9):
        notes.append(f"EXIF orientation {orientation} applied")
    if animated and fmt != "MPO":  # MPO's extra pictures are previews/depth maps, not frames
        notes.append(f"multi-page {fmt}: first page used" if fmt == "TIFF" else f"animated {fmt}: first frame used")
    tf_ok = (
        fmt in _TF_FORMATS
        and mode in ("RGB", "L")
        and not has_transparency
        and not deep
        and not animated
        and orientation in (0, 1)
        and (fmt != "BMP" or _bmp_is_plain_24bit(data))
    )
    return notes, tf_ok


# The warnings by which libjpeg says a JPEG's coded data is damaged (jerror.h: JWRN_EXTRANEOUS_DATA, _HIT_MARKER,
# _HUFF_BAD_CODE, _ARITH_BAD_CODE, _MUST_RESYNC, _JPEG_EOF). Its other warnings (an unknown JFIF revision, a bad
# ICC marker, odd SOS parameters) leave the pixels as they were meant.
_DAMAGE_WARNINGS = ("Corrupt JPEG data", "Premature end of JPEG file")

# The text chunks of a PNG (plain, compressed, international) and the keywords Pillow's Image.getexif reads an
# orientation from in any of them: EXIF ("exif", ImageMagick's hex "Raw profile type exif") and XMP's
# tiff:Orientation ("XML:com.adobe.xmp", whose iTXt Pillow also files as "xmp"). A byte search misses them when
# the chunk is compressed.
_PNG_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
_PNG_ORIENTATION_KEYWORDS = frozenset({b"exif", b"Raw profile type exif", b"XML:com.adobe.xmp", b"xmp"})


def png_may_rotate(data: bytes) -> bool:
    """Whether a PNG has a chunk Pillow may read an orientation from (``eXIf``, or a text chunk of one of
    :data:`_PNG_ORIENTATION_KEYWORDS`), before or after its pixels; only chunk headers and keywords are read.

    Returns:
        True also where the chunks cannot be walked to ``IEND`` (cut or damaged): Pillow's path decides then.
    """
    pos = 8  # past the signature
    while pos + 8 <= len(data):
        length, kind = int.from_bytes(data[pos : pos + 4], "big"), data[pos + 4 : pos + 8]
        if kind == b"eXIf":
            return True
        if kind in _PNG_TEXT_CHUNKS:  # the keyword: 1 to 79 bytes, then a NUL
            keyword = data[pos + 8 : pos + 8 + min(length, 80)].split(b"\0", 1)[0]
            if keyword in _PNG_ORIENTATION_KEYWORDS:
                return True
        if kind == b"IEND":
            return False
        pos += 12 + length  # length, type, data, CRC
    return True


def jpeg_damage(data: bytes) -> str:
    """Why a JPEG that Pillow decodes has damaged pixels ("" when libjpeg-turbo finds its coded data sound).

    Pillow and TensorFlow keep libjpeg's warnings quiet: a JPEG cut in the middle but ending in an end-of-image
    marker, or with bytes changed mid-file, decodes without an error to pixels that are partly grey or garbage.
    A strict libjpeg-turbo decode (simplejpeg) raises on them instead. It decodes to grey at 1/8 scale, which
    still reads every component's coded data in full (the warnings come from there) but skips most of the
    pixel work: about 0.7 ms for a 500x333 flower photo, a third of Pillow's decode of it.

    Args:
        data: The bytes of a file Pillow read as a JPEG (or MPO: its first image is checked).

    Returns:
        ``"corrupt JPEG data: <libjpeg's warning>"``, or ``""``.
    """
    simplejpeg = require("simplejpeg", "the check of JPEG data")
    try:
        simplejpeg.decode_jpeg(data, colorspace="GRAY", min_factor=8, strict=True)
    except ValueError as e:  # a warning, made an error by strict=True (or an error Pillow did not meet)
        text = str(e)
        if text.startswith(_DAMAGE_WARNINGS) and "ICC" not in text:
            detail = text.removeprefix("Corrupt JPEG data: ")
            detail = detail[:1].lower() + detail[1:]
            return f"corrupt JPEG data: {detail} (its pixels past the damage are grey or garbage)"
    return ""


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


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB (alpha over white; 16-bit gray rounded from the full range, 16-bit colour its
    high byte as Pillow reads it; never clipped)."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode in _SIXTEEN_BIT_GRAY or mode in ("I", "F"):
        # Pillow's convert("L") clips these at 255: scale the full range instead.
        values = np.asarray(im)
        peak = float(values.max(initial=0))
        top = 65535.0 if mode in _SIXTEEN_BIT_GRAY or peak > 255 else 255.0
        if mode == "F" and peak <= 1.0:
            top = 1.0
        top = max(top, peak)  # 32-bit values beyond 16 bits: scaled too, never clipped
        clear = im.info.get("transparency")  # a PNG's tRNS: the one gray value that is see-through
        gray = np.empty(values.shape, np.uint8)
        rows = max(1, _CHUNK_PIXELS // max(1, values.shape[1]))
        for r in range(0, values.shape[0], rows):  # float64 a slice at a time: memory stays ~1 byte a pixel
            part = values[r : r + rows]
            gray[r : r + rows] = np.clip(np.rint(part.astype(np.float64) * (255.0 / top)), 0, 255)
            if isinstance(clear, int):
                gray[r : r + rows][part == clear] = 255  # over white, as every other transparent image
        return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2))
    key = im.info.get("transparency")
    if mode == "RGB" and isinstance(key, tuple) and max(key) > 255:
        # A 16-bit PNG's tRNS colour, kept at 16 bits while Pillow keeps each channel's high byte: compare alike
        im = im.copy()
        im.info["transparency"] = tuple(int(v) >> 8 for v in key)
    if mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode == "1":
        im = im.convert("L")
    return im.convert("RGB")


def allowed_formats() -> tuple[str, ...]:
    """The Pillow formats decoding may use: :data:`ALLOWED_FORMATS` plus the opted-in optional ones.

    Raises:
        ConfigError: An unknown name in ``FLORANET_EXTRA_IMAGE_FORMATS``, or AVIF without Pillow's AVIF support.
        MissingDependencyError: HEIF asked for without ``pillow-heif``.
    """
    extra = [x.strip().upper() for x in os.environ.get(EXTRA_FORMATS_ENV, "").split(",") if x.strip()]
    for name in extra:
        if name not in _OPTIONAL:
            raise ConfigError(f"{EXTRA_FORMATS_ENV} may name {', '.join(_OPTIONAL)}. Received: {name!r}")
        if name == "AVIF" and not features.check("avif"):
            raise ConfigError(f"AVIF was asked for ({EXTRA_FORMATS_ENV}) but this Pillow has no AVIF support.")
        if name == "HEIF":
            require("pillow_heif", f"{EXTRA_FORMATS_ENV}=HEIF").register_heif_opener()
    return ALLOWED_FORMATS + tuple(extra)
