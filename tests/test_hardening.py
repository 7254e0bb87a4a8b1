"""Hostile input and unlucky users: nothing let in, nothing lost (one test group per point of issue 13)."""

from __future__ import annotations

import collections
import concurrent.futures
import errno
import io
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from floranet.cli import main
from floranet.data import formats, images
from floranet.errors import ConfigError, ModelError, OutputError, RunLockedError
from floranet.rundir import RunDir
from floranet.utils import files
from httpserver import error_server
from imagesets import make_image_folder

# --------------------------------------------------------------------------- 1. only allow-listed decoders

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n/loop { loop } def loop\nshowpage\n%%EOF\n"


def _refused_formats() -> dict[str, bytes]:
    """Real files in formats Pillow reads but floranet must not: each written by Pillow itself."""
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8))
    out = {"EPS": EPS}
    for fmt, mode in (
        ("ICO", "RGB"),
        ("PCX", "RGB"),
        ("SGI", "RGB"),
        ("TGA", "RGB"),
        ("IM", "RGB"),
        ("XBM", "1"),
        ("PPM", "RGB"),
        ("DDS", "RGB"),
        ("QOI", "RGB"),
        ("JPEG2000", "RGB"),
        ("SPIDER", "F"),
    ):
        buf = io.BytesIO()
        try:
            rgb.convert(mode).save(buf, format=fmt)
        except (OSError, KeyError, ValueError):  # a writer this Pillow build lacks
            continue
        out[fmt] = buf.getvalue()
    return out


@pytest.mark.parametrize("fmt", sorted(_refused_formats()))
def test_formats_outside_the_allow_list_are_refused_without_running_anything(fmt, monkeypatch) -> None:
    started: list[object] = []
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: started.append(a) or pytest.fail("a process started"))
    data = _refused_formats()[fmt]
    with pytest.raises(images.UnusableImageError) as info:
        images.decode_image_bytes(data, name="photo.jpg")
    assert info.value.kind in ("not_image", "unsupported_format") and not started
    assert "gs" not in str(info.value).split() and "/tmp" not in str(info.value)


def test_the_allow_list_is_the_documented_one() -> None:
    assert formats.allowed_formats() == ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")
    for fmt in ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF"):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (10, 200, 30)).save(buf, format=fmt)
        assert images.decode_image_bytes(buf.getvalue()).shape == (8, 8, 3), fmt


def test_opt_in_formats_need_a_known_name(monkeypatch) -> None:
    monkeypatch.setenv(formats.EXTRA_FORMATS_ENV, "EPS")
    with pytest.raises(ConfigError, match="may name AVIF, HEIF"):
        formats.allowed_formats()


# --------------------------------------------------------------------------- 3. images near the limit stay cheap


def _gray16_png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((side, side), np.uint16)).save(buf, format="PNG", compress_level=9)  # I;16
    return buf.getvalue()


def test_a_16_bit_png_bomb_is_refused_from_its_header_by_the_serving_budget() -> None:
    from floranet.config import ServeConfig

    bomb = _gray16_png(7000)  # 49 MP, just under training's 50 MP limit, ~100 KB on disk
    assert len(bomb) < 200_000
    start = time.perf_counter()
    with pytest.raises(images.UnusableImageError) as info:
        images.decode_image_bytes(bomb, max_pixels=ServeConfig().max_pixels)
    assert info.value.kind == "too_large" and time.perf_counter() - start < 1.0


def test_16_bit_images_are_scaled_without_a_float64_copy() -> None:
    data = _gray16_png(2000)  # 4 MP: the old float64 path allocated ~100 MB for it
    tracemalloc.start()
    pixels = images.decode_image_bytes(data)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert pixels.shape == (2000, 2000, 3)
    assert peak < 4_000_000 * 8, f"peak {peak / 1e6:.0f} MB"  # at most 8 bytes a pixel (was ~25)


def test_uploads_are_resized_from_uint8_pixels_exactly_as_training_resizes() -> None:
    import tensorflow as tf

    from floranet.data.resize import bilinear

    rng = np.random.default_rng(1)
    for shape, size in (((333, 777, 3), (161, 193)), ((30, 44, 3), (32, 32)), ((7, 5, 3), (225, 225))):
        x = rng.integers(0, 256, shape, dtype=np.uint8)
        want = tf.image.resize(x, size, method="bilinear", antialias=False).numpy()
        np.testing.assert_array_equal(bilinear(x, size), want)


# --------------------------------------------------------------------------- 6. files follow the umask


def test_atomic_writes_follow_the_umask_keep_a_replaced_files_mode_and_sync_the_folder(tmp_path, monkeypatch) -> None:
    synced: list[Path] = []
    real = files.fsync_dir
    monkeypatch.setattr(files, "fsync_dir", lambda folder: synced.append(folder) or real(folder))
    old = os.umask(0o022)
    try:
        files.atomic_write_text(tmp_path / "a.json", "{}")
        assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
        os.umask(0o077)
        files.atomic_write_text(tmp_path / "b.json", "{}")
        assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o600
        (tmp_path / "a.json").chmod(0o640)
        files.atomic_write_text(tmp_path / "a.json", "{ }")  # replaced: keeps 0640
        assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o640
    finally:
        os.umask(old)
    assert synced == [tmp_path] * 3


def test_json_files_are_utf8_with_a_names_odd_bytes_escaped(tmp_path) -> None:
    """A name's byte that is not UTF-8 (a surrogate escape, in a key or a value) was written raw: not JSON."""
    odd = os.fsdecode(b"caf\xe9")
    doc = {odd: [odd, "caf\u00e9", 'a"\\b\n'], "path": Path(os.fsdecode(b"/runs/\xff")), "n": np.float32(0.5)}
    files.write_json(tmp_path / "a.json", doc)
    raw = (tmp_path / "a.json").read_bytes()
    assert b'"caf\\udce9"' in raw and "caf\u00e9".encode() in raw  # other characters as they are
    back = json.loads(raw.decode("utf-8"))  # strict
    assert back == {odd: [odd, "caf\u00e9", 'a"\\b\n'], "path": os.fsdecode(b"/runs/\xff"), "n": 0.5}
    assert os.fsencode(next(iter(back))) == b"caf\xe9"  # the same folder


# --------------------------------------------------------------------------- 7. one writer per run directory


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path) -> None:
    run = RunDir(tmp_path / "run")
    with run.lock():
        child = subprocess.run(
            [
                sys.executable,
                "-c",
                "from floranet.rundir import RunDir; import sys\n"
                "try:\n    RunDir(sys.argv[1]).lock().__enter__()\nexcept Exception as e:\n"
                "    print(type(e).__name__, e.pid)",
                str(run.path),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert child.stdout.split() == ["RunLockedError", str(os.getpid())], child.stderr[-500:]
        assert (run / RunDir.LOCK).read_text().strip() == str(os.getpid())
    assert not (run / RunDir.LOCK).exists()  # released and removed
    with run.lock():  # and taken again
        pass


def test_a_link_or_fifo_at_the_locks_place_is_never_written_through(tmp_path) -> None:
    """The pid used to be written through a symbolic link named run.lock: into any file it pointed at."""
    theirs = tmp_path / "notes.txt"
    theirs.write_text("my notes\n")
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    (run / RunDir.LOCK).symlink_to(theirs)
    with pytest.raises(OutputError, match="run.lock: it is a symbolic link, which floranet does not write through"):
        run.lock().__enter__()
    assert theirs.read_text() == "my notes\n"
    (run / RunDir.LOCK).unlink()
    os.mkfifo(run / RunDir.LOCK)
    with pytest.raises(OutputError, match="run.lock: it is not a plain file"):
        run.lock().__enter__()


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.EOPNOTSUPP])
def test_a_file_system_without_locks_is_refused_cleanly(tmp_path, monkeypatch, code) -> None:
    """NFS without lockd (ENOLCK) or a FUSE mount (EOPNOTSUPP) was a raw OSError traceback that left the fd open
    and an empty run.lock (and the folders made for it) behind."""
    from floranet.utils import locks

    def flock(fd: int, op: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(locks.fcntl, "flock", flock)
    before = len(os.listdir("/proc/self/fd"))
    run = RunDir(tmp_path / "a" / "run")
    with pytest.raises(OutputError, match=r"run\.lock: its file system does not support file locks.*local disk"):
        run.lock().__enter__()
    assert not (tmp_path / "a").exists()  # neither the lock file nor the folders made for it stay
    assert len(os.listdir("/proc/self/fd")) == before  # the fd is closed
    existing = tmp_path / "theirs"
    existing.mkdir()
    (existing / RunDir.LOCK).write_text("")  # a lock file left by a killed holder is not ours to remove
    with pytest.raises(OutputError, match="does not support file locks"):
        RunDir(existing).lock().__enter__()
    assert (existing / RunDir.LOCK).exists()


def test_concurrent_train_into_one_folder_one_is_refused(tmp_path) -> None:
    data = make_image_folder(tmp_path / "data", classes=2, per_class=4)
    out = tmp_path / "run"
    with RunDir(out).lock():  # another `floranet train --out run` is running
        code = main(
            [
                "train",
                str(data),
                "--out",
                str(out),
                "--backbone",
                "resnet20",
                "--weights",
                "none",
                "--image-size",
                "32",
                "--epochs",
                "1",
            ]
        )
    assert code == 2 and not (out / RunDir.CONFIG).exists()
    with pytest.raises(RunLockedError), RunDir(out).lock(), RunDir(out).lock():
        pass


def test_out_refuses_a_folder_that_holds_other_things(tmp_path, capsys) -> None:
    from corpus import snapshot

    data = make_image_folder(tmp_path / "data", classes=2, per_class=4)
    theirs = tmp_path / "my-documents"
    theirs.mkdir()
    (theirs / "thesis.txt").write_text("years of work")
    (theirs / "metrics.json").write_text('{"mine": true}')
    before = snapshot(theirs)
    code = main(
        [
            "train",
            str(data),
            "--out",
            str(theirs),
            "--backbone",
            "resnet20",
            "--weights",
            "none",
            "--image-size",
            "32",
            "--epochs",
            "1",
        ]
    )
    assert code == 2 and "not empty and not a floranet run" in capsys.readouterr().err
    assert snapshot(theirs) == before
    (theirs / "afile").write_text("mine")
    tiny = ["--backbone", "resnet20", "--weights", "none", "--image-size", "32", "--epochs", "1"]
    assert main(["train", str(data), "--out", str(theirs / "afile"), *tiny]) == 2
    assert "out must be a folder for the run; it is a file" in capsys.readouterr().err  # was "File exists"
    with pytest.raises(SystemExit):  # 32x48x7 was taken as 32x48
        main(["train", str(data), "--out", str(tmp_path / "r"), *tiny, "--image-size", "32x48x7"])
    assert "(two numbers at most), got '32x48x7'" in capsys.readouterr().err


# --------------------------------------------------------------------------- 8. sizes checked before reading


def test_a_sparse_terabyte_jpg_is_refused_before_a_byte_is_read(tmp_path) -> None:
    root = tmp_path / "data"
    make_image_folder(root, classes=2, per_class=2)
    huge = root / "class_0" / "huge.jpg"
    with open(huge, "wb") as f:
        f.truncate(1 << 40)  # sparse: no disk used
    from floranet.data import doctor

    start = time.perf_counter()
    report = doctor.diagnose(root, workers=1)
    finding = next(f for f in report.files if f.path == "class_0/huge.jpg")
    assert finding.status == "bad" and finding.reason.startswith("too large")
    assert time.perf_counter() - start < 10


# --------------------------------------------------------------------------- 9. many classes finish


def test_a_500_class_run_completes_with_bounded_plots(tmp_path) -> None:
    from floranet import config
    from floranet.workflows import train

    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for c in range(500):
        folder = root / f"c{c:03d}"
        folder.mkdir(parents=True)
        for i in range(5):  # 4 train, 1 validation
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    cfg = config.resolve(
        data_dir=str(root),
        out=str(tmp_path / "run"),
        backbone="resnet20",
        weights="none",
        image_size=32,
        batch_size=64,
        epochs=1,
        preset="tutorial",
        runtime="tensorflow",
        precision="fp32",
        head_units=0,
    )
    result = train(cfg, progress=False, say=lambda m: None)
    assert result.metrics["num_examples"] == 500 and len(result.metrics["per_class"]) == 500
    with Image.open(result.run.plot("confusion_matrix.png")) as im:
        assert max(im.size) <= 4200  # two 20-inch panels at 100 dpi, whatever the number of classes
    assert (result.run / RunDir.REPORT).exists()


# --------------------------------------------------------------------------- 10. no terminal injection


def test_output_that_is_not_utf8_shows_names_escaped_without_a_traceback(tmp_path) -> None:
    """With stdout in cp1252 or ASCII (a Windows redirect, an ISO-8859 locale), a class named "café" or the demo's
    "→" ended the command in a UnicodeEncodeError traceback, a half-written run behind it."""
    import os

    data = make_image_folder(tmp_path / "data", classes=2, per_class=3, names=["caf\u00e9", "\u2192arrow"])
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "PYTHONUTF8": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "floranet.cli", "doctor", str(data)], capture_output=True, env=env, timeout=120
    )
    out, err = proc.stdout.decode("ascii"), proc.stderr.decode("ascii")
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert "caf\\xe9" in out and "\\u2192arrow" in out, out


def test_a_reader_that_leaves_the_pipe_gets_no_traceback() -> None:
    """`floranet backbones | head -0`: a BrokenPipeError traceback (twice: again when Python flushed at exit)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "floranet.cli", "backbones"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the command writes a line (its imports take far longer)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_plots_draw_any_class_name(tmp_path) -> None:
    """A class folder whose name is not UTF-8 ended training in a matplotlib TypeError (after the model was
    saved, before the report); two "$" made matplotlib parse a name as math and fail to draw it."""
    import os

    from floranet.evaluation.plots import confusion_matrix_plot

    names = [os.fsdecode(b"cl\xe9ss"), "$\\x$ and $y$", "ok"]
    confusion_matrix_plot(np.eye(3, dtype=int), names, tmp_path / "cm.png", title=os.fsdecode(b"folder \xff"))
    assert (tmp_path / "cm.png").stat().st_size > 0


def test_a_confusion_matrix_of_many_classes_stands_one_above_the_other(tmp_path) -> None:
    """Side by side, 30 classes made a 3,442 x 1,678 px picture that a 1,100 px page showed at a third: numbers 3 px
    tall. Past 12 classes the counts and the normalised matrix are stacked, each as wide as the page allows."""
    from PIL import Image

    from floranet.evaluation.plots import confusion_matrix_plot

    for n, tall in ((5, False), (30, True)):
        confusion_matrix_plot(np.eye(n, dtype=int) * 3, [f"class_{i}" for i in range(n)], tmp_path / f"{n}.png")
        width, height = Image.open(tmp_path / f"{n}.png").size
        assert (height > width) is tall, (n, width, height)


def test_escape_sequences_in_file_names_never_reach_stdout(tmp_path, capsys) -> None:
    root = make_image_folder(tmp_path / "data", classes=2, per_class=3)
    evil = "\x1b[2J\x1b[31mroses\nOK  class_0:fine.jpg\u202e.jpg"
    (root / "class_0" / f"{evil}.jpg").write_bytes((root / "class_0" / "img_000.jpg").read_bytes())
    (root / "class_1" / f"{evil}.txt").write_text("not an image")
    assert main(["doctor", str(root)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out and "\\x1b[2J" in out
    assert not any(line.startswith("OK  class_0:fine.jpg") for line in out.splitlines())


def test_prediction_tables_escape_file_names() -> None:
    import csv

    from floranet.inference import Prediction
    from floranet.inference.formats import format_predictions

    rows = [Prediction("a\x1b[31m\nforged.jpg", (("roses\x07", 0.9),)), Prediction("b\rc.jpg", error="bad\x1b")]
    text = format_predictions(rows, "table")
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text
    assert "forged.jpg" not in text.split("\n")[-2]  # no forged line
    # A CSV holds the real names, quoted, so that it reads back to them: a line break forges no row.
    parsed = list(csv.reader(io.StringIO(format_predictions(rows, "csv"), newline="")))
    assert [r[0] for r in parsed[1:]] == [r.file for r in rows] and parsed[2][-1] == "bad\x1b"


# --------------------------------------------------------------------------- 11. unwritable output, said early


def test_file_names_with_line_breaks_round_trip_through_every_csv(tmp_path) -> None:
    """A carriage return in a file name was written unquoted (csv quotes only the line end it writes, here \\n):
    split.csv, predictions.csv and audit.csv could not be read back."""
    import csv as csv_lib

    from floranet.data.split import Split, SplitRow
    from floranet.evaluation.evaluation import Evaluation
    from floranet.utils.text import csv_text

    names = ["a/cr\rx.jpg", "a/lf\nx.jpg", "a/both\r\n.jpg", 'a/"quoted", comma.jpg', "a/plain.jpg"]
    text = csv_text([["path", "n"], *([n, i] for i, n in enumerate(names))])
    assert text.startswith("path,n\n") and text.endswith("a/plain.jpg,4\n")  # ordinary rows as before
    assert [r[0] for r in csv_lib.reader(io.StringIO(text, newline=""))][1:] == names
    split = Split(tuple(SplitRow(n, "a", "train" if i % 2 else "validation", "") for i, n in enumerate(names)), ("a",))
    split.to_csv(tmp_path / "split.csv")
    assert sorted(r.path for r in Split.from_csv(tmp_path / "split.csv").rows) == sorted(names)
    ev = Evaluation(("a", "b"), tuple(names), np.zeros(5, np.int64), np.full((5, 2), 0.5, np.float32), 1.0, "d", "v")
    (tmp_path / RunDir.PREDICTIONS).write_text(ev.to_csv(), newline="")
    from floranet import config
    from floranet.evaluation.evaluation import read_evaluation

    config.resolve(data_dir=str(tmp_path / "d")).save(tmp_path / RunDir.CONFIG)
    RunDir(tmp_path).write_class_names(["a", "b"])
    again = read_evaluation(RunDir(tmp_path))
    assert again is not None and again.paths == tuple(names)


def test_unwritable_json_is_a_one_line_error_before_the_scan(tmp_path, capsys, monkeypatch) -> None:
    from floranet.data import doctor

    monkeypatch.setattr(doctor, "diagnose", lambda *a, **k: pytest.fail("scanned before checking the output"))
    root = make_image_folder(tmp_path / "data", classes=2, per_class=2)
    assert main(["doctor", str(root), "--json", "/proc/floranet-no.json"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("floranet doctor: error: Cannot write /proc/floranet-no.json") and "\n" not in err
    assert main(["doctor", str(root), "--json", str(tmp_path / "no-folder" / "x.json")]) == 2  # was after the scan
    assert "folder" in capsys.readouterr().err and not (tmp_path / "no-folder").exists()


def test_predict_output_is_checked_before_predicting(tiny_run, tmp_path, capsys, monkeypatch) -> None:
    from floranet.inference import predictor

    monkeypatch.setattr(predictor.Predictor, "predict", lambda *a, **k: pytest.fail("predicted first"))
    image = make_image_folder(tmp_path / "imgs", classes=1, per_class=1)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    target = "/proc/floranet-no/out.csv" if os.geteuid() == 0 else str(ro / "out.csv")
    assert main(["predict", str(tiny_run), str(image), "--output", target]) == 2
    assert f"Cannot write {target}" in capsys.readouterr().err


@pytest.mark.parametrize("runtime", ["tensorflow", "auto"])
def test_class_names_that_do_not_match_the_model_are_refused_by_name(writable_run, runtime, capsys) -> None:
    """A class_names.json replaced by hand (two names for three outputs) named no file: NumPy failed mid-row."""
    from floranet import inference

    image = make_image_folder(writable_run.parent / "imgs", classes=1, per_class=1)
    names = writable_run / RunDir.CLASS_NAMES
    for wrong in (["a", "b"], ["a", "b", "c", "d"]):
        names.write_text(json.dumps(wrong))
        with pytest.raises(ModelError, match=f"names {len(wrong)} classes but the model outputs 3"):
            inference.load(writable_run, runtime=runtime)
    assert main(["predict", str(writable_run), str(image), "--runtime", runtime]) == 2
    assert f"{names} names 4 classes but the model outputs 3" in capsys.readouterr().err


def test_output_errors_name_the_path() -> None:
    with pytest.raises(OutputError) as info:
        files.atomic_write_text("/proc/floranet-no/x.txt", "x")
    assert info.value.path == "/proc/floranet-no/x.txt" and str(info.value).startswith("Cannot write")


# --------------------------------------------------------------------------- 12. dependency floors


def test_dependency_floors_exclude_known_vulnerable_versions() -> None:
    import tomllib

    from packaging.requirements import Requirement
    from packaging.version import Version

    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
    floors = {}
    for spec in project["dependencies"]:
        req = Requirement(spec)
        lows = [Version(s.version) for s in req.specifier if s.operator == ">="]
        floors[req.name.lower()] = max(lows) if lows else None
    safe = {"pillow": "12.3", "python-multipart": "0.0.27", "keras": "3.14", "starlette": "0.49.1", "tqdm": "4.66.3"}
    for name, version in safe.items():
        assert floors.get(name) is not None and floors[name] >= Version(version), (name, floors.get(name))


# --------------------------------------------------------------------------- helpers shared with test_serve


def connect(url: str) -> socket.socket:
    """A raw TCP connection to the server at ``url`` (``http://host:port``)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


def half_open_sockets(url: str, n: int) -> list[socket.socket]:
    """``n`` connections that each send half a request header and then wait."""
    out = []
    for _ in range(n):
        s = connect(url)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        out.append(s)
    return out


# --------------------------------------------------------------------------- 2-4. the server under attack

KEY = "k" * 20 + "-floranet-test"


@pytest.fixture(scope="module")
def hardened_app(tiny_run):
    from floranet import serving

    return serving.create_app(
        tiny_run,
        runtime="tensorflow",
        precision="fp32",
        header_timeout_s=1.0,
        max_connections_per_client=16,
        request_timeout_s=2.0,
        api_key=KEY,
    )


def _rose() -> bytes:
    from floranet.data.datasets import mini_flowers_path

    return sorted((mini_flowers_path() / "roses").glob("*.jpg"))[0].read_bytes()


def test_half_open_sockets_do_not_lock_out_health(hardened_app) -> None:
    import httpx

    from floranet import serving

    with serving.serve_in_thread(hardened_app) as url:
        guard = hardened_app.state.guard
        hostile = half_open_sockets(url, 300)
        try:
            assert guard.count <= guard.per_client  # the rest were refused or made room
            time.sleep(guard.grace_s + 0.1)  # quiet long enough to be closed for a newcomer
            start = time.perf_counter()
            r = httpx.get(f"{url}/health", timeout=2.0)
            assert r.status_code == 200 and time.perf_counter() - start < 2.0
            assert guard.count <= guard.per_client and guard.closed_idle >= 1
            time.sleep(1.5)  # past header_timeout_s: the survivors are cut too
            assert guard.count == 0
        finally:
            for s in hostile:
                s.close()


def test_a_burst_of_whole_requests_past_the_bound_gets_answers_not_resets(hardened_app) -> None:
    """A connection accepted a moment ago, its request unread in the socket, counted as idle: the burst's
    newest connections closed it to make room, and its client got a reset instead of an answer."""
    from floranet import serving

    body = _rose()
    request = (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: image/jpeg\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    with serving.serve_in_thread(hardened_app) as url:
        n = hardened_app.state.guard.per_client * 2 + 8
        start = threading.Barrier(n)

        def one(_: int) -> str:
            start.wait()
            try:
                with connect(url) as s:
                    s.settimeout(20)
                    s.sendall(request)
                    return s.recv(64).split(b"\r\n", 1)[0].decode() or "closed without an answer"
            except OSError as e:
                return type(e).__name__

        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            answers = collections.Counter(pool.map(one, range(n)))
    assert set(answers) <= {"HTTP/1.1 200 OK", "HTTP/1.1 503 Service Unavailable"}, answers
    assert answers["HTTP/1.1 200 OK"] >= hardened_app.state.guard.per_client, answers


def test_a_connection_past_the_clients_bound_gets_503_not_a_bare_reset(hardened_app) -> None:
    from floranet import serving

    with serving.serve_in_thread(hardened_app) as url:
        head = (
            f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
            "Content-Length: 1000\r\n\r\nxx"
        ).encode()
        busy = [connect(url) for _ in range(16)]  # the client's bound
        try:
            for s in busy:
                s.sendall(head)  # a request in progress: not idle, so not closed to make room
            time.sleep(0.3)
            with connect(url) as extra:
                answer = extra.recv(4096)
            assert answer.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in answer and b"server busy" in answer
        finally:
            for s in busy:
                s.close()


def test_a_request_http_cannot_parse_gets_a_json_400(hardened_app) -> None:
    from floranet import serving

    with serving.serve_in_thread(hardened_app) as url:
        for bad in (b"Content-Length: abc\r\n", b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"):
            with connect(url) as s:
                s.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n" + bad + b"\r\nhello")
                answer = b""
                while chunk := s.recv(4096):
                    answer += chunk
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400") and b"content-type: application/json" in head.lower(), answer
            assert json.loads(body)["error"].startswith("malformed HTTP request")


def _one_answer(s: socket.socket) -> tuple[bytes, bytes]:
    """Reads one HTTP answer (head and ``Content-Length`` body) from a raw connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"closed before an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:"))[15:])
    while len(body) < length:
        body += s.recv(65536)
    return head, body


def test_headers_past_the_bound_get_a_json_431_and_the_connection_closes(hardened_app) -> None:
    """httptools keeps a header that is still arriving in memory: one connection streamed a header for the whole
    header timeout, and 32 of them held 1.1 GB and slowed everyone's /health."""
    from floranet import serving

    with serving.serve_in_thread(hardened_app) as url:
        limit = hardened_app.state.guard.max_header_bytes
        assert limit == 64 * 1024  # the default
        with connect(url) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * limit)
            head, body = _one_answer(s)
            assert s.recv(4096) == b""  # closed after the answer
        assert head.startswith(b"HTTP/1.1 431") and b"content-type: application/json" in head.lower(), head
        assert "max_header_bytes=65536" in json.loads(body)["error"]


def test_complete_headers_past_the_bound_in_one_read_get_431(hardened_app) -> None:
    """The read that ends the headers counts too: a 70 KB header sent whole was let through (only reads of
    headers still arriving were counted)."""
    from floranet import serving

    with serving.serve_in_thread(hardened_app) as url:
        for size, status in ((60_000, b"200"), (70_000, b"431")):
            with connect(url) as s:
                s.sendall(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {'a' * size}\r\n\r\n".encode())
                head, body = _one_answer(s)
            assert head.startswith(b"HTTP/1.1 " + status) and b"content-type: application/json" in head.lower(), head
        assert "max_header_bytes=65536" in json.loads(body)["error"]


def test_a_flood_of_oversized_headers_is_logged_as_a_count_not_a_line_each(hardened_app, caplog) -> None:
    """Each 431 wrote its own warning line, so a client sending oversized headers in a loop filled the server's log
    as refused connections once did; it is now one line, then a count per interval, as for those."""
    from floranet import serving

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if "headers passed" in r.getMessage()]

    with serving.serve_in_thread(hardened_app) as url, caplog.at_level("INFO"):
        hardened_app.state.guard.refusal_log_s = 0.5  # the count comes within the test (10 s by default)
        for _ in range(20):
            with connect(url) as s:
                s.sendall(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {'a' * 70_000}\r\n\r\n".encode())
                assert _one_answer(s)[0].startswith(b"HTTP/1.1 431")
        deadline = time.monotonic() + 5
        while not any(" more " in m for m in said()) and time.monotonic() < deadline:
            time.sleep(0.1)
    assert said()[0] == "refused a request from 127.0.0.1: its headers passed 65536 bytes", said()
    assert "refused 19 more requests from 127.0.0.1 in the last 0.5 s" in said()[1] and len(said()) == 2, said()


def test_headers_under_the_bound_are_counted_per_request_and_bodies_not_at_all(hardened_app) -> None:
    from floranet import serving

    with serving.serve_in_thread(hardened_app) as url, connect(url) as s:
        for close in ("", "Connection: close\r\n"):  # two 40 KiB headers on one connection: 80 KiB in all
            s.sendall(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n{close}X-Big: {'a' * 40_000}\r\n\r\n".encode())
            head, body = _one_answer(s)
            assert head.startswith(b"HTTP/1.1 200") and json.loads(body)["status"] == "ok", head
    with serving.serve_in_thread(hardened_app) as url, connect(url) as s:
        junk = b"x" * 200_000  # sent with its headers in one piece: the body is not a header's bytes
        s.sendall(
            f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: image/jpeg\r\nContent-Length: {len(junk)}\r\n\r\n".encode()
            + junk
        )
        head, _ = _one_answer(s)
        assert head.startswith(b"HTTP/1.1 415"), head


def test_postscript_upload_gets_415_without_tool_output(hardened_app) -> None:
    from fastapi.testclient import TestClient

    with TestClient(hardened_app, base_url="http://127.0.0.1") as c:
        r = c.post("/predict", content=EPS, headers={"content-type": "image/jpeg", "authorization": f"Bearer {KEY}"})
    assert r.status_code == 415 and "not a supported image" in r.json()["error"]
    assert "ghostscript" not in r.text.lower() and "/tmp" not in r.text


def test_api_key_and_host_rules(hardened_app) -> None:
    from fastapi.testclient import TestClient

    rose = _rose()
    with TestClient(hardened_app, base_url="http://127.0.0.1") as c:
        assert c.post("/predict", content=rose).status_code == 401
        assert c.post("/predict", content=rose, headers={"x-api-key": "wrong-key-wrong-key"}).status_code == 401
        assert c.post("/predict", content=rose, headers={"authorization": f"Bearer {KEY}"}).status_code == 200
        assert c.post("/predict", content=rose, headers={"x-api-key": KEY}).status_code == 200
        assert c.get("/health").status_code == 200 and c.get("/").status_code == 200  # open: probes and the page
        assert c.get("/classes").status_code == 401
        rebinding = c.get("/health", headers={"host": "attacker.example:8000"})
        assert rebinding.status_code == 421


def test_a_full_queue_answers_before_reading_the_body(tiny_run) -> None:
    from floranet import serving

    app = serving.create_app(tiny_run, runtime="tensorflow", precision="fp32", max_batch=1)
    state = app.state.serve
    state.pending = state.max_pending  # as if every slot were taken
    with serving.serve_in_thread(app) as url:
        with connect(url) as s:
            # Declares 10 MB and sends none of it: a server that read first would wait for the body.
            s.sendall(
                b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                b"Content-Length: 10000000\r\n\r\n"
            )
            start = time.perf_counter()
            head = s.recv(4096)
        assert head.startswith(b"HTTP/1.1 503") and time.perf_counter() - start < 2.0


def test_run_server_off_loopback_needs_a_key() -> None:
    from floranet.serving import access_settings

    with pytest.raises(ConfigError, match="--api-key"):
        access_settings("0.0.0.0")
    assert access_settings("0.0.0.0", insecure_no_auth=True) == {"api_key": None, "allowed_hosts": ("*",)}
    assert access_settings("0.0.0.0", api_key=KEY)["api_key"] == KEY
    assert access_settings("127.0.0.1")["allowed_hosts"] == ("localhost", "127.0.0.1", "::1", "127.0.0.1")


def test_allowed_hosts_with_a_port_are_refused_at_start() -> None:
    """The Host header's port is dropped before the compare and an entry's was not: --allowed-hosts
    example.com:8443 started, then answered every request 421."""
    from floranet.config import ServeConfig

    for bad in ("example.com:8443", "[::1]:8000", "10.0.0.2:80"):
        with pytest.raises(ConfigError, match="without a port"):
            ServeConfig(allowed_hosts=("localhost", bad))
    assert ServeConfig(allowed_hosts=("::1", "[::1]", "example.com", "*")).allowed_hosts[:2] == ("::1", "[::1]")


def test_an_api_key_is_printable_ascii() -> None:
    """A browser cannot send other characters in a header as the server's UTF-8 (the page could never log in)."""
    from floranet.config import ServeConfig

    assert ServeConfig(api_key="q3+Zk9/xY2+bW8rT1vLm=").api_key == "q3+Zk9/xY2+bW8rT1vLm="  # base64 is fine
    for bad in ("short", "sixteen chars with spaces", "schl\u00fcssel-0123456789", "key\u2603-0123456789abc"):
        with pytest.raises(ConfigError, match="16 printable ASCII characters") as e:
            ServeConfig(api_key=bad)
        assert bad not in str(e.value)  # the key itself is never echoed


@pytest.mark.parametrize(
    ("name", "value", "interval"),
    [
        ("max_wait_ms", float("inf"), r"\[0, 10,000\]"),
        ("max_wait_ms", 1e9, r"\[0, 10,000\]"),
        ("request_timeout_s", float("nan"), r"\(0, 3,600\]"),
        ("decode_timeout_s", 1e6, r"\(0, 600\]"),
        ("header_timeout_s", float("inf"), r"\(0, 600\]"),
    ],
)
def test_endless_waits_of_the_server_are_refused(name, value, interval) -> None:
    """serve --max-wait-ms inf (or 1e9) was accepted: every request then waited for a batch that never filled, and
    so did shutdown; the timeouts had the same gap."""
    from floranet.config import ServeConfig

    with pytest.raises(ConfigError, match=rf"{name} must be a number in {interval}. Received: {name}={value!r}"):
        ServeConfig(**{name: value})
    assert ServeConfig(max_wait_ms=10_000, request_timeout_s=3600, decode_timeout_s=0.5).max_wait_ms == 10_000


def test_gradcam_keeps_only_a_shrunk_photo(hardened_app) -> None:
    from floranet.serving.state import decode_sync as _decode

    big = io.BytesIO()
    Image.new("RGB", (2000, 1500), (200, 30, 30)).save(big, format="JPEG")
    photo, pixels, _ = _decode(big.getvalue(), "big.jpg", hardened_app.state.serve, True)
    assert photo is not None and max(photo.shape[:2]) <= 384 and pixels.shape == (32, 32, 3)
    assert _decode(big.getvalue(), "big.jpg", hardened_app.state.serve, False)[0] is None


def test_a_tracking_failure_after_training_keeps_the_run_and_says_how_to_log_it(tmp_path, monkeypatch, capsys) -> None:
    """A tracking server that was down turned a finished `train --mlflow` into a traceback and exit 1, and no
    command could log the run again (--resume: 'nothing to resume'; without it: 'already holds a run')."""
    import types

    from floranet.cli import main

    calls: list[str] = []

    def down(*args, **kwargs):
        calls.append("get_experiment_by_name")
        raise ConnectionError("Connection refused")

    stub = types.ModuleType("mlflow")  # mlflow itself is an optional extra, not installed for the tests
    stub.set_tracking_uri = lambda uri: calls.append(uri)
    stub.is_tracking_uri_set = lambda: False
    stub.get_experiment_by_name = down
    stub.active_run = lambda: None
    monkeypatch.setitem(sys.modules, "mlflow", stub)
    data = make_image_folder(tmp_path / "data", classes=2, per_class=4)
    run = tmp_path / "run"
    tiny = ["--backbone", "resnet20", "--weights", "none", "--image-size", "32", "--epochs", "1"]
    with error_server(500) as (url, _):  # answers (checked before training), then MLflow's requests fail
        code = main(["train", str(data), "--out", str(run), *tiny, "--fine-tune-epochs", "0", "--mlflow", url])
        out, err = capsys.readouterr()
        assert code == 1 and f"Run directory: {run}" in out
        assert "logging to MLflow failed (ConnectionError: Connection refused); the run is complete" in err
        assert f"floranet track {run} --mlflow {url}" in err
        assert (run / "model.keras").exists() and json.loads((run / "metrics.json").read_text())["accuracy"] >= 0
        assert main(["track", str(run), "--mlflow", url]) == 1  # still down: said, not a traceback
        assert "floranet track: logging to MLflow failed (ConnectionError" in capsys.readouterr().err
    assert calls == [url, "get_experiment_by_name", None] * 2  # the caller's tracking URI (none) is put back


def test_a_capped_read_sets_aside_what_the_file_holds_not_the_cap(tmp_path) -> None:
    """read(limit + 1) reserved the whole cap for every file: 400 MB for a 1 KB photo at the default max_pixels
    (per decoding thread), a MemoryError at a larger one and an OverflowError past the index size."""
    import tracemalloc

    from floranet.utils.files import read_capped

    small = tmp_path / "small.jpg"
    small.write_bytes(b"x" * 1000)
    tracemalloc.start()
    try:
        assert read_capped(small, 400 << 20) == b"x" * 1000
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak
    assert read_capped(small, 10**20) == b"x" * 1000
    with pytest.raises(OSError, match="file too large: 1,000 bytes, over the limit of 999"):
        read_capped(small, 999)


def test_a_bad_split_file_is_said_before_the_doctor_reads_every_image(tmp_path, monkeypatch, capsys) -> None:
    """--split-file (and the curation lists) were read only after the doctor had decoded the whole data set."""
    from floranet.cli import main
    from floranet.training import data as training_data

    def no_scan(*args, **kwargs):
        raise AssertionError("the doctor ran before the split file was read")

    monkeypatch.setattr(training_data.doctor, "diagnose", no_scan)
    data = make_image_folder(tmp_path / "data", classes=2, per_class=3)
    bad = tmp_path / "split.csv"
    bad.write_text("path,label,split,sha256\n../../etc/passwd,a,train,\n")
    tiny = ["--backbone", "resnet20", "--weights", "none", "--image-size", "32", "--epochs", "1"]
    assert main(["train", str(data), "--out", str(tmp_path / "run"), *tiny, "--split-file", str(bad)]) == 2
    assert "line 2: path must be relative to the dataset folder" in capsys.readouterr().err


def test_a_project_folder_with_a_settings_file_is_not_taken_for_a_run(tmp_path, capsys) -> None:
    """A config.yaml with data_dir was all it took to be 'a floranet run': `train --out myproj --config
    myproj/config.yaml` replaced the user's hand-written config.yaml and their README.md with the model card."""
    from floranet.cli import main

    data = make_image_folder(tmp_path / "data", classes=2, per_class=3)
    project = tmp_path / "myproj"
    project.mkdir()
    settings = f"# my settings\ndata_dir: {data}\nbackbone: resnet20\nweights: none\nimage_size: 32\nepochs: 1\n"
    (project / "config.yaml").write_text(settings)
    (project / "README.md").write_text("# My project notes\n")
    before = {p.name: p.read_bytes() for p in project.iterdir()}
    code = main(["train", str(data), "--out", str(project), "--config", str(project / "config.yaml")])
    assert code == 2 and "not empty and not a floranet run" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in project.iterdir()} == before
    # A real run's folder is still one: the same command into it is told to --resume.
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), "--config", str(project / "config.yaml")]) == 0
    assert main(["train", str(data), "--out", str(run), "--config", str(project / "config.yaml")]) == 2
    assert "already holds a run. Use --resume" in capsys.readouterr().err


def test_every_decode_of_a_run_keeps_its_max_pixels(tmp_path, monkeypatch) -> None:
    """The sample grid, the audit's thumbnails and the compiled model's check images were decoded at the default
    limit: a run trained with a larger --max-pixels got empty pictures and a compiled model checked on nothing."""
    from types import SimpleNamespace

    from floranet.data import decode
    from floranet.data.split import SplitRow
    from floranet.evaluation import audit_report
    from floranet.inference import compiled
    from floranet.rundir import RunDir
    from floranet.training import data as run_data

    photo = tmp_path / "a" / "0.jpg"
    photo.parent.mkdir()
    Image.new("RGB", (40, 30), "red").save(photo)  # 1,200 pixels
    assert compiled.check_pixels([photo], (16, 16), max_pixels=1000).shape[0] == 0
    assert compiled.check_pixels([photo], (16, 16), max_pixels=1200).shape == (1, 16, 16, 3)

    limits: list[int] = []
    real = decode.decode_and_resize
    monkeypatch.setattr(
        decode, "decode_and_resize", lambda p, s, *, max_pixels: limits.append(max_pixels) or real(p, s)
    )
    run = RunDir(tmp_path / "run")
    row = SplitRow("a/0.jpg", "a", "train", "")
    config = SimpleNamespace(seed=0, image_size=(16, 16), max_pixels=77_000_000)
    prepared = SimpleNamespace(
        split=SimpleNamespace(train=lambda: [row]), abs_path=lambda p: tmp_path / p, config=config
    )
    run_data._sample_grid(prepared, run)
    finding = SimpleNamespace(file="a/0.jpg", kind="outlier", score=1.0, given_label="a", suggested_label="")
    result = SimpleNamespace(of_kind=lambda *kinds: [finding])
    audit_report._gallery(result, tmp_path, "outlier", 1, tmp_path / "g.png", 77_000_000)
    assert limits == [77_000_000, 77_000_000]


@pytest.mark.parametrize("n", [3, 12, 20])
def test_a_confusion_matrix_s_long_class_names_never_cover_the_other_panel(tmp_path, monkeypatch, n) -> None:
    """The figure was 2 * size + 1 inches wide whatever the names: with 17-20 character names the right panel's class
    names covered the left panel's last column of counts."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from floranet.evaluation import plots

    figures = []
    real = plots.save_figure
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig) or real(fig, path))
    names = [f"{['Taraxacum', 'Helianthus', 'Tulipa'][i % 3]} annuus {i:02d}" for i in range(n)]  # 16-20 characters
    plots.confusion_matrix_plot(np.eye(n, dtype=int) * 3 + 1, names, tmp_path / "cm.png")
    canvas = FigureCanvasAgg(figures[0])
    canvas.draw()
    renderer = canvas.get_renderer()
    axes = figures[0].axes[:2]

    def texts(ax):  # everything an axes writes outside its matrix
        return [*ax.get_xticklabels(), *ax.get_yticklabels(), ax.xaxis.label, ax.yaxis.label, ax.title]

    for a in axes:
        for b in axes:
            if a is b:
                continue
            others = [b.get_window_extent(renderer)] + [t.get_window_extent(renderer) for t in texts(b)]
            for t in texts(a):
                box = t.get_window_extent(renderer)
                assert not any(box.overlaps(o) for o in others), (n, t.get_text())
