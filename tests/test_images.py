"""Robust single-image decoding, on a generated corpus of odd and broken files."""

from __future__ import annotations

import io
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from corpus import EXIF_CORNER, LOCKED, NON_UTF8_PATH, TF_DECODABLE, deny_locked_reads, make_corpus, raw_png
from floranet.data import formats, images
from floranet.errors import ConfigError, DatasetError

# What each unusable file says (label conflicts are valid images: the doctor's business).
BAD_REASONS = {
    "roses/empty.jpg": "empty file (0 bytes)",
    "roses/truncated.jpg": "truncated (image file is truncated",
    "roses/truncated.png": "truncated (image file is truncated",
    "roses/text.jpg": "not a supported image (content is not one of JPEG, PNG, GIF, BMP, WEBP, TIFF, MPO)",
    "roses/fake.heic": "unsupported format HEIC",
    "roses/bomb.png": "too large: 20000x20000 = 400.0 MP exceeds the limit of 50.0 MP (max_pixels)",
    LOCKED: "unreadable: permission denied",
    "roses/broken.jpg": "missing (no such file, or a broken symlink)",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("corpus")
    return root, make_corpus(root)


def usable(expected: dict[str, str]) -> list[str]:
    return sorted(p for p, s in expected.items() if s in ("ok", "note"))


def test_every_usable_file_loads_as_upright_rgb(corpus) -> None:
    root, expected = corpus
    assert len(usable(expected)) >= 25
    for rel in usable(expected):
        pixels = images.load_image(root / rel)
        info = images.inspect_image(root / rel)
        assert pixels.dtype == np.uint8 and pixels.shape == (info.height, info.width, 3), rel
        assert pixels.flags.writeable and pixels.flags.c_contiguous
        assert bool(info.notes) == (expected[rel] == "note" and rel != "daisy/dup_b.jpg"), (rel, info.notes)


@pytest.mark.parametrize("rel", sorted(BAD_REASONS))
def test_every_unusable_file_raises_a_dataset_error_naming_it(corpus, rel, monkeypatch) -> None:
    root, expected = corpus
    deny_locked_reads(monkeypatch)
    assert expected[rel] == "bad"
    for fn in (images.load_image, images.inspect_image):
        with pytest.raises(DatasetError) as info:
            fn(root / rel)
        message = str(info.value)
        assert message.startswith("Cannot decode image: ") and rel in message, message
        assert info.value.reason.startswith(BAD_REASONS[rel]), info.value.reason
        # The local user's hint (a server answers without it: its client cannot raise the limit).
        assert message.endswith("; raise max_pixels to accept it") == (rel == "roses/bomb.png"), message


def test_bad_reasons_cover_the_corpus(corpus) -> None:
    _, expected = corpus
    bad = {p for p, s in expected.items() if s == "bad" and "conflict" not in p}
    assert bad == set(BAD_REASONS)


def test_formats_modes_and_notes(corpus) -> None:
    root, _ = corpus
    cases = {
        "daisy/cmyk.jpg": ("JPEG", "CMYK", "CMYK converted to RGB"),
        "daisy/gray.jpg": ("JPEG", "L", "grayscale converted to RGB"),
        "roses/gray16.png": ("PNG", "I;16", "16-bit grayscale scaled to 8-bit RGB"),
        "roses/rgb16.png": ("PNG", "RGB", "16-bit per channel reduced to 8-bit (the high byte)"),
        "roses/rgba.png": ("PNG", "RGBA", "transparency composited over white"),
        "roses/palette.png": ("PNG", "P", "transparency composited over white"),
        "roses/anim.gif": ("GIF", "P", "animated GIF: first frame used"),
        "daisy/exif6.jpg": ("JPEG", "RGB", "EXIF orientation 6 applied"),
        "roses/photo.webp": ("WEBP", "RGB", None),
        "roses/photo.tif": ("TIFF", "RGB", None),
    }
    for rel, (fmt, mode, note) in cases.items():
        info = images.inspect_image(root / rel)
        assert (info.format, info.mode) == (fmt, mode), rel
        assert (note in info.notes) if note else info.notes == (), (rel, info.notes)
    assert {rel: images.inspect_image(root / rel).tf_decodable for rel in TF_DECODABLE} == TF_DECODABLE


def test_exif_orientation_is_applied(corpus) -> None:
    root, _ = corpus
    pixels = images.load_image(root / "daisy/exif6.jpg")
    info = images.inspect_image(root / "daisy/exif6.jpg")
    # Stored 40x30 with a red top-left block; orientation 6 = turn 90° clockwise.
    assert pixels.shape == (40, 30, 3) and (info.width, info.height) == (30, 40)
    assert np.abs(pixels[:6, -6:].astype(int) - EXIF_CORNER).max() < 12  # red moved to the top-right
    assert np.abs(pixels[:6, :6].astype(int) - EXIF_CORNER).max() > 100
    assert np.abs(pixels[-6:, -6:].astype(int) - EXIF_CORNER).max() > 100


def test_sixteen_bit_is_scaled_not_clipped(corpus) -> None:
    pixels = images.load_image(corpus[0] / "roses/gray16.png")
    assert pixels[0, 0].tolist() == [255, 255, 255]
    assert pixels[0, -1].tolist() == [128, 128, 128]  # 32896 / 257; clipping would give 255


def test_transparency_is_composited_over_white(corpus) -> None:
    root, _ = corpus
    rgba = np.asarray(Image.open(root / "roses/rgba.png"))
    pixels = images.load_image(root / "roses/rgba.png")
    assert (pixels[:, 0] == 255).all()  # alpha 0 column
    np.testing.assert_array_equal(pixels[:, -1], rgba[:, -1, :3])  # alpha 255 column
    with Image.open(root / "roses/palette.png") as im:
        see_through = np.asarray(im) == im.info["transparency"]
    assert see_through.any() and (images.load_image(root / "roses/palette.png")[see_through] == 255).all()


def test_animated_gif_gives_its_first_frame(corpus) -> None:
    pixels = images.load_image(corpus[0] / "roses/anim.gif")
    assert pixels.shape == (30, 40, 3) and (pixels == [255, 0, 0]).all()


def test_odd_names_load(corpus) -> None:
    root, _ = corpus
    for rel in (NON_UTF8_PATH, "daisy/x y.jpg", "tulips/UPPER.JPG", "tulips/linked.jpg"):
        assert images.load_image(root / rel).shape == (30, 40, 3)


def test_bomb_is_refused_from_the_header_without_decoding(corpus, monkeypatch) -> None:
    def no_decoding(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    limit = Image.MAX_IMAGE_PIXELS
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning either
        with pytest.raises(DatasetError, match=r"20000x20000 = 400\.0 MP exceeds the limit of 50\.0 MP"):
            images.inspect_image(corpus[0] / "roses/bomb.png")
        with pytest.raises(DatasetError, match=r"40x30 = 1,200 pixels exceeds the limit of 1,000 pixels"):
            images.load_image(corpus[0] / "daisy/d0.jpg", max_pixels=1000)
    assert time.perf_counter() - start < 1.0
    assert limit == Image.MAX_IMAGE_PIXELS  # Pillow's own guard is back for everyone else


def test_images_beyond_pillows_limit_follow_max_pixels(tmp_path) -> None:
    # 12000x9000 = 108 MP: over Pillow's warning limit, under ours; its data is cut short.
    path = tmp_path / "big.png"
    path.write_bytes(raw_png(12000, 9000, 1, 0, b"\0" * 64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DatasetError) as info:
            images.load_image(path, max_pixels=200_000_000)
    assert "too large" not in str(info.value) and "DecompressionBomb" not in str(info.value)


def test_max_pixels_must_be_a_positive_int(corpus) -> None:
    for bad in (-3, 0, 1.5, True, "10"):
        with pytest.raises(ConfigError, match=r"max_pixels must be a positive int\. Received: max_pixels="):
            images.load_image(corpus[0] / "daisy/d0.jpg", max_pixels=bad)
    with pytest.raises(ConfigError, match=r"Received: max_pixels=-3$"):
        images.decode_image_bytes(b"x", max_pixels=-3)


def test_decode_image_bytes(corpus) -> None:
    root, _ = corpus
    for rel in ("daisy/d0.jpg", "daisy/exif6.jpg", "roses/rgba.png", "roses/photo.webp", "roses/gray16.png"):
        data = (root / rel).read_bytes()
        np.testing.assert_array_equal(images.decode_image_bytes(data), images.load_image(root / rel))
    cases = {
        "roses/text.jpg": "not a supported image",
        "roses/empty.jpg": "an empty file (0 bytes)",
        "roses/truncated.png": "truncated",
        "roses/fake.heic": "convert it to JPEG",
    }
    for rel, words in cases.items():
        with pytest.raises(DatasetError, match=r"^Cannot decode image: 'upload\.jpg' is ") as info:
            images.decode_image_bytes((root / rel).read_bytes(), name="upload.jpg")
        assert words in str(info.value)


def test_sniff_format() -> None:
    assert formats.sniff_format(b"\xff\xd8\xff\xe0") == "JPEG"
    assert formats.sniff_format(b"RIFF\0\0\0\0WEBPVP8 ") == "WEBP"
    assert formats.sniff_format(b"\0\0\0\x1cftypavif") == "AVIF"
    assert formats.sniff_format(b"hello world") is None


def test_tf_decodable_promise_holds_against_tensorflow(corpus) -> None:
    """Files flagged tf_decodable decode in TensorFlow to exactly the same pixels."""
    tf = pytest.importorskip("tensorflow")
    root, expected = corpus
    flagged = 0
    for rel in usable(expected):
        if not images.inspect_image(root / rel).tf_decodable:
            continue
        data = (root / rel).read_bytes()
        if data[:3] == b"\xff\xd8\xff":  # how the fast path decodes JPEG (matches libjpeg-turbo in Pillow)
            decoded = tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE")
        else:
            decoded = tf.io.decode_image(data, channels=3, expand_animations=False)
        np.testing.assert_array_equal(decoded.numpy(), images.load_image(root / rel), err_msg=rel)
        flagged += 1
    assert flagged >= 15


def _progressive_jpeg(extra_scans: int) -> bytes:
    """A small progressive JPEG whose last scan is repeated ``extra_scans`` times (a scan bomb's shape)."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(
        buf, "JPEG", progressive=True
    )
    data = buf.getvalue()
    last_scan = data[data.rindex(b"\xff\xda") : -2]  # up to the end-of-image marker
    return data[:-2] + last_scan * extra_scans + b"\xff\xd9"


def test_a_jpeg_of_too_many_scans_is_refused_before_decoding(monkeypatch) -> None:
    """Each scan is a pass over the whole image: 15,000 of them made a 0.5 MB upload decode for 20 s."""
    ordinary = _progressive_jpeg(0)
    assert 6 <= ordinary.count(b"\xff\xda") <= images.MAX_JPEG_SCANS
    assert images.decode_image_bytes(ordinary).shape == (48, 64, 3)
    bomb = _progressive_jpeg(images.MAX_JPEG_SCANS)
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded a scan bomb"))
    for check in (images.decode_image_bytes, images.inspect_image_bytes):
        with pytest.raises(images.UnusableImageError, match=r"is a JPEG of 1\d\d scans, more than the 100") as e:
            check(bomb, name="bomb.jpg")
        assert e.value.kind == "too_complex" and "bomb.jpg" in str(e.value)


def test_deep_grayscale_keeps_its_transparency_and_range() -> None:
    buf = io.BytesIO()
    Image.fromarray(np.array([[0, 30000, 65535]], np.uint16)).save(buf, "PNG", transparency=0)  # I;16 + tRNS
    assert images.decode_image_bytes(buf.getvalue())[0, :, 0].tolist() == [255, 117, 255]  # see-through: white
    wide = Image.fromarray(np.array([[0, 500_000, 1_000_000]], np.int32))  # 32-bit values past 16 bits
    assert wide.mode == "I"
    assert np.asarray(formats.to_rgb(wide))[0, :, 0].tolist() == [0, 128, 255]


def test_a_named_pipe_is_refused_at_once_not_waited_on(tmp_path) -> None:
    """explain opened each path as a file: a FIFO with no writer blocked it forever."""
    import threading

    from floranet.data.images import UnusableImageError, read_image_file

    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    outcome: list[DatasetError | bytes] = []
    reader = threading.Thread(target=lambda: outcome.append(_raised(read_image_file, fifo)), daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # unblock the reader before failing
        with open(fifo, "wb"):
            pass
        pytest.fail("read_image_file waited on a named pipe")
    (error,) = outcome
    assert isinstance(error, UnusableImageError) and "not a regular file (a named pipe" in str(error)


def _raised(fn, *args):
    try:
        return fn(*args)
    except DatasetError as e:  # what the reader raised: the test looks at it
        return e


def test_the_fast_path_guess_sends_xmp_rotated_and_damaged_pngs_to_pillow(tmp_path) -> None:
    """The guess read an XMP orientation as none (a PNG predicted alone and in a batch got different pixels) and
    sent a PNG whose header Pillow cannot read to TensorFlow, which took a bad ancillary CRC the doctor refuses."""
    import struct
    import zlib

    from PIL import PngImagePlugin

    from floranet.data import decode

    xmp = '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    xmp += '<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp)
    rotated = tmp_path / "xmp.png"
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(rotated, pnginfo=info)
    assert Image.open(rotated).getexif().get(0x0112) == 6  # Pillow reads it, and rotates
    body = raw_png(4, 4, 8, 2, b"".join(b"\0" + bytes(12) for _ in range(4)))
    text = b"tEXt" + b"Comment\0hi"
    damaged = body[:33] + struct.pack(">I", 10) + text + struct.pack(">I", zlib.crc32(text) ^ 1) + body[33:]
    (tmp_path / "badcrc.png").write_bytes(damaged)
    plain = tmp_path / "plain.png"
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(plain)
    paths = decode.encode_paths([rotated, tmp_path / "badcrc.png", plain])
    assert decode.resolve_flags(paths, None) == [False, False, True]


def test_a_sixteen_bit_colour_pngs_transparent_colour_turns_white() -> None:
    """Pillow keeps a 16-bit tRNS key at 16 bits while reading the pixels' high bytes: the colour never matched,
    though the doctor's note said it was composited over white."""
    import struct
    import zlib

    key = (10000, 20000, 30000)
    pixel = b"".join(v.to_bytes(2, "big") for v in key)
    other = b"".join(v.to_bytes(2, "big") for v in (60000, 60000, 60000))
    rows = b"".join(b"\0" + pixel + other for _ in range(2))  # 2x2: the key colour, then another
    data = raw_png(2, 2, 16, 2, rows)
    trns = b"tRNS" + pixel
    data = data[:33] + struct.pack(">I", 6) + trns + struct.pack(">I", zlib.crc32(trns)) + data[33:]
    rgb = images.decode_image_bytes(data)
    assert rgb[0, 0].tolist() == [255, 255, 255] and rgb[0, 1].tolist() == [60000 >> 8] * 3
