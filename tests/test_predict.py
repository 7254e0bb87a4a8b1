"""Prediction: same probabilities as the model on the same pixels, odd formats, bad files in rows."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from floranet import inference as predict
from floranet.cli import main
from floranet.data.images import load_image
from floranet.inference import batch


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
    rows = predict.load(tiny_run).predict([tmp_path, tmp_path / "nothing-here.jpg"], top_k=2)
    by_name = {Path(r.file).name: r for r in rows}
    assert by_name["empty.jpg"].error and "empty" in by_name["empty.jpg"].error
    assert by_name["text.jpg"].error and by_name["truncated.jpg"].error
    assert by_name["nothing-here.jpg"].error
    assert all(
        by_name[n].error is None and len(by_name[n].top_k) == 2
        for n in ("plain.jpg", "rotated.jpg", "cmyk.jpg", "alpha.png", "gray.png")
    )


def test_cli_predict_json_csv_and_table(tiny_run, tmp_path, capsys) -> None:
    cases = _write_cases(tmp_path)
    out = tmp_path / "preds.json"
    assert main(["predict", str(tiny_run), str(tmp_path / "*.jpg"), "--format", "json", "--output", str(out)]) == 0
    assert "3 predictions written" in capsys.readouterr().out
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


def test_predict_bytes_matches_file_prediction(tiny_run, tmp_path) -> None:
    path = _write_cases(tmp_path)["rgba_png"]
    predictor = predict.load(tiny_run)
    from_file = predictor.predict([path])[0]
    from_bytes = predictor.predict_bytes(path.read_bytes(), name="alpha.png")
    assert [c for c, _ in from_file.top_k] == [c for c, _ in from_bytes.top_k]
    np.testing.assert_allclose([p for _, p in from_file.top_k], [p for _, p in from_bytes.top_k], atol=2e-5)


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
