"""A generated image folder holding every bad or odd case the doctor must handle.

``make_corpus(root)`` writes it (in well under a second) and returns the
expected doctor status of every entry it made, keyed by the path relative to
``root`` exactly as the doctor reports it (``os.fsdecode`` of the name, so the
non-UTF-8 name is a str with a surrogate escape).
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("daisy", "roses", "tulips")
EMPTY_CLASS = "sunflowers"
NON_UTF8_NAME = b"caf\xe9.jpg"
NON_UTF8_PATH = "daisy/" + os.fsdecode(NON_UTF8_NAME)
LOCKED = "roses/locked.jpg"  # chmod 000; tests simulate the denial when running as root
EXIF_CORNER = (255, 0, 0)  # stored top-left corner colour of daisy/exif6.jpg
SIZE = (40, 30)  # width, height of the generated images

# Expected tf_decodable of some usable files (the rest are checked against tf itself).
TF_DECODABLE = {
    "daisy/d0.jpg": True,
    "daisy/gray.jpg": True,
    "daisy/d2.png": True,
    "tulips/plain.bmp": True,
    "daisy/exif6.jpg": False,
    "daisy/cmyk.jpg": False,
    "roses/rgba.png": False,
    "roses/palette.png": False,
    "roses/gray16.png": False,
    "roses/rgb16.png": False,
    "roses/photo.webp": False,
    "roses/anim.gif": False,
    "roses/photo.tif": False,
}


def _rgb(seed: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_png(width: int, height: int, bit_depth: int, colour_type: int, rows: bytes) -> bytes:
    """A PNG written by hand (for headers Pillow would not write, e.g. a 20000x20000 bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(rows))
        + _png_chunk(b"IEND", b"")
    )


def exif6_jpeg() -> bytes:
    """40x30 stored, EXIF orientation 6 (display rotated 90° clockwise); top-left 8x8 block red."""
    pixels = np.full((SIZE[1], SIZE[0], 3), (20, 40, 200), np.uint8)
    pixels[:8, :8] = EXIF_CORNER
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(Image.fromarray(pixels), "JPEG", quality=95, exif=exif)


def gray16_png() -> bytes:
    """16-bit grayscale (mode I;16): left half 65535, right half 32896 (= 128 * 257)."""
    values = np.full((SIZE[1], SIZE[0]), 32896, np.uint16)
    values[:, : SIZE[0] // 2] = 65535
    return _encode(Image.fromarray(values), "PNG")


def animated_gif() -> bytes:
    frames = [Image.new("RGB", SIZE, c).convert("P") for c in ((255, 0, 0), (0, 0, 255))]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def fake_heic() -> bytes:
    return struct.pack(">I", 24) + b"ftypheic" + b"\x00\x00\x00\x00" + b"mif1heic" + b"\x00" * 40


def deny_locked_reads(monkeypatch) -> None:
    """Makes reading ``LOCKED`` fail with PermissionError even for root (chmod 000 does not stop root).

    As a normal user the real chmod already does it, so nothing is patched and
    the real OS error path is tested.
    """
    if os.geteuid() != 0:
        return
    from floranet.utils import files

    def guarded_open(file, *args, **kwargs):
        if os.fsdecode(file).endswith(LOCKED):
            raise PermissionError(13, "Permission denied", os.fsdecode(file))
        return open(file, *args, **kwargs)

    monkeypatch.setattr(files, "open", guarded_open, raising=False)  # where image files are read


def make_corpus(root: Path) -> dict[str, str]:
    """Writes the corpus under ``root`` and returns ``{relative path: expected status}``."""
    expected: dict[str, str] = {}

    def put(rel: str, data: bytes, status: str) -> Path:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expected[rel] = status
        return path

    for c, name in enumerate(CLASSES):
        for i in range(3):
            fmt, ext = ("PNG", "png") if i == 2 else ("JPEG", "jpg")
            put(f"{name}/{name[0]}{i}.{ext}", _encode(Image.fromarray(_rgb(10 * c + i)), fmt), "ok")
    jpeg = _encode(Image.fromarray(_rgb(100)), "JPEG", quality=90)
    png = _encode(Image.fromarray(_rgb(101)), "PNG")

    put("README.txt", b"flowers\n", "ignored")
    put(".DS_Store", b"\x00\x00\x00\x01Bud1", "ignored")
    put(".ipynb_checkpoints/d0-checkpoint.jpg", jpeg, "ignored")
    del expected[".ipynb_checkpoints/d0-checkpoint.jpg"]
    expected[".ipynb_checkpoints"] = "ignored"  # the folder is reported once, never entered

    # daisy: odd but usable files, duplicates, names, a loop
    put("daisy/gray.jpg", _encode(Image.fromarray(_rgb(102)).convert("L"), "JPEG"), "note")
    put("daisy/cmyk.jpg", _encode(Image.fromarray(_rgb(103)).convert("CMYK"), "JPEG"), "note")
    put("daisy/exif6.jpg", exif6_jpeg(), "note")
    put("daisy/x y.jpg", _encode(Image.fromarray(_rgb(104)), "JPEG"), "ok")
    (root / "daisy" / os.fsdecode(NON_UTF8_NAME)).write_bytes(_encode(Image.fromarray(_rgb(105)), "JPEG"))
    expected[NON_UTF8_PATH] = "ok"
    put("daisy/dup_a.jpg", jpeg, "ok")
    put("daisy/dup_b.jpg", jpeg, "note")
    put("daisy/conflict.png", png, "bad")
    put("daisy/nested/deep.png", _encode(Image.fromarray(_rgb(106)), "PNG"), "ok")
    put("daisy/notes.txt", b"picked in May\n", "ignored")
    put("daisy/photo.dat", _encode(Image.fromarray(_rgb(107)), "JPEG"), "ignored")
    put("daisy/.DS_Store", b"\x00", "ignored")
    os.symlink(".", root / "daisy" / "loop")
    expected["daisy/loop"] = "ignored"

    # roses: conversions, and everything that cannot be used
    rgba = np.dstack([_rgb(108), np.tile(np.linspace(0, 255, SIZE[0], dtype=np.uint8), (SIZE[1], 1))])
    put("roses/rgba.png", _encode(Image.fromarray(rgba, "RGBA"), "PNG"), "note")
    palette = Image.fromarray(_rgb(109)).quantize(8)
    put("roses/palette.png", _encode(palette, "PNG", transparency=0), "note")
    put("roses/gray16.png", gray16_png(), "note")
    rgb16 = np.random.default_rng(110).integers(0, 65536, (SIZE[1], SIZE[0], 3)).astype(">u2")
    put("roses/rgb16.png", raw_png(*SIZE, 16, 2, b"".join(b"\0" + row.tobytes() for row in rgb16)), "note")
    put("roses/anim.gif", animated_gif(), "note")
    put("roses/photo.webp", _encode(Image.fromarray(_rgb(111)), "WEBP", lossless=True), "ok")
    put("roses/photo.tif", _encode(Image.fromarray(_rgb(112)), "TIFF"), "ok")
    put("roses/conflict.png", png, "bad")
    put("roses/empty.jpg", b"", "bad")
    full = _encode(Image.fromarray(_rgb(113)), "JPEG")
    put("roses/truncated.jpg", full[: len(full) // 2], "bad")
    full = _encode(Image.fromarray(_rgb(114)), "PNG")
    put("roses/truncated.png", full[: len(full) // 2], "bad")
    put("roses/text.jpg", b"this is not a picture, it is a text file\n" * 3, "bad")
    put("roses/fake.heic", fake_heic(), "bad")
    put("roses/bomb.png", raw_png(20000, 20000, 1, 0, b"\0" * 64), "bad")
    put(LOCKED, _encode(Image.fromarray(_rgb(115)), "JPEG"), "bad").chmod(0)
    os.symlink("missing.jpg", root / "roses" / "broken.jpg")
    expected["roses/broken.jpg"] = "bad"

    put(".originals/t9.jpg", _encode(Image.fromarray(_rgb(118)), "JPEG"), "ignored")
    del expected[".originals/t9.jpg"]
    expected[".originals"] = "ignored"
    os.symlink("../.originals/t9.jpg", root / "tulips" / "linked.jpg")  # symlinked files are followed
    expected["tulips/linked.jpg"] = "ok"
    put("tulips/UPPER.JPG", _encode(Image.fromarray(_rgb(116)), "JPEG"), "ok")
    put("tulips/plain.bmp", _encode(Image.fromarray(_rgb(117)), "BMP"), "ok")
    (root / EMPTY_CLASS).mkdir()
    return expected


def snapshot(root: Path) -> dict[bytes, tuple]:
    """Every entry under root (bytes names, links not followed): type, mode, mtime and content hash."""
    state = {}
    for folder, dirs, files in os.walk(os.fsencode(root)):
        for name in dirs + files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            if os.path.islink(path):
                state[path] = ("link", os.readlink(path))
                continue
            digest = None
            if not os.path.isdir(path) and os.access(path, os.R_OK):
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            state[path] = (st.st_mode, st.st_mtime_ns, st.st_size, digest)
    return state
