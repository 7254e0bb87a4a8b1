"""Prediction: same probabilities as the model on the same pixels, odd formats, bad files in rows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from corpus import raw_png
from floranet import inference as predict
from floranet.cli import main
from floranet.data import inputs as input_lib
from floranet.data.images import load_image
from floranet.errors import ConfigError, OutputError
from floranet.inference import batch, formats


def _write_cases(folder: Path) -> dict[str, Path]:
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 255, (30, 44, 3), dtype=np.uint8)
    rgb[:10, :10] = (255, 0, 0)  # a red corner to see rotation
    cases = {}
    cases["jpeg"] = folder / "plain.jpg"
    Image.fromarray(rgb).save(cases["jpeg"], quality=92)
    cases["exif_rotated"] = folder / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    Image.fromarray(rgb).save(cases["exif_rotated"], quality=92, exif=exif)
    cases["cmyk"] = folder / "cmyk.jpg"
    Image.fromarray(rgb).convert("CMYK").save(cases["cmyk"], quality=92)
    cases["rgba_png"] = folder / "alpha.png"
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(cases["rgba_png"])
    cases["grayscale"] = folder / "gray.png"
    Image.fromarray(rgb[..., 0], "L").save(cases["grayscale"])
    return cases


@pytest.mark.parametrize("case", ["jpeg", "exif_rotated", "cmyk", "rgba_png", "grayscale"])
def test_predict_equals_model_on_the_same_pixels(case, tiny_run, tmp_path) -> None:
    path = _write_cases(tmp_path)[case]
    predictor = predict.load(tiny_run)
    row = predictor.predict([path], top_k=3)[0]
    assert row.error is None, row.error
    pixels = load_image(path)  # upright RGB, as a person sees the photo
    if case == "exif_rotated":
        assert pixels.shape[:2] == (44, 30) and tuple(pixels[0, -1]) > (200, 0, 0)[:1]
    resized = tf.image.resize(pixels.astype("float32"), predictor.image_size).numpy()
    model = keras.saving.load_model(tiny_run / "model.keras")
    expected = model.predict(resized[None], verbose=0)[0]
    got = dict(row.top_k)
    for i, name in enumerate(predictor.class_names):
        assert got[name] == pytest.approx(float(expected[i]), abs=2e-5)


def test_bad_files_are_reported_in_their_row_and_never_stop_the_batch(tiny_run, tmp_path) -> None:
    cases = _write_cases(tmp_path)
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    good = cases["jpeg"].read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(good[: len(good) // 2])
    # A header declaring 100000 x 100000 pixels: Pillow's bomb error escaped the batch's routing (no rows at all).
    (tmp_path / "bomb.png").write_bytes(raw_png(100_000, 100_000, 8, 2, b"\0" * 64))
    rows = predict.load(tiny_run).predict([tmp_path, tmp_path / "nothing-here.jpg"], top_k=2)
    by_name = {Path(r.file).name: r for r in rows}
    assert "too large: 100000x100000" in (by_name["bomb.png"].error or "")
    on_tf = predict.load(tiny_run, runtime="tensorflow").predict([tmp_path], top_k=2)  # tf.data's routing
    assert [r.file for r in on_tf] == [r.file for r in rows[:-1]]
    assert [bool(r.error) for r in on_tf] == [bool(r.error) for r in rows[:-1]]
    assert by_name["empty.jpg"].error and "empty" in by_name["empty.jpg"].error
    assert by_name["text.jpg"].error and by_name["truncated.jpg"].error
    assert by_name["nothing-here.jpg"].error
    assert all(
        by_name[n].error is None and len(by_name[n].top_k) == 2
        for n in ("plain.jpg", "rotated.jpg", "cmyk.jpg", "alpha.png", "gray.png")
    )


def test_a_too_large_image_names_the_runs_config_yaml_as_where_its_limit_lives(tiny_run, tmp_path) -> None:
    """predict told its user to "raise max_pixels", which predict has no flag for: the limit is the run's
    max_pixels in config.yaml. Every path says so (a few files, a folder's pipeline, bytes); the decoder's own
    hint, for training and the doctor that have --max-pixels, stays."""
    from floranet.errors import DatasetError

    hint = "; raise max_pixels in the run's config.yaml to accept it"
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(raw_png(100_000, 100_000, 8, 2, b"\0" * 64))
    many = [bomb, *_write_cases(tmp_path).values()]  # more than batch.SMALL_JOB: the pipeline's path
    for runtime in ("auto", "tensorflow"):
        predictor = predict.load(tiny_run, runtime=runtime)
        for files in ([bomb], many):
            error = predictor.predict(files)[0].error or ""
            assert "too large: 100000x100000" in error and error.endswith(hint), (runtime, len(files), error)
    with pytest.raises(DatasetError, match="raise max_pixels in the run's config.yaml"):
        predict.load(tiny_run).predict_bytes(bomb.read_bytes())
    with pytest.raises(DatasetError, match="raise max_pixels to accept it"):
        load_image(bomb)


def test_rows_come_in_the_order_of_the_inputs_missing_ones_included(tiny_run, tmp_path) -> None:
    """An input that names no image gets its error row where it stood, not after every found image."""
    (tmp_path / "imgs").mkdir()
    cases = _write_cases(tmp_path / "imgs")
    (tmp_path / "empty").mkdir()
    inputs = [
        tmp_path / "typo.jpg",
        cases["jpeg"],
        tmp_path / "empty",
        tmp_path / "imgs" / "*.png",
        str(tmp_path / "none-*.jpg"),
        cases["cmyk"],
        tmp_path / "last-typo.jpg",
    ]
    rows = predict.load(tiny_run).predict(inputs, top_k=1)
    pngs = sorted(str(p) for p in (tmp_path / "imgs").glob("*.png"))
    assert len(pngs) >= 2
    expected = [str(inputs[0]), str(cases["jpeg"]), str(inputs[2]), *pngs, str(inputs[4]), str(cases["cmyk"])]
    assert [r.file for r in rows] == [*expected, str(inputs[6])]
    assert [r.error == input_lib.NO_IMAGE for r in rows] == [
        True, False, True, *[False] * len(pngs), True, False, True
    ]  # fmt: skip
    files, missing = input_lib.expand_inputs(inputs)
    assert [(m.position, m.input) for m in missing] == [
        (0, str(inputs[0])), (1, str(inputs[2])), (1 + len(pngs), str(inputs[4])), (2 + len(pngs), str(inputs[6]))
    ]  # fmt: skip
    assert len(files) == 2 + len(pngs)


def test_folders_follow_symlinks_once_and_skip_fifos(tmp_path) -> None:
    """A FIFO in an input folder blocked predict forever; images behind a symlinked folder were skipped (the doctor
    and train follow such links); ``**`` through a link loop named one file at every depth."""
    import os

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Image.new("RGB", (8, 8)).save(elsewhere / "linked.jpg")
    top = tmp_path / "top"
    top.mkdir()
    Image.new("RGB", (8, 8)).save(top / "own.jpg")
    (top / "sub").symlink_to(elsewhere, target_is_directory=True)
    (top / "self").symlink_to(top, target_is_directory=True)  # a loop
    os.mkfifo(top / "pipe.jpg")
    files, missing = input_lib.expand_inputs([top])
    assert [p.relative_to(top).as_posix() for p in files] == ["own.jpg", "sub/linked.jpg"] and not missing
    only_linked = tmp_path / "only"
    only_linked.mkdir()
    (only_linked / "sub").symlink_to(elsewhere, target_is_directory=True)
    assert input_lib.expand_inputs([only_linked])[0] == [only_linked / "sub" / "linked.jpg"]
    files, _ = input_lib.expand_inputs([str(top / "**" / "*.jpg")])
    assert sorted(p.name for p in files) == ["linked.jpg", "own.jpg"]
    # Two links in a loop doubled Python's glob's paths at every level: it never ended, its memory grew.
    (top / "again").symlink_to(top, target_is_directory=True)
    for pattern in ("**/*.jpg", "**", "t*/**/o*.jpg"):
        files, _ = input_lib.expand_inputs(
            [str(top / pattern) if not pattern.startswith("t") else str(tmp_path / pattern)]
        )
        assert sorted(p.name for p in files) == ["linked.jpg", "own.jpg"][pattern.startswith("t") :], pattern
    assert input_lib.expand_inputs([""]) == ([], [input_lib.Unmatched(0, "")])  # not the working folder


def test_a_folder_names_each_file_once_as_a_pattern_does(tmp_path) -> None:
    """A link to an image of the same folder was a second row when the folder was given (``predict run in``: 7 rows)
    but not when a pattern matched it (``'in/*'``: 6 rows), although a folder a pattern matches is walked as a
    folder argument is. One input names each file once; a file given as two inputs keeps both rows."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.jpg", "b.jpg"):
        Image.new("RGB", (8, 8)).save(folder / name)
    (folder / "link.jpg").symlink_to("a.jpg")
    (folder / "zlink.jpg").symlink_to(folder / "b.jpg")
    want = ["a.jpg", "b.jpg"]
    for given in (folder, str(folder / "*"), str(folder / "*.jpg"), str(tmp_path / "*")):
        files, missing = input_lib.expand_inputs([given])
        assert [p.name for p in files] == want and not missing, given
    files, _ = input_lib.expand_inputs([folder / "a.jpg", folder / "link.jpg", folder])
    assert [p.name for p in files] == ["a.jpg", "link.jpg", *want]  # as given: every input its rows


def test_a_fifo_or_device_given_by_name_is_said_to_be_no_regular_file(tiny_run, tmp_path) -> None:
    """An explicit FIFO, or a link to /dev/zero, named .jpg got "no image: no such file, or a folder or pattern with
    no images in it", though it exists."""
    import os

    os.mkfifo(tmp_path / "fifo.jpg")
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    given = [str(tmp_path / "fifo.jpg"), str(tmp_path / "zero.jpg"), str(tmp_path / "gone.jpg")]
    rows = predict.load(tiny_run).predict(given)
    assert [r.file for r in rows] == given
    assert ["not a regular file" in (r.error or "") for r in rows] == [True, True, False]
    assert rows[2].error == input_lib.NO_IMAGE


def test_a_jpeg_damaged_mid_file_is_an_error_row_on_every_path_as_the_doctor_says(tiny_run, tmp_path) -> None:
    """A JPEG cut in the middle but ended by an end-of-image marker is bad for the doctor (train and evaluate leave
    it out), but predict answered it from grey pixels: Pillow and tf decode it without a word. Every path now
    refuses it with the doctor's reason: a few files (Pillow), many (tf.data's guessed routing, or Pillow's
    threads for the compiled model), and bytes (serve)."""
    from floranet.errors import DatasetError

    damaged = tmp_path / "damaged.jpg"
    Image.fromarray(np.random.default_rng(7).integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(damaged)
    data = damaged.read_bytes()
    damaged.write_bytes(data[: len(data) // 2] + b"\xff\xd9")
    with Image.open(damaged) as im:
        im.load()  # what the decoders saw: nothing wrong
    reason = "is corrupt JPEG data: premature end of data segment (its pixels past the damage are grey or garbage)"
    many = [damaged, *_write_cases(tmp_path).values()]  # more than batch.SMALL_JOB: the pipeline's path
    for runtime in ("auto", "tensorflow"):
        predictor = predict.load(tiny_run, runtime=runtime)
        for files in ([damaged], many):
            rows = predictor.predict(files)
            assert reason in (rows[0].error or ""), (runtime, len(files), rows[0])
            assert all(r.error is None for r in rows[1:]), (runtime, rows)
    with pytest.raises(DatasetError, match=re.escape(reason)):
        predict.load(tiny_run).predict_bytes(damaged.read_bytes())


def test_a_file_larger_than_any_image_of_max_pixels_is_refused_unread_on_every_runtime(tiny_run, tmp_path) -> None:
    """With --runtime tensorflow and more than 4 files, a 1.3 KB JPEG padded (sparse) to 1.5 GB was read whole (the
    tf_decodable guess, then tf.io.read_file): 2.2 GB of memory, and it was predicted, where Pillow's path refuses
    a file larger than any image of max_pixels can be."""
    import os
    import tracemalloc

    from floranet.data.images import max_file_bytes
    from floranet.rundir import RunDir

    for i in range(5):
        Image.new("RGB", (16, 16), (40 * i, 90, 200)).save(tmp_path / f"img_{i}.jpg")
    huge = tmp_path / "huge.jpg"
    Image.new("RGB", (16, 16)).save(huge)
    os.truncate(huge, max_file_bytes(RunDir.open(tiny_run).max_pixels()) + 1)  # sparse: no disk used
    for runtime in ("tensorflow", "openvino"):
        predictor = predict.load(tiny_run, runtime=runtime)
        tracemalloc.start()
        try:
            rows = predictor.predict([tmp_path])
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert [r.file for r in rows][0] == str(huge) and all(r.error is None for r in rows[1:]), runtime
        assert "is too large: file too large" in (rows[0].error or "") and "max_pixels" in (rows[0].error or "")
        assert peak < 64 << 20, (runtime, peak)  # the file was never read into memory


def test_folders_skip_the_system_entries_the_doctor_skips(tmp_path) -> None:
    """predict walked a NAS's @eaDir thumbnails and macOS's __MACOSX copies that doctor, train and evaluate
    ignore: each photo was predicted two or three times."""
    top = tmp_path / "nas"
    for name in ("daisy/img0.jpg", "daisy/@eaDir/img0.jpg/SYNOFILE_THUMB_M.jpg", "__MACOSX/daisy/img0.jpg"):
        (top / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(top / name)
    for given in (top, top / "**" / "*.jpg"):
        files, missing = input_lib.expand_inputs([given])
        assert [p.relative_to(top).as_posix() for p in files] == ["daisy/img0.jpg"] and not missing, given


def test_a_pattern_that_matches_folders_walks_them(tmp_path) -> None:
    """``predict run 'data/*'`` answered "no image" for a data folder of class folders: a pattern kept only the
    files it matched. Its folders are walked now, as a folder argument is, each file once."""
    data = tmp_path / "data"
    for name in ("roses/r.jpg", "tulips/sub/t.png", "__MACOSX/roses/r.jpg", "top.jpg"):
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(data / name)
    (data / "notes.txt").write_text("not an image")
    files, missing = input_lib.expand_inputs([str(data / "*")])
    assert [p.relative_to(data).as_posix() for p in files] == ["roses/r.jpg", "top.jpg", "tulips/sub/t.png"]
    assert not missing
    files, _ = input_lib.expand_inputs([str(data / "**")])  # every folder matched: each file still once
    assert sorted(p.relative_to(data).as_posix() for p in files) == ["roses/r.jpg", "top.jpg", "tulips/sub/t.png"]
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert input_lib.expand_inputs([str(tmp_path / "empty" / "*")]) == (
        [], [input_lib.Unmatched(0, str(tmp_path / "empty" / "*"))]
    )  # fmt: skip


def test_python_api_arguments_are_checked_by_name(tiny_run, tmp_path) -> None:
    """From Python: top_k=0 silently gave one class, 'x' a ValueError; a path given to predict_files was read
    letter by letter; a setting beside a config was ignored; calibrated='no' turned calibration on."""
    from floranet.config import InferenceConfig

    image = tmp_path / "x.jpg"
    Image.new("RGB", (8, 8)).save(image)
    p = predict.load(tiny_run, runtime="tensorflow")
    for k in (0, -2, True, "2", 2.7):
        with pytest.raises(ConfigError, match=f"top_k must be a positive int. Received: top_k={k!r}"):
            p.predict([image], top_k=k)
    with pytest.raises(ConfigError, match="top_k must be a positive int"):
        p.predict_bytes(image.read_bytes(), top_k=0)
    with pytest.raises(ConfigError, match="files must be a list of image files"):
        p.predict_files(str(image))
    with pytest.raises(ConfigError, match="data must be the encoded image's bytes"):
        p.predict_bytes(None)  # type: ignore[arg-type]
    assert p.predict_bytes(bytearray(image.read_bytes()), top_k=2).top_k[0][0] in ("daisy", "roses", "tulips")
    with pytest.raises(ConfigError, match="config must be an InferenceConfig"):
        predict.load(tiny_run, "x")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="give config or settings, not both"):
        predict.load(tiny_run, InferenceConfig(), top_k=1)
    with pytest.raises(ConfigError, match="Unknown settings: bogus"):
        predict.load(tiny_run, bogus=1)
    for name in ("calibrated", "safe_mode", "unknown"):
        with pytest.raises(ConfigError, match=f"{name} must be True or False. Received: {name}='no'"):
            InferenceConfig(**{name: "no"})


def test_python_api_arguments_of_the_wrong_type_are_named(tiny_run, tmp_path) -> None:
    """predict(os.fsencode(path)) iterated the bytes ("not int"); None, 3, [None], [b"..."], an array or a PIL image
    gave pathlib's TypeError; load(None) / load(b"/run") too; probabilities() on pixels of another size OpenVINO's
    multi-line RuntimeError. Each is a ConfigError naming the argument and echoing it."""
    import os

    image = _write_cases(tmp_path)["jpeg"]
    p = predict.load(tiny_run)
    path_type = r"inputs must be a path or a list of paths \(str or os.PathLike; decode a bytes path with os.fsdecode\)"
    for bad, echo in [
        (os.fsencode(image), "Received: inputs=b'"),
        (None, "Received: inputs=None"),
        (3, "Received: inputs=3"),
        ([None], r"Received: inputs\[0\]=None"),
        ([image, os.fsencode(image)], r"Received: inputs\[1\]=b'"),
        ([Image.open(image)], r"Received: inputs\[0\]=<PIL"),
        (
            np.zeros((2, 32, 32, 3)),
            r"; pixels go to Predictor.probabilities. Received: inputs=an array of shape \(2, 32",
        ),
    ]:
        with pytest.raises(ConfigError, match=f"{path_type}(. )?{echo}"):
            p.predict(bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"files must be a list of paths .*Received: files\[0\]=None"):
        p.predict_files([None])  # type: ignore[list-item]
    assert p.predict((str(image), image))[1].error is None  # a tuple, str and PathLike: as before
    for bad in (None, os.fsencode(tiny_run)):
        with pytest.raises(ConfigError, match=f"run_dir must be a path to a run directory .*Received: run_dir={bad!r}"):
            predict.load(bad)  # type: ignore[arg-type]
    for pixels, shape in [
        (np.zeros((1, 48, 48, 3), np.float32), "(1, 48, 48, 3) and dtype float32"),
        (np.zeros((32, 32, 3), np.float32), "(32, 32, 3) and dtype float32"),
        (np.zeros((0, 32, 32, 3), np.float32), "(0, 32, 32, 3) and dtype float32"),
        (np.full((1, 32, 32, 3), "x"), "(1, 32, 32, 3) and dtype <U1"),
    ]:
        for call in (p.probabilities, p.outputs):
            with pytest.raises(ConfigError, match=rf"pixels must be an array \[B, 32, 32, 3\] .*{re.escape(shape)}"):
                call(pixels)
    as_float = p.probabilities(np.full((1, 32, 32, 3), 100, np.float32))
    np.testing.assert_array_equal(p.probabilities(np.full((1, 32, 32, 3), 100, np.uint8)), as_float)


def test_cli_predict_json_csv_and_table(tiny_run, tmp_path, capsys) -> None:
    cases = _write_cases(tmp_path)
    out = tmp_path / "preds.json"
    assert main(["predict", str(tiny_run), str(tmp_path / "*.jpg"), "--format", "json", "--output", str(out)]) == 0
    assert f"3 row(s) written to {out}: 3 predicted\n" in capsys.readouterr().out
    rows = json.loads(out.read_text())
    assert {Path(r["file"]).name for r in rows} == {"plain.jpg", "rotated.jpg", "cmyk.jpg"}
    for r in rows:
        assert set(r) == {"file", "top_k", "low_confidence", "unknown", "ood_score", "error"} and r["error"] is None
        assert isinstance(r["unknown"], bool) and isinstance(r["ood_score"], float)
        assert [set(t) for t in r["top_k"]] == [{"class", "probability"}] * 3
        assert r["top_k"][0]["probability"] >= r["top_k"][1]["probability"]
    assert main(["predict", str(tiny_run), str(cases["jpeg"]), "--format", "csv", "--top-k", "2"]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0] == "file,class_1,probability_1,class_2,probability_2,low_confidence,unknown,ood_score,error"
    assert main(["predict", str(tiny_run), str(cases["jpeg"])]) == 0
    assert "plain.jpg" in capsys.readouterr().out


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_a_file_of_failed_rows_has_the_columns_of_any_other(tiny_run, tmp_path, capsys, engine) -> None:
    """The class columns followed the rows: failed rows only gave one class column where --top-k 2 gave two, so
    pa.concat_tables refused the pair. Now min(--top-k, the run's 3 classes), whatever the rows hold."""
    if engine == "ray":
        pytest.importorskip("ray")  # no image to predict: Ray itself never starts
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    cases = _write_cases(tmp_path)
    flags = ["--engine", engine, "--top-k"]
    good, failed = tmp_path / "good.parquet", tmp_path / "failed.parquet"
    if engine == "local":
        assert main(["predict", str(tiny_run), str(cases["jpeg"]), *flags, "2", "--output", str(good)]) == 0
    assert main(["predict", str(tiny_run), str(tmp_path / "gone.jpg"), *flags, "2", "--output", str(failed)]) == 1
    if engine == "local":
        assert pa.concat_tables([pq.read_table(good), pq.read_table(failed)]).num_rows == 2
    assert "class_2" in pq.read_schema(failed).names and "class_3" not in pq.read_schema(failed).names
    capsys.readouterr()
    assert main(["predict", str(tiny_run), str(tmp_path / "gone.jpg"), *flags, "5", "--format", "csv"]) == 1
    header = capsys.readouterr().out.splitlines()[0]
    assert header.startswith("file,class_1,probability_1,class_2,probability_2,class_3,probability_3,low_conf")


def test_predict_never_writes_over_a_photo_and_says_when_a_folder_is_empty(tiny_run, tmp_path, capsys) -> None:
    import os

    cases = _write_cases(tmp_path)
    photo = cases["jpeg"]
    before = photo.read_bytes()
    for output in (photo, tmp_path / "new.png"):  # an input, or any image's name
        assert main(["predict", str(tiny_run), str(tmp_path), "--output", str(output)]) == 2
        assert "not an image or one of the inputs" in capsys.readouterr().err
    assert photo.read_bytes() == before and not (tmp_path / "new.png").exists()
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(tiny_run), str(tmp_path / "empty")]) == 1  # nothing predicted: an error row
    assert "no image" in capsys.readouterr().out
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / os.fsdecode(b"\xff\xfe.jpg")).write_bytes(before)  # a name that is not UTF-8
    out = tmp_path / "odd.json"
    assert main(["predict", str(tiny_run), str(odd), "--output", str(out)]) == 0
    rows = json.loads(out.read_bytes().decode("utf-8"))  # strict UTF-8: the odd bytes are written as \xNN
    assert rows[0]["file"].endswith("\\xff\\xfe.jpg") and rows[0]["error"] is None


def test_an_error_names_a_file_that_is_not_utf8_with_its_bytes_as_in_the_file_column(tiny_run, tmp_path) -> None:
    """The error column named weird/bad\\xfe.jpg as 'weird/bad\\udcfe.jpg' (the repr of its surrogate escape), where
    the file column, the README and the table show the odd byte as \\xfe."""
    import os

    from floranet.utils.text import utf8

    odd = tmp_path / "weird"
    odd.mkdir()
    for name in (b"bad\xfe.jpg", b"bad\xfe\\z.png", b"back\\udcfe.jpg"):  # the last: a real backslash, then text
        (odd / os.fsdecode(name)).write_bytes(b"no")
    rows = predict.load(tiny_run).predict([odd])
    names = ("back\\udcfe.jpg", "bad\\xfe.jpg", "bad\\xfe\\z.png")
    assert [utf8(r.file) for r in rows] == [str(odd / n) for n in names]
    errors = [r.error or "" for r in rows]
    assert "'" + str(odd / "back\\\\udcfe.jpg") + "'" in errors[0]  # repr doubles the backslash, as before
    assert "'" + str(odd / "bad\\xfe.jpg") + "'" in errors[1] and "\\udc" not in errors[1]
    assert "'" + str(odd / "bad\\xfe\\\\z.png") + "'" in errors[2]


def test_predict_output_replaces_only_its_own_predictions(tiny_run, writable_run, tmp_path, capsys) -> None:
    """--output run/model.keras replaced the model with a table, and a user's notes.txt was replaced silently."""
    image = tmp_path / "x.jpg"
    Image.new("RGB", (8, 8)).save(image)
    model = (writable_run / "model.keras").read_bytes()
    assert main(["predict", str(writable_run), str(image), "--output", str(writable_run / "model.keras")]) == 2
    assert "outside the run directory" in capsys.readouterr().err
    assert (writable_run / "model.keras").read_bytes() == model
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    assert main(["predict", str(tiny_run), str(image), "--output", str(notes)]) == 2
    assert "not a floranet predictions file" in capsys.readouterr().err and notes.read_text() == "mine"
    for name in ("p.csv", "p.json", "p.parquet", "p.txt"):  # its own outputs are replaced on a rerun
        out = tmp_path / name
        for _ in range(2):
            assert main(["predict", str(tiny_run), str(image), "--output", str(out)]) == 0
        capsys.readouterr()
    table = (tmp_path / "p.txt").read_text().splitlines()
    assert table[0] == formats.TABLE_TITLE.strip() and table[1].startswith(str(image)) and len(table) == 2
    (tmp_path / "empty.json").write_text("[]\n")  # predictions of nothing
    assert formats.check_output(tmp_path / "empty.json", [image]) == tmp_path / "empty.json"
    (tmp_path / "other.csv").write_text("name,size\na,1\n")
    with pytest.raises(ConfigError, match="not a floranet predictions file"):
        formats.check_output(tmp_path / "other.csv", [image])


def test_predict_output_never_replaces_a_named_pipe_or_a_dangling_link(tmp_path) -> None:
    """Only a regular file was checked for being predictions: an --output that was a named pipe (or a link to
    nothing) passed, and the atomic rename would have replaced it with a file."""
    import os

    image = tmp_path / "x.jpg"
    Image.new("RGB", (8, 8)).save(image)
    fifo, link = tmp_path / "p.csv", tmp_path / "q.csv"
    os.mkfifo(fifo)
    link.symlink_to(tmp_path / "nowhere.csv")
    for out in (fifo, link):
        with pytest.raises(ConfigError, match="existing file that is not a floranet predictions file"):
            formats.check_output(out, [image])
    assert fifo.is_fifo() and link.is_symlink()
    with pytest.raises(OutputError, match="directory"):  # a folder: said as such, as before
        formats.check_output(tmp_path, [image])


def test_calibrated_without_a_fitted_temperature_is_refused(writable_run, tmp_path, capsys) -> None:
    """A run without calibration.json (no validation images; an export folder used as a run) answered
    --calibrated with the raw probabilities, silently."""
    image = tmp_path / "x.jpg"
    Image.new("RGB", (8, 8)).save(image)
    assert main(["predict", str(writable_run), str(image), "--calibrated"]) == 0
    capsys.readouterr()
    (writable_run / "calibration.json").unlink()
    assert main(["predict", str(writable_run), str(image), "--calibrated"]) == 2
    assert "calibrated=True needs the temperature fitted on the run's validation images" in capsys.readouterr().err
    assert main(["predict", str(writable_run), str(image)]) == 0


def test_predict_bytes_matches_file_prediction(tiny_run, tmp_path) -> None:
    path = _write_cases(tmp_path)["rgba_png"]
    predictor = predict.load(tiny_run)
    from_file = predictor.predict([path])[0]
    from_bytes = predictor.predict_bytes(path.read_bytes(), name="alpha.png")
    assert [c for c, _ in from_file.top_k] == [c for c, _ in from_bytes.top_k]
    np.testing.assert_allclose([p for _, p in from_file.top_k], [p for _, p in from_bytes.top_k], atol=2e-5)


def test_one_images_answer_does_not_depend_on_the_jobs_before_it(tiny_run, tmp_path, monkeypatch) -> None:
    """predict_bytes and probabilities kept the runtime the previous job chose: one JPEG's probability was 0.833736
    (fp32) before a 1000-file predict and 0.834199 (bf16) after it. Each call picks for its own size; a select
    (a server's) still holds for them."""
    from floranet.data import decode
    from floranet.inference import runtime
    from floranet.utils import system

    monkeypatch.setattr(runtime, "native_bf16", lambda: True)  # a job of 3 images runs bf16, one image fp32
    monkeypatch.setattr(runtime, "AUTO_MIN_IMAGES", 3)
    path = _write_cases(tmp_path)["jpeg"]
    p = predict.load(tiny_run)
    _, pixels = decode.decode_bytes(path.read_bytes(), p.image_size, name="x", max_pixels=p.max_pixels)
    before = p.predict_bytes(path.read_bytes()), p.probabilities(pixels[None])
    assert p.choice is not None and p.choice.key == "openvino-fp32"
    big = p.predict([path] * 3)
    assert p.choice.key == "openvino-bf16"
    if system.native_bf16():  # elsewhere OpenVINO may compute bf16 in fp32
        assert big[0].top_k != before[0].top_k  # the runtimes answer apart
    after = p.predict_bytes(path.read_bytes()), p.probabilities(pixels[None])
    assert after[0] == before[0] and np.array_equal(after[1], before[1]) and p.choice.key == "openvino-fp32"
    assert p.select(None).key == "openvino-bf16"  # a server's choice, kept for its calls
    p.probabilities(pixels[None]), p.predict_bytes(path.read_bytes())
    assert p.choice.key == "openvino-bf16"


def test_python_api_floranet_load(tiny_run, tmp_path) -> None:
    import floranet

    rows = floranet.load(tiny_run).predict(str(_write_cases(tmp_path)["jpeg"]))
    assert len(rows) == 1 and rows[0].error is None


def test_few_files_take_the_direct_path_with_the_same_results(tiny_run, tmp_path) -> None:
    cases = _write_cases(tmp_path)
    (tmp_path / "empty.jpg").write_bytes(b"")
    predictor = predict.load(tiny_run)
    few = predictor.predict([cases["cmyk"], tmp_path / "empty.jpg"])
    assert len([cases["cmyk"], 0]) <= batch.SMALL_JOB
    assert few[0].error is None and few[1].error and "empty" in few[1].error
    many = predictor.predict([cases[k] for k in ("cmyk", "jpeg", "exif_rotated", "rgba_png", "grayscale")])
    assert len(many) > batch.SMALL_JOB
    np.testing.assert_allclose([p for _, p in few[0].top_k], [p for _, p in many[0].top_k], atol=2e-5)


def test_the_compiled_model_predicts_without_tensorflow(tiny_run, tmp_path) -> None:
    """train leaves inference/model.xml, checked against model.keras; predict then never imports TensorFlow."""
    import subprocess
    import sys

    info = json.loads((tiny_run / "inference" / "compiled.json").read_text())
    assert info["agrees"] and info["images"] == 6 and info["top1_agreement"] == 1.0 and info["max_abs_diff"] <= 1e-4
    # One output: the probabilities, then the pooled features the unknown score reads (checked too).
    assert info["outputs"]["probabilities"] == [0, 3] and info["outputs"]["features"][0] == 3
    assert info["features_max_rel_diff"] <= 1e-4 and info["ood_max_rel_diff"] <= 1e-3
    # The answer agrees wherever the score is not within float rounding of the threshold.
    assert info["ood_answer_agreement"] == 1.0 and isinstance(info["ood_near_threshold"], int)
    image = _write_cases(tmp_path)["jpeg"]
    code = (
        "import sys, json\nfrom floranet.inference import load\n"
        f"p = load({str(tiny_run)!r})\nrow = p.predict([{str(image)!r}])[0]\n"
        "print(json.dumps({'tf': 'tensorflow' in sys.modules, 'keras': 'keras' in sys.modules, "
        "'choice': p.choice.key, 'top': row.top_k, 'unknown': row.unknown, 'ood': row.ood_score}))"
    )
    out = json.loads(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
        .stdout.strip()
        .splitlines()[-1]
    )
    assert out["tf"] is False and out["keras"] is False and out["choice"] == "openvino-fp32"
    exact = predict.load(tiny_run, runtime="tensorflow").predict([image])[0]
    assert [c for c, _ in exact.top_k] == [c for c, _ in out["top"]]
    np.testing.assert_allclose([p for _, p in exact.top_k], [p for _, p in out["top"]], atol=1e-5)
    # Relative: a far image's z-scored score is large (10.6 here), and float rounding scales with it.
    assert out["unknown"] == exact.unknown and out["ood"] == pytest.approx(exact.ood_score, rel=1e-4, abs=1e-4)


def test_a_compiled_model_without_the_features_output_serves_only_without_the_unknown_answer(
    writable_run, tmp_path
) -> None:
    info_file = writable_run / "inference" / "compiled.json"
    info = json.loads(info_file.read_text())
    del info["outputs"]  # as a compiled model made before the unknown answer read it
    info_file.write_text(json.dumps(info))
    fallback = predict.load(writable_run)
    assert fallback.compiled is None and "before it output the features" in fallback.note
    row = fallback.predict([_write_cases(tmp_path)["jpeg"]])[0]
    assert row.ood_score is not None and "recompiles it" in (fallback.choice.reason if fallback.choice else "")
    assert predict.load(writable_run, unknown=False).compiled is not None  # nothing to compute but probabilities


def test_a_replaced_model_keras_is_never_paired_with_an_old_compiled_model(writable_run) -> None:
    from floranet.inference import compiled
    from floranet.rundir import RunDir

    run = RunDir(writable_run)
    assert compiled.usable(run) is not None
    data = (writable_run / "model.keras").read_bytes()
    (writable_run / "model.keras").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, other content
    assert compiled.usable(run) is None
    fallback = predict.load(writable_run)
    assert fallback.compiled is None  # falls back to model.keras, and says why (it said nothing)
    assert "is not used: model.keras changed since it was made, so model.keras runs; `floranet export" in fallback.note
    info_file = writable_run / "inference" / "compiled.json"
    info_file.write_text(info_file.read_text().replace('"agrees": true', '"agrees": false'))
    assert "is not used: it does not agree with model.keras (compiled.json)" in predict.load(writable_run).note


def test_a_damaged_compiled_model_falls_back_to_model_keras_and_says_which_file(writable_run, tmp_path) -> None:
    """A truncated model.bin crashed predict with OpenVINO's traceback ("Incorrect weights in bin file!"), a junk
    model.xml with "Unable to read the model", and a model.bin of the right size with other bytes silently
    answered other classes: compiled.json checked model.keras only."""
    from floranet.errors import ModelError
    from floranet.inference import compiled, runtime
    from floranet.rundir import RunDir

    run, folder = RunDir(writable_run), writable_run / "inference"
    image = _write_cases(tmp_path)["jpeg"]
    exact = predict.load(writable_run, runtime="tensorflow").predict([image])[0].top_k
    good = {name: (folder / name).read_bytes() for name in ("model.xml", "model.bin")}
    info = json.loads((folder / "compiled.json").read_text())
    assert info["files"]["model.bin"]["size"] == len(good["model.bin"])
    quarter = len(good["model.bin"]) // 4
    damages = {
        "model.bin": [  # the same size, the middle half zeroed; then truncated (kept for from_ir below)
            good["model.bin"][:quarter] + bytes(2 * quarter) + good["model.bin"][3 * quarter :],
            good["model.bin"][:1000],
        ],
        "model.xml": [b"junk\n"],
    }
    for name, contents in damages.items():
        for content in contents:
            (folder / name).write_bytes(content)
            assert compiled.usable(run) is None
            fallback = predict.load(writable_run)
            assert fallback.compiled is None and f"{folder / name} is damaged" in fallback.note
            assert "recompiles it" in fallback.note
            assert fallback.predict([image])[0].top_k == exact  # model.keras answers
        if name == "model.bin":  # read anyway (what a compiled.json that matched would let through): named
            with pytest.raises(ModelError, match=r"model\.xml .*Incorrect weights in bin file"):
                runtime.OpenVINOInference.from_ir(folder / "model.xml", "fp32")
        (folder / name).write_bytes(good[name])
    assert compiled.usable(run) is not None
    # A compiled.json from before it recorded the files: not trusted unchecked; model.keras answers.
    del info["files"]
    (folder / "compiled.json").write_text(json.dumps(info))
    old = predict.load(writable_run)
    assert old.compiled is None and "recorded its files' sha256" in old.note and "recompiles it" in old.note


def test_a_loaded_predictor_keeps_its_model_when_the_run_is_trained_again(writable_run, tmp_path, monkeypatch) -> None:
    """A job needing another precision read inference/model.xml from disk again: the run trained again into the
    folder answered with the new model under the old class names, or (another image size) OpenVINO's
    ParameterMismatch."""
    import openvino as ov
    from openvino import opset13 as ops

    from floranet.inference import runtime

    monkeypatch.setattr(runtime, "native_bf16", lambda: True)  # a big job then compiles bf16: a second compile
    monkeypatch.setattr(runtime, "AUTO_MIN_IMAGES", 3)
    image = _write_cases(tmp_path)["jpeg"]
    p = predict.load(writable_run)
    first = p.predict([image])[0]
    assert p.choice is not None and p.choice.key == "openvino-fp32"
    pixels = ops.parameter([-1, 48, 48, 3], np.float32)  # another run's model, of 48 px
    other = ov.Model([ops.softmax(ops.reduce_mean(pixels, [1, 2], False), -1)], [pixels])
    ov.save_model(other, str(writable_run / "inference" / "model.xml"))
    rows = p.predict([image] * 3)
    assert p.choice.key == "openvino-bf16" and all(r.error is None for r in rows)
    assert [c for c, _ in rows[0].top_k] == [c for c, _ in first.top_k]
    np.testing.assert_allclose([q for _, q in rows[0].top_k], [q for _, q in first.top_k], atol=0.02)


def test_one_predictor_serves_several_threads_at_once(tiny_run, tmp_path, monkeypatch) -> None:
    """A shared Predictor (a web app's handlers) ran every call on the compiled model's one infer request: 4 threads
    x 10 calls failed 30 times with "Infer Request is busy"; and one thread's job changed the runtime another's ran
    on. Each thread's answers now equal those it gets alone."""
    import concurrent.futures

    from floranet.inference import runtime
    from floranet.utils import system

    monkeypatch.setattr(runtime, "native_bf16", lambda: True)  # jobs of 1 and of 3 images: fp32 and bf16
    monkeypatch.setattr(runtime, "AUTO_MIN_IMAGES", 3)
    image = _write_cases(tmp_path)["jpeg"]
    p = predict.load(tiny_run)
    jobs = ([image], [image] * 3)
    alone = [p.predict(job) for job in jobs]
    assert alone[0][0] != alone[1][0] or not system.native_bf16()  # the runtimes answer apart: a mix-up shows

    def work(n: int) -> list[bool]:
        return [p.predict(jobs[(n + i) % 2]) == alone[(n + i) % 2] for i in range(10)]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert all(all(same) for same in pool.map(work, range(4)))


def test_auto_runs_model_keras_on_a_gpu_even_with_a_compiled_model(tiny_run, monkeypatch) -> None:
    """The README says auto picks TensorFlow on a GPU; the compiled OpenVINO model (CPU) was used all the same."""
    from floranet.inference import runtime

    monkeypatch.setattr(runtime, "gpu_available", lambda: True)
    on_gpu = predict.load(tiny_run)
    assert on_gpu.compiled is None and "a GPU is visible" in on_gpu.note
    assert predict.load(tiny_run, runtime="openvino").compiled is not None


def test_a_csv_reads_back_to_the_names_its_json_holds(tiny_run, tmp_path, capsys) -> None:
    """CSV names went through printable: a file literally named new\\x0aline.jpg and one named new<LF>line.jpg
    gave identical rows (the backslash itself was not escaped), so the CSV could not be read back to the JSON's."""
    import csv

    from floranet.utils.text import unquote_formula

    folder = tmp_path / "odd"
    folder.mkdir()
    jpeg = _write_cases(tmp_path)["jpeg"].read_bytes()
    names = ["new\\x0aline.jpg", "new\nline.jpg", "tab\tx.jpg", "cr\rx.jpg", "esc\x1b[31m.jpg", '+1, "q".jpg']
    for name in names:
        (folder / name).write_bytes(jpeg)
    for fmt in ("csv", "json"):
        assert main(["predict", str(tiny_run), str(folder), "--output", str(tmp_path / f"p.{fmt}")]) == 0
    capsys.readouterr()
    want = [r["file"] for r in json.loads((tmp_path / "p.json").read_text())]
    assert sorted(Path(f).name for f in want) == sorted(names)
    with open(tmp_path / "p.csv", newline="", encoding="utf-8") as f:
        got = [unquote_formula(row["file"]) for row in csv.DictReader(f)]
    assert got == want


def test_csv_on_a_terminal_shows_a_names_escape_sequence_and_does_not_run_it(tiny_run, tmp_path, monkeypatch) -> None:
    """CSV holds names as they are (to be read back), so `predict --format csv` on a terminal sent a file name's
    ESC[31m to it; piped or redirected, the CSV is unchanged."""
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "esc\x1b[31m\u202e.jpg").write_bytes(_write_cases(tmp_path)["jpeg"].read_bytes())
    for out, raw in ((Terminal(), False), (io.StringIO(), True)):
        monkeypatch.setattr(sys, "stdout", out)
        assert main(["predict", str(tiny_run), str(folder), "--format", "csv"]) == 0
        text = out.getvalue()
        assert ("\x1b" in text and "\u202e" in text) is raw, text
        assert ("esc\\x1b[31m\\u202e.jpg" in text) is not raw, text


def test_output_files_keep_their_layout_quote_formulas_and_carry_any_class_name(tmp_path, monkeypatch) -> None:
    import os
    import sys

    from floranet.errors import MissingDependencyError
    from floranet.inference import Prediction

    failed = [Prediction("gone.jpg", error="no image")]
    out = tmp_path / "p.csv"
    formats.write_predictions(failed, None, out)
    assert out.read_text().startswith("file,class_1,probability_1,")  # the layout of any other file
    formats.check_output(out, [])  # so a rerun may replace it
    (tmp_path / "old.csv").write_text("file,low_confidence,unknown,ood_score,error\ngone.jpg,false,false,,x\n")
    formats.check_output(tmp_path / "old.csv", [])  # as it was written before
    # A spreadsheet runs a cell starting with = + - @: names are quoted, numbers are not.
    latin = os.fsdecode(b"ros\xe9s")
    rows = [Prediction("=1+2.jpg", (("@SUM(1)", 0.75), (latin, 0.25)), ood_score=-1.5)]
    text = formats.format_predictions(rows, "csv")
    assert "'=1+2.jpg,'@SUM(1),0.750000,ros\\xe9s,0.250000" in text and ",-1.500000," in text
    pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    formats.write_predictions(rows, "parquet", tmp_path / "p.parquet")  # a class name that is not UTF-8
    assert pq.read_table(tmp_path / "p.parquet").column("class_2").to_pylist() == ["ros\\xe9s"]
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # as if pyarrow were not installed
    with pytest.raises(MissingDependencyError, match="pyarrow"):
        formats.check_output(tmp_path / "new.parquet", [])  # before any image is predicted
