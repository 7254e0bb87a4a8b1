"""The tf.data pipeline: shapes, order, bad files, augmentation, tf/Pillow parity."""

from __future__ import annotations

import io
import logging
import os
import zlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from floranet.data.augment import Augment
from floranet.data.decode import decode_and_resize
from floranet.data.pipeline import dataset_from_split, make_dataset
from floranet.data.split import make_split
from floranet.errors import ConfigError, DatasetError

W, H = 24, 20  # source images
SIZE = (16, 12)  # (height, width) the pipeline resizes to
COLOURS = {"red": (230, 20, 20), "green": (20, 200, 40), "blue": (30, 40, 220), "yellow": (240, 220, 30)}


def _noise(seed: int, size: tuple[int, int] = (W, H)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (size[1] // 4 + 1, size[0] // 4 + 1, 3)).astype(np.uint8)
    # Blocky noise + fine noise: texture that flips/rotations/contrast visibly change.
    return np.clip(
        np.kron(base, np.ones((4, 4, 1)))[: size[1], : size[0]] + rng.integers(0, 30, (size[1], size[0], 3)), 0, 255
    ).astype(np.uint8)


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, list[str], list[int], list[tuple[int, int, int]]]:
    """Two classes: solid-colour JPEGs (jpg/) and PNGs (png/), 3 each, 24x20."""
    root = tmp_path / "data"
    paths, labels, colours = [], [], []
    for label, (cls, ext) in enumerate([("jpg", "jpg"), ("png", "png")]):
        (root / cls).mkdir(parents=True)
        for i, name in enumerate(list(COLOURS)[label : label + 3]):
            path = root / cls / f"{i}_{name}.{ext}"
            Image.new("RGB", (W, H), COLOURS[name]).save(path, **({"quality": 95} if ext == "jpg" else {}))
            paths.append(str(path))
            labels.append(label)
            colours.append(COLOURS[name])
    return root, paths, labels, colours


def _all(ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds], strict=True)
    return np.concatenate(xs), np.concatenate(ys)


def test_shapes_dtype_range_and_order(folder) -> None:
    _, paths, labels, colours = folder
    ds = make_dataset(paths, labels, image_size=SIZE, batch_size=4)
    assert ds.element_spec[0].shape.as_list() == [None, *SIZE, 3]
    batches = list(ds)
    assert [tuple(x.shape) for x, _ in batches] == [(4, *SIZE, 3), (2, *SIZE, 3)]
    assert batches[0][0].dtype == tf.float32 and batches[0][1].dtype == tf.int32
    images, ys = _all(ds)
    assert images.min() >= 0 and images.max() <= 255
    assert ys.tolist() == labels  # shuffle=False keeps path order
    for image, colour, path in zip(images, colours, paths, strict=True):
        tol = 3 if path.endswith(".jpg") else 0  # solid colours survive JPEG within a few levels
        np.testing.assert_allclose(image.reshape(-1, 3), np.tile(colour, (SIZE[0] * SIZE[1], 1)), atol=tol)
    only = list(make_dataset(paths, None, image_size=SIZE, batch_size=32))
    assert len(only) == 1 and isinstance(only[0], tf.Tensor)
    np.testing.assert_array_equal(only[0].numpy(), images)


def test_shuffle_is_seeded_and_reshuffles_each_epoch(tmp_path: Path) -> None:
    paths = []
    for i in range(24):
        paths.append(str(tmp_path / f"{i:02d}.png"))
        Image.new("RGB", (4, 4), (i * 10, 0, 0)).save(paths[-1])
    labels = list(range(24))

    def epochs(seed: int) -> list[list[int]]:
        ds = make_dataset(paths, labels, image_size=(4, 4), batch_size=5, shuffle=True, seed=seed)
        return [_all(ds)[1].tolist() for _ in range(2)]

    a = epochs(1)
    assert a == epochs(1)
    assert sorted(a[0]) == labels and a[0] != labels and a[0] != a[1]
    assert epochs(2) != a
    images, ys = _all(make_dataset(paths, labels, image_size=(4, 4), batch_size=5, shuffle=True, seed=1))
    assert (images[:, 0, 0, 0] == ys * 10).all()  # labels stay with their images


def test_bad_files_are_skipped_or_raise(folder, caplog: pytest.LogCaptureFixture) -> None:
    root, paths, labels, _ = folder
    corrupt, empty, missing = root / "jpg" / "corrupt.jpg", root / "png" / "empty.png", root / "png" / "gone.png"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0" + b"not really a jpeg" * 20)
    empty.write_bytes(b"")
    bad = [str(corrupt), str(empty), str(missing)]
    all_paths, all_labels = paths[:2] + bad + paths[2:], labels[:2] + [0, 1, 1] + labels[2:]
    skipped: list[str] = []
    with caplog.at_level(logging.WARNING, logger="floranet.data.pipeline"):
        ds = make_dataset(all_paths, all_labels, image_size=SIZE, batch_size=4, skipped=skipped)
        _, ys = _all(ds)
        _all(ds)  # second epoch: no second warning
    assert ys.tolist() == labels  # exactly the good files, in order
    assert skipped == bad
    assert sum("Skipping unreadable image" in r.getMessage() for r in caplog.records) == 3
    with pytest.raises(DatasetError, match="3 image file") as info:
        make_dataset(all_paths, all_labels, image_size=SIZE, batch_size=4, on_error="raise")
    assert all(repr(p) in str(info.value) for p in bad)
    with pytest.raises(DatasetError, match="empty.png"):
        decode_and_resize(empty, SIZE)
    # A file that breaks after an on_error="raise" dataset was built fails loudly, by name.
    strict = make_dataset(paths, labels, image_size=SIZE, batch_size=4, on_error="raise")
    Path(paths[3]).write_bytes(b"")
    with pytest.raises(tf.errors.InvalidArgumentError, match=Path(paths[3]).name):
        _all(strict)
    # max_pixels guards both decoders (24x20 = 480 pixels).
    good = paths[:3] + paths[4:]
    assert list(make_dataset(good, None, image_size=SIZE, batch_size=8, max_pixels=479)) == []
    assert len(list(make_dataset(good, None, image_size=SIZE, batch_size=8, max_pixels=480))[0]) == 5


def test_tf_failure_falls_back_to_pillow_and_odd_names(tmp_path: Path) -> None:
    webp = tmp_path / "really_webp.png"  # tf cannot decode WebP; Pillow can
    Image.fromarray(_noise(1)).save(webp, format="WEBP", lossless=True)
    odd = Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), b"caf\xe9 \xff.png")))  # non-UTF-8 name
    Image.fromarray(_noise(2)).save(odd)
    images = list(make_dataset([webp, odd], None, image_size=(H, W), batch_size=2, tf_decodable=[True, None]))[0]
    np.testing.assert_array_equal(images[0].numpy(), _noise(1))
    np.testing.assert_array_equal(images[1].numpy(), _noise(2))


def test_the_guess_sends_rotated_pngs_and_scan_bombs_to_pillow(tmp_path: Path) -> None:
    """What only Pillow's path handles right: a PNG's eXIf orientation, and a JPEG of too many scans (refused)."""
    from floranet.data import images as images_lib
    from floranet.data.decode import resolve_flags

    upright = _noise(5, (H, W))
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.rot90(upright, k=1)).save(tmp_path / "rotated.png", exif=exif)
    Image.fromarray(upright).save(tmp_path / "plain.png")
    progressive = tmp_path / "p.jpg"
    Image.fromarray(upright).save(progressive, progressive=True)
    data = progressive.read_bytes()
    last_scan = data[data.rindex(b"\xff\xda") : -2]
    (tmp_path / "bomb.jpg").write_bytes(data[:-2] + last_scan * images_lib.MAX_JPEG_SCANS + b"\xff\xd9")
    paths = [tmp_path / n for n in ("rotated.png", "plain.png", "p.jpg", "bomb.jpg")]
    assert resolve_flags([os.fsencode(p) for p in paths], None) == [False, True, True, False]
    batch = list(make_dataset(paths, None, image_size=(W, H), batch_size=4))[0].numpy()  # the bomb is skipped
    assert len(batch) == 3
    np.testing.assert_array_equal(batch[0], upright)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")


def test_the_guess_finds_an_orientation_in_png_text_chunks_compressed_or_after_the_pixels(tmp_path: Path) -> None:
    """Pillow rotates a PNG by the orientation of ImageMagick's "Raw profile type exif" text chunk (zTXt as it
    writes it), a compressed XMP iTXt, or an "exif" text chunk, before or after IDAT; the guess byte-searched for
    ``eXIf`` and ``tiff:Orientation`` only, so a predict of more than SMALL_JOB files gave tf's unrotated pixels."""
    from floranet.data.decode import resolve_flags

    upright = _noise(8, (H, W))  # 24 tall, 20 wide once upright
    exif = Image.Exif()
    exif[0x0112] = 6
    raw = b"Exif\x00\x00" + exif.tobytes()
    magick = f"\nexif\n{len(raw):8d}\n{raw.hex()}\n".encode()
    xmp = (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
    )
    chunks = {
        "magick_ztxt": _png_chunk(b"zTXt", b"Raw profile type exif\0\0" + zlib.compress(magick)),
        "magick_text": _png_chunk(b"tEXt", b"Raw profile type exif\0" + magick),
        "magick_itxt": _png_chunk(b"iTXt", b"Raw profile type exif\0\1\0\0\0" + zlib.compress(magick)),
        "xmp_itxt": _png_chunk(b"iTXt", b"XML:com.adobe.xmp\0\1\0\0\0" + zlib.compress(xmp)),
        "xmp_ztxt": _png_chunk(b"zTXt", b"XML:com.adobe.xmp\0\0" + zlib.compress(xmp)),
        "exif_text": _png_chunk(b"tEXt", b"exif\0" + raw),
    }
    buffer = io.BytesIO()
    Image.fromarray(np.rot90(upright, k=1)).save(buffer, format="PNG")  # stored sideways
    stored = buffer.getvalue()
    paths = []
    for name, chunk in chunks.items():  # after IHDR (33 bytes in), and before IEND (the last 12)
        for where, data in (("head", stored[:33] + chunk + stored[33:]), ("tail", stored[:-12] + chunk + stored[-12:])):
            paths.append(tmp_path / f"{name}_{where}.png")
            paths[-1].write_bytes(data)
    (tmp_path / "plain.png").write_bytes(stored)
    batch = list(make_dataset(paths, None, image_size=(W, H), batch_size=len(paths)))[0].numpy()  # guessed flags
    for path, image in zip(paths, batch, strict=True):
        np.testing.assert_array_equal(image, upright, err_msg=path.name)
        np.testing.assert_array_equal(decode_and_resize(path, (W, H)), image, err_msg=path.name)  # Pillow's path
    assert resolve_flags([os.fsencode(p) for p in [*paths, tmp_path / "plain.png"]], None) == [False] * len(paths) + [
        True
    ]


def test_the_guess_sends_a_damaged_jpeg_to_pillow_which_refuses_it_in_threads_too(tmp_path: Path) -> None:
    """A JPEG cut mid-file but ended by an end-of-image marker: tf.io.decode_jpeg gives grey pixels without a word,
    where the doctor calls it bad. The guess (in threads for many files, in order) sends it to Pillow's path."""
    from floranet.data import decode

    damaged, plain = tmp_path / "damaged.jpg", tmp_path / "plain.jpg"
    Image.fromarray(_noise(9, (96, 64))).save(damaged)
    Image.fromarray(_noise(10)).save(plain)
    data = damaged.read_bytes()
    damaged.write_bytes(data[: len(data) // 2] + b"\xff\xd9")
    paths = [os.fsencode(p) for p in [damaged, plain] * 20]
    assert decode.resolve_flags(paths[:2], None) == [False, True]
    assert decode.resolve_flags(paths, None) == [False, True] * 20
    assert decode.resolve_flags(paths, [None, False] * 20) == [False] * len(paths)
    skipped: list[str] = []
    batch = list(make_dataset([damaged, plain], None, image_size=(H, W), batch_size=2, skipped=skipped))[0]
    assert len(batch) == 1 and skipped == [str(damaged)]
    with pytest.raises(DatasetError, match="corrupt JPEG data: premature end of data segment"):
        decode_and_resize(damaged, (H, W))
    assert len(paths) >= decode._THREADED_GUESSES  # the threads' order was checked above


def test_pillow_path_handles_exif_rotation_alpha_and_matches_decode_and_resize(tmp_path: Path) -> None:
    upright = _noise(3, (H, W))  # 24 tall, 20 wide once upright
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    Image.fromarray(np.rot90(upright, k=1)).save(rotated, quality=100, subsampling=0, exif=exif)  # stored sideways
    rgba = tmp_path / "alpha.png"
    Image.fromarray(np.dstack([_noise(4), np.full((H, W), 128, np.uint8)])).save(rgba)
    paths = [rotated, rgba]
    images = list(make_dataset(paths, None, image_size=(W, H), batch_size=2))[0].numpy()  # guessed: Pillow
    for path, image in zip(paths, images, strict=True):
        assert np.array_equal(decode_and_resize(path, (W, H)), image)
        assert np.array_equal(decode_and_resize(path, (W, H), tf_decodable=False), image)
    # tf alone would ignore the EXIF orientation: clearly different pixels.
    assert np.abs(decode_and_resize(rotated, (W, H), tf_decodable=True) - images[0]).mean() > 20
    assert np.abs(images[0] - upright).mean() < 3  # upright, up to JPEG loss


def test_decode_and_resize_equals_dataset_element(folder) -> None:
    _, paths, _, _ = folder
    images = list(make_dataset(paths, None, image_size=SIZE, batch_size=8))[0].numpy()
    for path, image in zip(paths, images, strict=True):
        out = decode_and_resize(path, SIZE)
        assert out.dtype == np.float32 and out.shape == (*SIZE, 3)
        np.testing.assert_array_equal(out, image)
    with pytest.raises(DatasetError, match="nope.jpg"):
        decode_and_resize(Path(paths[0]).with_name("nope.jpg"), SIZE)


def test_tf_and_pillow_paths_agree(tmp_path: Path) -> None:
    png, jpg444, jpg420 = tmp_path / "a.png", tmp_path / "b.jpg", tmp_path / "c.jpg"
    Image.fromarray(_noise(5)).save(png)
    Image.fromarray(_noise(6)).save(jpg444, quality=95, subsampling=0)
    Image.fromarray(_noise(7)).save(jpg420, quality=95, subsampling=2)
    for size in ((H, W), SIZE):
        np.testing.assert_array_equal(
            decode_and_resize(png, size, tf_decodable=True), decode_and_resize(png, size, tf_decodable=False)
        )
        for jpg in (jpg444, jpg420):
            fast = decode_and_resize(jpg, size, tf_decodable=True)
            diff = np.abs(fast - decode_and_resize(jpg, size, tf_decodable=False))
            # Both decoders use libjpeg(-turbo)'s accurate integer IDCT, which gives
            # identical output (measured: 0 here, on this file and 117 flower photos).
            # Allow 2 levels for a differently built libjpeg (chroma upsampling and
            # rounding differ by 1-2); tf's default fast IDCT shows 11-13 on this noise.
            assert diff.max() <= 2, diff.max()


def test_augment_is_seeded_changes_pixels_and_keeps_range(tmp_path: Path) -> None:
    paths = []
    for i in range(6):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(_noise(10 + i)).save(paths[-1])
    labels = [0, 1, 0, 1, 0, 1]
    plain, _ = _all(make_dataset(paths, labels, image_size=(H, W), batch_size=4))

    def augmented(seed: int) -> tuple[np.ndarray, np.ndarray]:
        return _all(make_dataset(paths, labels, image_size=(H, W), batch_size=4, augment=Augment(), seed=seed))

    a, ya = augmented(7)
    b, yb = augmented(7)
    np.testing.assert_array_equal(a, b)
    assert ya.tolist() == yb.tolist() == labels
    assert not np.allclose(a, plain) and not np.allclose(a, augmented(8)[0])
    assert a.min() >= 0 and a.max() <= 255
    assert a.dtype == np.float32
    with pytest.raises(ConfigError, match="rotation"):
        Augment(rotation=1.5)


def test_dataset_from_split_labels_and_unaugmented_validation(tmp_path: Path) -> None:
    root = tmp_path / "data"
    items = []
    for label in ("b_cls", "a_cls"):
        (root / label).mkdir(parents=True)
        for i in range(5):
            rel = f"{label}/{i} x.png"
            Image.fromarray(_noise(hash((label, i)) % 1000)).save(root / rel)
            items.append((rel, label, ""))
    split = make_split(items, val_split=0.4, seed=1)
    kw = {"image_size": (H, W), "batch_size": 3, "augment": Augment(), "seed": 3}
    val, ys = _all(dataset_from_split(split, root, "validation", **kw))
    rows = split.validation()
    assert ys.tolist() == [split.label_index(r.label) for r in rows] == [0, 0, 1, 1]  # a_cls -> 0
    for row, image in zip(rows, val, strict=True):  # never augmented, even when asked
        np.testing.assert_array_equal(image, decode_and_resize(root / row.path, (H, W)))
    train, _ = _all(dataset_from_split(split, root, "train", **kw))
    plain, _ = _all(dataset_from_split(split, root, "train", image_size=(H, W), batch_size=3))
    assert train.shape == plain.shape == (6, H, W, 3) and not np.allclose(train, plain)
    assert len(_all(dataset_from_split(split, root, "all", image_size=(H, W), batch_size=3))[1]) == 10
    flags = {r.path: True for r in split.rows}
    np.testing.assert_array_equal(
        _all(dataset_from_split(split, root, "all", image_size=(H, W), batch_size=3, tf_decodable=flags))[0],
        _all(dataset_from_split(split, root, "all", image_size=(H, W), batch_size=3))[0],
    )
    with pytest.raises(ConfigError, match="subset"):
        dataset_from_split(split, root, "test", image_size=(H, W), batch_size=3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image_size": (0, 4)}, "image_size"),
        ({"image_size": 180}, "image_size"),
        ({"batch_size": 0}, "batch_size"),
        ({"on_error": "ignore"}, "on_error"),
        ({"tf_decodable": [True]}, "tf_decodable"),
        ({"max_pixels": -1}, "max_pixels"),
    ],
)
def test_bad_arguments(folder, kwargs: dict, match: str) -> None:
    _, paths, labels, _ = folder
    args = {"image_size": SIZE, "batch_size": 2, **kwargs}
    with pytest.raises(ConfigError, match=match):
        make_dataset(paths, labels, **args)


def test_bad_labels_and_empty_paths(folder) -> None:
    _, paths, labels, _ = folder
    with pytest.raises(ConfigError, match="labels"):
        make_dataset(paths, labels[:-1], image_size=SIZE, batch_size=2)
    with pytest.raises(ConfigError, match="labels"):
        make_dataset(paths, [-1] * len(paths), image_size=SIZE, batch_size=2)
    with pytest.raises(DatasetError, match="no image paths"):
        make_dataset([], None, image_size=SIZE, batch_size=2)
