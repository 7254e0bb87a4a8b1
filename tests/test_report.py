"""The report: self-contained HTML that a real headless browser renders with every image, offline."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from floranet.cli import main
from floranet.evaluation import evaluate_run
from floranet.rundir import RunDir

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class _TitleParser(HTMLParser):
    """The text of every <title> element, as a browser's parser sees it."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []
        self._inside = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "title":
            self._inside = True
            self.texts.append("")

    def handle_endtag(self, tag: str) -> None:
        self._inside = self._inside and tag != "title"

    def handle_data(self, data: str) -> None:
        if self._inside:
            self.texts[-1] += data


def test_evaluate_cli_writes_metrics_and_calibration(writable_run, capsys) -> None:
    assert main(["evaluate", str(writable_run)]) == 0
    metrics = json.loads((writable_run / "metrics.json").read_text())
    assert metrics["source"] == "validation split" and metrics["num_examples"] == 6
    assert (writable_run / "calibration.json").exists() and (writable_run / "plots" / "reliability.png").exists()
    ev = evaluate_run(writable_run)
    assert list(ev.paths) == [
        line.split(",")[0]
        for line in (writable_run / "split.csv").read_text().splitlines()[1:]
        if line.split(",")[2] == "validation"
    ]


def test_report_is_self_contained(writable_run) -> None:
    assert main(["report", str(writable_run)]) == 0
    html = (writable_run / "report.html").read_text()
    for needle in (
        "Confusion matrix",
        "reliability diagram",
        "Top losses",
        "Configuration",
        "Environment",
        "Sample training",
    ):
        assert needle in html
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert "random weights (<code>--weights none</code>)" in html  # asked for, not a missing download
    assert html.count("data:image/png;base64,") >= 5
    # One title, and its text is the run's name (a second <title> inside it showed as text in the browser's tab).
    titles = _TitleParser()
    titles.feed(html)
    assert titles.texts == [f"floranet report: {writable_run.name}"]


def test_the_reports_environment_is_the_machine_that_trained_the_run(writable_run) -> None:
    """The Environment table showed the machine that ran `floranet report`, beside times measured on another."""
    import json

    metrics = json.loads((writable_run / "metrics.json").read_text())
    metrics["trained_on"] = {**metrics["trained_on"], "cpu": "Imaginary CPU 9000"}
    (writable_run / "metrics.json").write_text(json.dumps(metrics))
    assert main(["report", str(writable_run)]) == 0
    html = (writable_run / "report.html").read_text()
    assert "Imaginary CPU 9000" in html and "the machine that trained the run" in html
    del metrics["trained_on"]  # a run from before training recorded its machine
    (writable_run / "metrics.json").write_text(json.dumps(metrics))
    assert main(["report", str(writable_run)]) == 0
    assert "this machine (the run did not record its own)" in (writable_run / "report.html").read_text()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it when it can)")
def test_report_renders_in_headless_chromium(writable_run, artifacts_dir) -> None:
    from playwright.sync_api import sync_playwright

    main(["report", str(writable_run)])
    url = (writable_run / "report.html").resolve().as_uri()
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("request", lambda r: requests.append(r.url))
        page.goto(url)
        page.wait_for_load_state("load")
        images = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth])")
        page.screenshot(path=str(artifacts_dir / "report.png"), full_page=True)
        browser.close()
    assert len(images) >= 5 and all(done and width > 0 for done, width in images)
    assert all(r == url or r.startswith("data:") for r in requests), requests


def test_explain_decodes_with_the_runs_own_pixel_limit(writable_run, tmp_path, capsys) -> None:
    """explain decoded with the default limit whatever the run's max_pixels: an image predict answered could be
    refused (and the other way round, here: a run limited to 1,000 pixels explained a 1,200-pixel image)."""
    import numpy as np
    from PIL import Image

    config = writable_run / "config.yaml"
    config.write_text(config.read_text().replace("max_pixels: 50000000", "max_pixels: 1000"))
    image = tmp_path / "flower.jpg"
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(image)
    assert main(["explain", str(writable_run), str(image), "--out", str(tmp_path / "cams")]) == 1
    err = capsys.readouterr().err
    assert "40x30 = 1,200 pixels exceeds the limit of 1,000 pixels" in err
    # explain has no --max-pixels: the hint names where the limit lives
    assert err.rstrip().endswith("; raise max_pixels in the run's config.yaml to accept it"), err


def test_explain_takes_folders_and_patterns_as_predict_does(tiny_run, tmp_path, capsys) -> None:
    """explain opened each argument as an image file: a folder or a quoted pattern that predict takes was
    "cannot decode". Now both are expanded as predict expands them, and an input naming no image is said."""
    import numpy as np
    from PIL import Image

    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    for name in ("a.jpg", "sub/b.png", "notes.txt"):
        Image.fromarray(np.full((20, 24, 3), 90, np.uint8)).save(photos / name, format="PNG")
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(other / "c.jpg")
    cams = tmp_path / "cams"
    code = main(
        ["explain", str(tiny_run), str(photos), str(other / "*.jpg"), str(tmp_path / "gone"), "--out", str(cams)]
    )
    assert code == 1  # the missing input
    assert sorted(p.name for p in cams.iterdir()) == ["a.gradcam.png", "b.gradcam.png", "c.gradcam.png"]
    assert f"{tmp_path / 'gone'}: no image" in capsys.readouterr().err


def test_explain_without_out_writes_into_the_current_folder_as_its_help_says(
    tiny_run, tmp_path, monkeypatch, capsys
) -> None:
    """explain's --help named neither its default folder nor --class's metavar the README uses."""
    from PIL import Image

    with pytest.raises(SystemExit):
        main(["explain", "--help"])
    helped = " ".join(capsys.readouterr().out.split())
    assert "(default: the current folder;" in helped and "--class CLASS " in helped
    Image.fromarray(np.full((20, 24, 3), 90, np.uint8)).save(tmp_path / "a.jpg")
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert main(["explain", str(tiny_run), str(tmp_path / "a.jpg")]) == 0
    assert [p.name for p in here.iterdir()] == ["a.gradcam.png"]


def test_explain_never_explains_its_own_overlays_nor_writes_into_the_run(tiny_run, tmp_path, capsys, caplog) -> None:
    """With --out inside an input folder each rerun explained the overlays of the last one (x.gradcam.gradcam.png,
    then x.gradcam.gradcam.gradcam.png); --out inside the run directory wrote overlays among its model and records
    (predict --output and report --out refuse that)."""
    import numpy as np
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.full((20, 24, 3), 90, np.uint8)).save(photos / "x.png")
    for _ in range(2):
        assert main(["explain", str(tiny_run), str(photos), "--out", str(photos / "cams")]) == 0
    assert sorted(p.relative_to(photos).as_posix() for p in photos.rglob("*.png")) == ["cams/x.gradcam.png", "x.png"]
    assert "Left out 1 image(s) that floranet drew" in caplog.text
    for inside in (tiny_run, tiny_run / "cams"):
        assert main(["explain", str(tiny_run), str(photos / "x.png"), "--out", str(inside)]) == 2
        assert "out must be outside the run directory" in capsys.readouterr().err
    assert not list(tiny_run.rglob("*.gradcam.png"))


def test_explain_leaves_out_the_runs_own_charts(tiny_run, tmp_path, caplog) -> None:
    """`explain RUN RUN` explained the run's matplotlib charts (confusion matrix, history, reliability) as photos:
    save_figure wrote no floranet mark, which the overlays and galleries that image_grid draws carry."""
    from floranet.utils.figures import written_here

    charts = sorted((tiny_run / RunDir.PLOTS).glob("*.png"))
    assert {"confusion_matrix.png", "history.png", "reliability.png"} <= {p.name for p in charts}
    assert [p.name for p in charts if not written_here(p)] == []
    cams = tmp_path / "cams"
    assert main(["explain", str(tiny_run), str(tiny_run / RunDir.PLOTS), "--out", str(cams)]) == 0
    assert not cams.exists() and f"Left out {len(charts)} image(s) that floranet drew" in caplog.text


def test_explain_draws_each_file_once_however_many_inputs_name_it(tiny_run, tmp_path, monkeypatch, capsys) -> None:
    """`explain RUN a.jpg a.jpg ./a.jpg photos` drew one photo again and again (a.gradcam.png, a.2.gradcam.png, ...):
    each file is explained once, under the first path that names it, as one folder or pattern names it once."""
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.jpg", "b.jpg"):
        Image.fromarray(np.full((20, 24, 3), 90, np.uint8)).save(photos / name)
    monkeypatch.chdir(tmp_path)
    inputs = ["photos/a.jpg", "photos/a.jpg", "./photos/a.jpg", str(photos / "a.jpg"), "photos"]
    assert main(["explain", str(tiny_run), *inputs, "--out", "cams"]) == 0
    assert sorted(p.name for p in (tmp_path / "cams").iterdir()) == ["a.gradcam.png", "b.gradcam.png"]
    assert capsys.readouterr().out.splitlines() == [
        f"photos/{name}.jpg -> {Path('cams', name + '.gradcam.png')}" for name in ("a", "b")
    ]


def test_explain_says_which_overlay_is_which_image(tiny_run, tmp_path, capsys, monkeypatch) -> None:
    """a/x.jpg and b/x.jpg gave x.gradcam.png and x.2.gradcam.png, and stdout listed only the overlays, each
    captioned "x.jpg": nothing told which was which. Each line now pairs the image with its overlay, and the
    caption shows the path as given."""
    import numpy as np
    from PIL import Image

    from floranet.evaluation import gradcam

    captions: list[str] = []
    real_grid = gradcam.image_grid
    monkeypatch.setattr(gradcam, "image_grid", lambda p, c, *a, **k: (captions.extend(c), real_grid(p, c, *a, **k)))
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.full((20, 24, 3), 90, np.uint8)).save(tmp_path / folder / "x.jpg")
    monkeypatch.chdir(tmp_path)
    assert main(["explain", str(tiny_run), "a/x.jpg", "b", "--out", "cams"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"a{os.sep}x.jpg -> cams{os.sep}x.gradcam.png", f"b{os.sep}x.jpg -> cams{os.sep}x.2.gradcam.png"
    ]  # fmt: skip
    assert [c.split("\n")[0] for c in captions] == [f"a{os.sep}x.jpg", f"b{os.sep}x.jpg"]


def test_explain_shortens_an_overlay_name_too_long_for_the_file_system(tiny_run, tmp_path, capsys) -> None:
    """A legal 250-byte photo name made a 262-byte overlay name (its temp file 276): "File name too long", exit 2,
    and the images after it were never explained. Now each overlay name, with its temp file, fits NAME_MAX bytes
    (a readable start, "~" and a hash), multibyte names cut between characters, and every image is explained."""
    from PIL import Image

    names = ["a" * 246 + ".jpg", "a" * 245 + "b.jpg", "é" * 123 + ".jpg", "short.jpg"]  # 250 bytes each but the last
    for folder in ("photos", "more"):
        (tmp_path / folder).mkdir()
    for name in names:
        Image.fromarray(np.full((20, 24, 3), 90, np.uint8)).save(tmp_path / "photos" / name, format="JPEG")
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(tmp_path / "more" / names[0], format="JPEG")
    cams = tmp_path / "cams"
    assert main(["explain", str(tiny_run), str(tmp_path / "photos"), str(tmp_path / "more"), "--out", str(cams)]) == 0
    written = sorted(os.listdir(os.fsencode(cams)))
    assert len(written) == 5 and len(capsys.readouterr().out.splitlines()) == 5
    assert all(len(n) + 14 <= 255 and n.endswith(b".gradcam.png") for n in written)  # 14: atomic_path's temp name
    shown = [n.decode("utf-8") for n in written]  # strict: no character cut in half
    assert "short.gradcam.png" in shown and sum(n.startswith("é" * 50) and "~" in n for n in shown) == 1
    assert sum(n.startswith("a" * 200) and n.endswith(".2.gradcam.png") for n in shown) == 1


def test_explain_draws_the_map_over_the_upright_photo_at_its_own_shape(tiny_run, tmp_path, monkeypatch) -> None:
    """The heat map was drawn on the model's squashed 32x32 input: a 400x20 photo became a square of streaks, and
    a large photo a 32-pixel thumbnail. Now it is drawn, as serve draws it, over the upright photo at its own aspect
    ratio, the longer side scaled down to 384 px, or up to 192 for a tiny image."""
    from PIL import Image

    from floranet.evaluation import gradcam

    shown: list[tuple[int, ...]] = []
    real_grid = gradcam.image_grid
    monkeypatch.setattr(
        gradcam, "image_grid", lambda p, *a, **k: (shown.extend(x.shape for x in p), real_grid(p, *a, **k))
    )
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.full((20, 400, 3), 90, np.uint8)).save(photos / "a_wide.png")
    Image.fromarray(np.full((600, 900, 3), 90, np.uint8)).save(photos / "b_large.png")
    Image.fromarray(np.full((8, 10, 3), 90, np.uint8)).save(photos / "c_tiny.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 40 wide and 20 tall, shown rotated: 20 wide and 40 tall
    Image.fromarray(np.full((20, 40, 3), 90, np.uint8)).save(photos / "d_turned.jpg", exif=exif)
    assert main(["explain", str(tiny_run), str(photos), "--out", str(tmp_path / "cams")]) == 0
    assert shown == [(19, 384, 3), (256, 384, 3), (154, 192, 3), (192, 96, 3)]
    with Image.open(tmp_path / "cams" / "a_wide.gradcam.png") as overlay:
        assert overlay.width >= 384 and overlay.height < 100  # the photo's shape, not a square


def test_explain_says_when_a_map_carries_no_information(writable_run, tmp_path, caplog, monkeypatch) -> None:
    """Two kinds of map were drawn without a word: a 1x1 feature map (many backbones at 32 px) gives one flat
    colour, and a class with no positive evidence an all-zero map, drawn plain blue. Now both are said, the map's
    size named, and a blank map's caption says so; the report's top-losses gallery captions a blank map too."""
    from PIL import Image

    from floranet.evaluation import gradcam, report
    from floranet.models import classifier

    captions: list[str] = []
    for module in (gradcam, report):
        real = module.image_grid
        monkeypatch.setattr(
            module, "image_grid", lambda p, c, *a, _r=real, **k: (captions.extend(c), _r(p, c, *a, **k))
        )
    image = tmp_path / "flower.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(image)
    from modelfiles import blank_head

    blank_head(writable_run)  # every map is all zero
    assert main(["explain", str(writable_run), str(image), "--out", str(tmp_path / "cams"), "--class", "roses"]) == 0
    assert captions[-1].endswith("\nno positive evidence for roses")
    assert "flower.jpg: no positive evidence for roses; its map is blank." in caplog.text
    assert "is 1x1" not in caplog.text  # ResNet-20's map at 32 px is 8x8
    assert main(["report", str(writable_run)]) == 0
    assert any(
        c.endswith("\nno positive evidence for " + c.split("predicted ")[1].split(" (")[0]) for c in captions[1:]
    )
    RunDir(writable_run).save_model(classifier.build_classifier("mobilenet_v2", 3, image_size=32, weights=None))
    caplog.clear()
    assert main(["explain", str(writable_run), str(image), "--out", str(tmp_path / "cams")]) == 0
    # The run's unknown answer was fitted to another model's features: a numpy ValueError in predict; explain
    # draws the map without it, and says why
    assert "The captions leave out the unknown answer: ood.npz (the unknown answer) does not fit" in caplog.text
    assert main(["predict", str(writable_run), str(image), "--runtime", "tensorflow"]) == 2  # was a traceback
    assert "is 1x1 at this model's 32x32 input: every map is uniform" in caplog.text
    assert "larger --image-size" in caplog.text


def test_gradcam_for_any_image(tiny_run, tmp_path) -> None:
    import keras
    import numpy as np
    from PIL import Image

    from floranet.evaluation.gradcam import GradCAM

    image = tmp_path / "flower.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(image)
    assert main(["explain", str(tiny_run), str(image), "--out", str(tmp_path / "cams"), "--class", "roses"]) == 0
    assert (tmp_path / "cams" / "flower.gradcam.png").stat().st_size > 0
    (tmp_path / "b").mkdir()
    twin = tmp_path / "b" / "flower.jpg"  # the same name in another folder: its own overlay, not written over
    Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(twin)
    assert main(["explain", str(tiny_run), str(image), str(twin), "--out", str(tmp_path / "cams2")]) == 0
    assert sorted(p.name for p in (tmp_path / "cams2").iterdir()) == ["flower.2.gradcam.png", "flower.gradcam.png"]
    # Its own overlays are replaced on a rerun; a file of the user's of that name is never, nor anything in the
    # data folder the run was trained on (an overlay there would become a training image).
    assert main(["explain", str(tiny_run), str(image), "--out", str(tmp_path / "cams2")]) == 0
    (tmp_path / "cams2" / "flower.2.gradcam.png").write_bytes(b"mine")
    assert main(["explain", str(tiny_run), str(image), str(twin), "--out", str(tmp_path / "cams2")]) == 2
    assert (tmp_path / "cams2" / "flower.2.gradcam.png").read_bytes() == b"mine"
    bad = tmp_path / "bad.jpg"  # an unreadable image among good ones: said, and the others still explained
    bad.write_bytes(b"not an image")
    assert main(["explain", str(tiny_run), str(bad), str(image), "--out", str(tmp_path / "cams3")]) == 1
    assert [p.name for p in (tmp_path / "cams3").iterdir()] == ["flower.gradcam.png"]
    data = Path(RunDir(tiny_run).config().data_dir)
    assert main(["explain", str(tiny_run), str(image), "--out", str(data / "roses")]) == 2
    assert not list(data.rglob("*.gradcam.png"))
    model = keras.saving.load_model(tiny_run / "model.keras")
    x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    heat, probs = GradCAM(model).heatmaps(x)
    assert heat.shape[0] == 2 and heat.ndim == 3 and heat.min() >= 0 and heat.max() <= 1
    np.testing.assert_allclose(probs, model.predict(x, verbose=0), atol=1e-5)


def test_gradcam_batch_with_one_class_per_image_equals_single_calls(tiny_run) -> None:
    import keras
    import numpy as np

    from floranet.evaluation.gradcam import GradCAM

    model = keras.saving.load_model(tiny_run / "model.keras")
    cam = GradCAM(model)
    x = np.random.default_rng(2).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    wanted = np.array([0, 2, 1])
    batch, _ = cam.heatmaps(x, wanted)
    for i in range(3):
        single, _ = cam.heatmaps(x[i : i + 1], int(wanted[i]))
        np.testing.assert_allclose(batch[i], single[0], atol=1e-5)
    predicted, probs = cam.heatmaps(x)
    by_index, _ = cam.heatmaps(x, probs.argmax(axis=1))
    np.testing.assert_allclose(predicted, by_index, atol=1e-6)


def test_gradcam_of_a_confident_model_is_not_blank(tiny_run) -> None:
    """The probability was differentiated: once it rounds to 1.0 its gradient is 0 and the map came out blank."""
    import keras
    import numpy as np

    from floranet.evaluation.gradcam import GradCAM
    from floranet.models import classifier

    model = keras.saving.load_model(tiny_run / "model.keras")
    last = classifier.head_of(model).layers[-1]
    kernel, bias = last.get_weights()
    last.set_weights([kernel * 1000, bias * 1000])  # softmax saturates: every top probability is 1.0 in float32
    x = np.random.default_rng(3).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    probs = model.predict(x, verbose=0)
    assert (probs.max(axis=1) == 1.0).all()
    heat, got = GradCAM(model).heatmaps(x)
    np.testing.assert_allclose(got, probs, atol=1e-5)
    assert (heat.reshape(4, -1).max(axis=1) == 1.0).all()  # every map has its peak (a blank one is all zeros)


def test_image_grid_lays_out_cells_with_captions_and_overlays(tmp_path) -> None:
    from PIL import Image

    from floranet.utils.figures import _MIN_CELL_WIDTH, _PAD, image_grid

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (100, 80, 3), dtype=np.uint8) for _ in range(5)]
    captions = ["a/one.jpg\nroses → tulips? (0.91)", "b\udcffname.jpg", "x" * 300, "", "last"]
    image_grid(images, captions, tmp_path / "g.png", columns=2)
    grid = Image.open(tmp_path / "g.png")
    assert grid.width == 2 * (_MIN_CELL_WIDTH + _PAD) + _PAD  # 3 rows of 2 cells; an undecodable name draws
    assert grid.height > 3 * 100
    assert (tmp_path / "g.png").stat().st_mode & 0o777 == 0o644 or os.name != "posix"
    # A heat map changes the picture; without one the pixels are pasted as they are.
    heat = [np.ones((7, 7)), None]
    image_grid(images[:2], ["", ""], tmp_path / "h.png", columns=2, overlays=heat)
    plain = np.asarray(Image.open(tmp_path / "h.png").convert("RGB"))
    left = (_MIN_CELL_WIDTH - 80) // 2 + _PAD
    right = left + _MIN_CELL_WIDTH + _PAD
    np.testing.assert_array_equal(plain[_PAD : _PAD + 100, right : right + 80], images[1])
    assert not np.array_equal(plain[_PAD : _PAD + 100, left : left + 80], images[0])


def test_image_grid_keeps_the_end_of_a_long_caption(tmp_path) -> None:
    from floranet.utils.figures import _fit, _font

    font = _font(11)
    line = "roses/" + "1234567890" * 10 + "_tail.jpg"
    fitted = _fit(line, font, 220)
    assert fitted.startswith("…") and fitted.endswith("_tail.jpg") and font.getlength(fitted) <= 220
    assert _fit("short", font, 220) == "short"


def test_a_caption_keeps_the_start_of_its_verdict_on_a_narrow_photo() -> None:
    """explain's "UNKNOWN: unlike every class (ood score S)" was cut from its start on an overlay under ~290 px:
    "...N: unlike every class", the word carrying the verdict gone."""
    from floranet.utils.figures import _MIN_CELL_WIDTH, _font, caption_lines

    font = _font(11)
    note = "UNKNOWN: unlike every class (ood score 4.53)"
    lines = caption_lines(f"shapes/{'t' * 80}all.jpg\ndaisy (48%)\n{note}", font, _MIN_CELL_WIDTH)
    assert lines[0].startswith("…") and lines[0].endswith("all.jpg") and lines[1] == "daisy (48%)"
    assert lines[2].startswith("UNKNOWN:") and " ".join(lines[2:]) == note
    assert all(font.getlength(line) <= _MIN_CELL_WIDTH for line in lines)
    assert caption_lines("", font, 100) == [] and caption_lines("a\n", font, 100) == ["a", ""]


def test_image_grid_of_no_images_writes_an_empty_picture(tmp_path) -> None:
    from PIL import Image

    from floranet.utils.figures import image_grid

    image_grid([], [], tmp_path / "e.png")
    assert Image.open(tmp_path / "e.png").size[0] > 0


@pytest.mark.parametrize(
    ("name", "damage", "needle"),
    [
        ("class_names.json", "{not json", "class_names.json is damaged"),
        ("class_names.json", '["class_0", "class_1", "other"]', "names ['class_0', 'class_1', 'other']"),
        ("predictions.csv", None, "predictions.csv is damaged"),
        # "the model gave non-finite probabilities ... retrain it" blamed the model for the file's damage
        ("predictions.csv", "nan", "predictions.csv is damaged (a probability is not a finite number)"),
        # A KeyError or AttributeError traceback before; a bad config.yaml was blamed on predictions.csv.
        ("metrics.json", "{}", "metrics.json is damaged (no calibration figures)"),
        ("metrics.json", "[]", "metrics.json is damaged (not a JSON object)"),
        ("config.yaml", "bogus_key: 1\n", "Unknown settings in"),
    ],
)
def test_report_refuses_a_damaged_run_by_name(writable_run, capsys, name, damage, needle) -> None:
    target = writable_run / name
    before_html = (writable_run / "report.html").read_bytes() if (writable_run / "report.html").exists() else None
    if damage is None:  # a predictions.csv cut off inside its last row
        text = target.read_text()
        damage = text[: text.rindex(",")]
    elif damage == "nan":  # its last probability
        text = target.read_text().rstrip("\n")
        damage = text[: text.rindex(",") + 1] + "nan\n"
    target.write_text(damage if name != "config.yaml" else target.read_text() + damage)
    assert main(["report", str(writable_run)]) != 0
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and "predictions.csv is damaged" not in err.replace(needle, "")
    after_html = (writable_run / "report.html").read_bytes() if (writable_run / "report.html").exists() else None
    assert after_html == before_html


@pytest.mark.parametrize(
    ("name", "damage", "why"),
    [
        ("ood.json", '{"method": "combined", "threshold": "0.8", "keep": 0.95}', "threshold is str, not a number"),
        ("ood.json", '{"method": "combined", "keep": 0.95}', "threshold is missing"),
        ("ood.json", "[]", "not a JSON object"),
        ("audit.json", '{"images": 3, "counts": [], "findings": []}', "counts is list, not an object"),
        ("audit.json", '{"images": 3, "counts": {}, "findings": [{"kind": 3}]}', "findings[0].kind is int, not text"),
        ("doctor.json", '{"classes": 3}', "classes is int, not an object"),
        ("doctor.json", '{"files": [{"path": 1}]}', "files[0].path is int, not text"),
        ("calibration.json", '{"temperature": 1.2, "fitted": "no"}', "fitted is str, not true or false"),
        ("state.json", "{cut", "not valid JSON"),
    ],
)
def test_a_damaged_side_file_is_left_out_of_the_report_by_name(writable_run, capsys, name, damage, why) -> None:
    """A hand-edited ood.json, audit.json, doctor.json or calibration.json (a wrong type, a missing field, a list)
    made `floranet report` end in a traceback (ValueError: Unknown format code 'g' for object of type 'str',
    AttributeError: 'list' object has no attribute 'get') or refuse the whole page. Now that part is left out of the
    page with a line naming the file and what is wrong, the command warns the same, and the rest is written."""
    (writable_run / name).write_text(damage)
    assert main(["report", str(writable_run)]) == 0
    err = capsys.readouterr().err
    assert f"Report without {name}: {writable_run / name} is damaged (" in err and why in err
    assert "Traceback" not in err
    html = (writable_run / "report.html").read_text()
    if name != "state.json":  # read for the card's epochs; the page shows none of it
        assert f"<code>{name}</code> is left out of this report: it is damaged (" in html
        writer = {"ood.json": "train", "audit.json": "audit", "calibration.json": "evaluate"}.get(name)
        said = f"it is written by <code>floranet {writer}</code>" if writer else "rerun the step that wrote it"
        assert f"; {said}.</p>" in html  # the command that writes it, as the warning names it
    assert "<h2>Metrics</h2>" in html and "<h2>Configuration</h2>" in html


def test_an_empty_calibration_file_is_named_not_taken_for_no_temperature(writable_run, capsys) -> None:
    """calibration.json holding {} or [] was read as "no temperature" (1.0) by predict and the report, though
    floranet never writes it so; now it is named as damaged, with the command that writes it again."""
    (writable_run / "calibration.json").write_text("{}")
    assert main(["report", str(writable_run)]) == 2
    err = capsys.readouterr().err
    assert "calibration.json is damaged: temperature must be a number > 0" in err
    assert f"`floranet evaluate {writable_run}` writes it again" in err


def test_report_says_when_the_wrong_images_cannot_be_read(writable_run, tmp_path, caplog) -> None:
    """With the data folder moved, every top-loss image failed to decode and the page said "No misclassified
    images." beside an accuracy of 33%. Now the page and the terminal say how many could not be read, and where."""
    from floranet.evaluation.evaluation import read_evaluation

    ev = read_evaluation(RunDir(writable_run))
    assert ev is not None and (np.asarray(ev.predictions) != np.asarray(ev.labels)).any()
    config = writable_run / "config.yaml"
    moved = tmp_path / "moved"
    config.write_text(
        config.read_text().replace(f"data_dir: {RunDir(writable_run).config().data_dir}", f"data_dir: {moved}")
    )
    assert main(["report", str(writable_run)]) == 0
    html = (writable_run / "report.html").read_text()
    assert "No misclassified images" not in html
    assert f"misclassified image(s), none readable under {moved} (moved?)" in html
    assert f"could not be read under {moved} (moved?)" in caplog.text


def test_the_top_losses_gallery_shows_each_photo_upright_at_its_own_shape(writable_run, tmp_path, monkeypatch) -> None:
    """The gallery drew each heat map on the model's squashed input (32x32 here), as explain once did."""
    from PIL import Image

    from floranet.evaluation import report
    from floranet.evaluation.evaluation import Evaluation

    data = tmp_path / "data"
    (data / "daisy").mkdir(parents=True)
    Image.new("RGB", (400, 20), (200, 40, 40)).save(data / "daisy" / "wide.jpg")
    ev = Evaluation(("daisy", "roses", "tulips"), ("daisy/wide.jpg",), np.array([0]), np.array([[0.1, 0.8, 0.1]]))
    ev = dataclasses.replace(ev, data_dir=str(data))
    shown: list[tuple[int, ...]] = []
    monkeypatch.setattr(report, "image_grid", lambda images, *a, **k: shown.extend(i.shape for i in images))
    assert report.top_losses_gallery(ev, RunDir(writable_run))[1] == 0
    assert shown == [(19, 384, 3)], shown  # 400x20 scaled to a 384 px long side, not 32x32


def test_report_on_a_mistyped_path_makes_no_folder(tmp_path, capsys) -> None:
    """The run lock used to be taken first, making the folders of a path that named no run."""
    typo = tmp_path / "runs" / "flowrs"
    assert main(["report", str(typo)]) != 0
    assert "Run directory not found" in capsys.readouterr().err and not (tmp_path / "runs").exists()


def test_report_out_replaces_only_a_report(writable_run, tmp_path, capsys) -> None:
    """--out was only checked to be writable: it wrote HTML over a user's file, the run's model.keras, a photo."""
    from floranet.rundir import RunDir

    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    data = Path(RunDir(writable_run).config().data_dir)
    photo = next(data.rglob("*.jpg"))
    before = {p: p.read_bytes() for p in (notes, writable_run / "model.keras", photo)}
    for out, needle in (
        (notes, "an existing file that is not a floranet report"),
        (writable_run / "model.keras", "outside the run directory"),
        (data / "report.html", "outside the data folder"),
        (photo, "not an image's name"),
    ):
        assert main(["report", str(writable_run), "--out", str(out)]) != 0
        assert needle in capsys.readouterr().err
    assert {p: p.read_bytes() for p in before} == before and not (data / "report.html").exists()
    mine = tmp_path / "shared" / "flowers.html"
    mine.parent.mkdir()
    assert main(["report", str(writable_run), "--out", str(mine)]) == 0
    assert main(["report", str(writable_run), "--out", str(mine)]) == 0  # its own report: replaced
    assert main(["report", str(writable_run), "--out", str(writable_run / "report.html")]) == 0  # the default
    (writable_run / "metrics.json").unlink()  # a raw KeyError before
    assert main(["report", str(writable_run)]) != 0
    assert "metrics.json is missing" in capsys.readouterr().err


def test_report_out_writes_nothing_into_the_run_and_needs_no_lock(writable_run, tmp_path, monkeypatch, capsys):
    """`report RUN --out FILE` took the run's lock and drew RUN/plots/top_losses.png anew: on a read-only run it
    failed "Cannot write RUN/run.lock: Read-only file system", and while evaluate, export, audit or train held the
    lock a copy of the page was refused. It now reads the run only (its gallery drawn in a temporary folder)."""
    import errno

    from corpus import snapshot
    from floranet.errors import OutputError

    copy = tmp_path / "copy.html"
    with RunDir(writable_run).lock():  # another command is writing the run
        before = snapshot(writable_run)
        assert main(["report", str(writable_run), "--out", str(copy)]) == 0, capsys.readouterr().err
        assert snapshot(writable_run) == before
    page = copy.read_text()
    assert 'alt="top losses"' in page and page.count("data:image/png;base64,") >= 5

    def read_only(self: RunDir, **_: object) -> None:
        raise OutputError(self / RunDir.LOCK, OSError(errno.EROFS, "Read-only file system"))

    monkeypatch.setattr(RunDir, "lock", read_only)  # a run on a read-only mount, or another user's
    before = snapshot(writable_run)
    copy.unlink()
    assert main(["report", str(writable_run), "--out", str(copy)]) == 0, capsys.readouterr().err
    assert snapshot(writable_run) == before and 'alt="top losses"' in copy.read_text()
    monkeypatch.undo()
    (writable_run / RunDir.PREDICTIONS).unlink()  # a run from before predictions.csv: evaluated and stored
    with RunDir(writable_run).lock():
        assert main(["report", str(writable_run), "--out", str(copy)]) == 2
        assert "is in use by process" in capsys.readouterr().err
        # evaluate has no --out: "or write elsewhere" told its user to do what it cannot
        assert main(["evaluate", str(writable_run)]) == 2
        assert capsys.readouterr().err.rstrip().endswith("; wait for it to finish.")
    assert main(["report", str(writable_run)]) == 0
    assert (writable_run / RunDir.PREDICTIONS).exists() and (writable_run / "plots" / "top_losses.png").exists()


def test_report_and_explain_never_write_into_another_run(writable_run, tiny_run, tmp_path, capsys) -> None:
    """`report RUN --out OTHER_RUN/report.html` replaced the other run's page (only this run and its data folder
    were kept out), and `explain --out OTHER_RUN/cams` wrote among its model and records. Both are refused now."""
    from corpus import snapshot

    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    before = snapshot(other)
    for out in (other / "report.html", other / "plots" / "page.html"):
        assert main(["report", str(writable_run), "--out", str(out)]) == 2
        assert f"out must be outside another floranet run ({other}" in capsys.readouterr().err
    image = next(Path(RunDir(other).config().data_dir).rglob("*.jpg"))
    assert main(["explain", str(writable_run), str(image), "--out", str(other / "cams")]) == 2
    assert f"out must be outside another floranet run ({other}" in capsys.readouterr().err
    assert snapshot(other) == before and not (other / "cams").exists()
    assert main(["report", str(writable_run), "--out", str(writable_run / "report.html")]) == 0  # its own default


def test_a_run_on_a_folder_name_that_is_not_utf8_writes_utf8_pages_and_json(tmp_path) -> None:
    """report.html says charset=utf-8: a class folder's undecodable bytes are written as \\xNN, not raw. JSON must be
    UTF-8 (RFC 8259): metrics.json and class_names.json held the raw byte, which json.load(open(...)) refused; the
    byte is a \\udcXX escape now, read back as the same name, so the class still maps to its folder."""
    from floranet import config
    from floranet.workflows import train
    from imagesets import TINY_MODEL, make_image_folder

    names = [os.fsdecode(b"caf\xe9"), "roses"]
    data = make_image_folder(tmp_path / "data", classes=2, per_class=6, names=names)
    cfg = config.resolve(data_dir=str(data), out=str(tmp_path / "run"), batch_size=4, epochs=1, **TINY_MODEL)
    run = train(cfg, progress=False, say=lambda m: None).run_dir
    report = (run / "report.html").read_bytes().decode("utf-8")  # strict: raises on a raw byte
    assert "<td>caf\\xe9</td>" in report
    card = (run / "README.md").read_bytes().decode("utf-8")  # the model card
    assert "caf\\\\xe9" in card  # Markdown's escaped backslash: shown as caf\xe9
    args = ["evaluate", str(run), "--data", str(data), "--runtime", "tensorflow", "--precision", "fp32"]
    assert main(args) == 0  # reads metrics.json and class_names.json back; writes metrics_external.json
    written = {p.relative_to(run).as_posix(): p.read_bytes() for p in run.rglob("*.json")}
    assert {"class_names.json", "metrics.json", "metrics_external.json", "doctor.json", "state.json"} <= set(written)
    docs = {name: json.loads(raw.decode("utf-8")) for name, raw in written.items()}  # strict UTF-8, valid JSON
    assert b'"caf\\udce9"' in written["class_names.json"] and docs["class_names.json"] == names
    assert (
        docs["metrics_external.json"]["class_names"] == names and names[0] in docs["metrics_external.json"]["per_class"]
    )
    assert names[0] in docs["metrics.json"]["per_class"]
    assert RunDir(run).class_names() == names
    (run / "class_names.json").write_bytes(b'["caf\xe9", "roses"]')  # as an older floranet wrote it: still read
    assert RunDir(run).class_names() == names


def test_a_run_without_validation_images_says_so(tmp_path, capsys) -> None:
    from floranet import config
    from floranet.workflows import train
    from imagesets import TINY_MODEL, make_image_folder

    data = make_image_folder(tmp_path / "data", classes=2, per_class=2)  # one image a class: all for training
    cfg = config.resolve(
        data_dir=str(data),
        out=str(tmp_path / "run"),
        batch_size=2,
        epochs=4,
        fine_tune_epochs=0,
        early_stopping_patience=2,
        **TINY_MODEL,
    )
    messages: list[str] = []
    run = train(cfg, progress=False, say=messages.append).run_dir
    # Early stopping has no loss to wait on: every epoch trains (it stopped after `patience` of them)
    assert len((run / "history.csv").read_text().splitlines()) == 1 + 4
    compiled = json.loads((run / RunDir.COMPILED / RunDir.COMPILED_INFO).read_text())
    assert compiled["images"] == 4 and compiled["agrees"], compiled  # checked on training images instead
    assert any("agrees with model.keras on 4 images" in m for m in messages)
    assert (run / RunDir.AUDIT).exists()  # the audit needs no validation image (it was skipped without a word)
    # Without fine-tuning the validation features come from stage 1's cache: np.stack of none said "need at least
    # one array to stack" instead of why
    none = "Unknown answer not fitted: The unknown threshold is chosen on validation images, and this run has none."
    assert none in messages, messages
    # The report shows a validation evaluation: none is written, and training says so (it said nothing)
    assert any(m.startswith("Report: none, as the split kept no validation image") for m in messages), messages
    assert not (run / "report.html").exists()
    card = (run / "README.md").read_text()
    assert "Not validated: the split kept no image aside" in card and "Validated on a split" not in card
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert "no images to evaluate" in err and "every image is on the training side" in err
    assert f"floranet evaluate {run} --data OTHER" in err  # report has no --data: the command that has
    # The export's agreement check reads training images here, and says so (it said "4 validation images")
    from floranet.export import export_run

    exp = export_run(run, "keras", out=str(tmp_path / "exp"), progress=True)
    assert exp.images_from == "training" and "on 4 training images" in exp.summary(), exp.summary()
    assert "on 4 training images..." in capsys.readouterr().err
    assert "on 4 training images" in (tmp_path / "exp" / "README.txt").read_text()


def test_the_pages_show_hostile_class_names_as_the_terminal_does(tmp_path) -> None:
    """report.html and audit.html escaped names for HTML only: a bidi override in a class name reversed the rest
    of each cell (30 times in one report), and a line break drew 'new\\nline' as two lines, like 'new line'."""
    from floranet import config
    from floranet.utils.text import printable
    from floranet.workflows import train
    from imagesets import TINY_MODEL, make_image_folder

    names = ["rtl\u202eevil", "new\nline"]
    data = make_image_folder(tmp_path / "data", classes=2, per_class=6, names=names)
    cfg = config.resolve(data_dir=str(data), out=str(tmp_path / "run"), batch_size=4, epochs=1, **TINY_MODEL)
    run = train(cfg, progress=False, say=lambda m: None).run_dir
    for page in ("report.html", "audit.html"):
        text = (run / page).read_text(encoding="utf-8")
        assert "\u202e" not in text and "new\nline" not in text, page
        assert f"<td>{printable(names[0])}</td>" in text or f">{printable(names[0])}<" in text, page


def test_a_score_just_below_one_never_shows_as_a_perfect_one(writable_run, monkeypatch, capsys) -> None:
    """1999 right answers of 2000 showed as "100.0%" accuracy (the report, evaluate, train) and per-class figures of
    0.9996 as "1.000": rounding to nearest showed an imperfect model as a perfect one."""
    from types import SimpleNamespace

    from floranet import evaluation
    from floranet.evaluation.modelcard import _figure
    from floranet.evaluation.report import _metrics_section, _summary
    from floranet.utils.text import figure_text

    assert figure_text(1999 / 2000, ".1%") == "99.9%" and figure_text(0.9996, ".3f") == "0.999"
    assert figure_text(np.float32(0.99999), ".4f") == "0.9999" and figure_text(0.99949, ".3f") == "0.999"
    assert (figure_text(1.0, ".1%"), figure_text(0.5, ".1%"), figure_text(1.5, ".3f")) == ("100.0%", "50.0%", "1.500")
    near = {"accuracy": 1999 / 2000, "loss": 0.01, "calibration": {"ece": 0.001}, "num_examples": 2000}
    near |= {"top_2_accuracy": 0.9996, "macro_f1": 0.9996}
    near["per_class"] = {"a": {"precision": 0.9996, "recall": 0.9995, "f1": 0.99955, "support": 2000}}
    summary = _summary(near, SimpleNamespace(temperature=1.0, source="validation split"))
    section = _metrics_section(RunDir(writable_run), near)
    assert "99.9%" in summary and "100.0%" not in summary
    assert "top 2 accuracy: 99.9%; macro F1 0.999" in section and "1.000" not in section
    assert _figure(0.9996) == "0.999"
    real = evaluation.write_evaluation
    monkeypatch.setattr(evaluation, "write_evaluation", lambda *a, **k: {**real(*a, **k), "accuracy": 1999 / 2000})
    assert main(["evaluate", str(writable_run)]) == 0
    assert "accuracy 99.9%," in capsys.readouterr().out


def test_explain_captions_say_when_the_run_answers_unknown(tiny_run, tmp_path, monkeypatch) -> None:
    """explain captioned a photo "daisy (87%)" where predict, serve and the page answer "unknown" for it: the
    overlay read as a confident answer. The caption now says so, with the score predict gives."""
    import numpy as np
    from PIL import Image

    from floranet.evaluation import gradcam
    from floranet.inference import load

    captions: list[str] = []
    real_grid = gradcam.image_grid
    monkeypatch.setattr(gradcam, "image_grid", lambda p, c, *a, **k: (captions.extend(c), real_grid(p, c, *a, **k)))
    odd = tmp_path / "checker.png"
    Image.fromarray((np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)).convert("RGB").save(odd)
    known = next((tiny_run.parent / "data" / "daisy").glob("*.jpg"))
    rows = load(tiny_run, runtime="tensorflow", precision="fp32").predict([odd, known])
    assert [r.unknown for r in rows] == [True, False]
    assert main(["explain", str(tiny_run), str(odd), str(known), "--out", str(tmp_path / "cams")]) == 0
    assert f"\nUNKNOWN: unlike every class (ood score {rows[0].ood_score:.3g})" in captions[0]
    assert "UNKNOWN" not in captions[1]
