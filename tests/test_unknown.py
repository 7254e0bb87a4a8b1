"""The "unknown" answer: fitted at the end of training, in every predict/serve row, carried by exports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from floranet.config import UNKNOWN_METHODS, InferenceConfig
from floranet.errors import ConfigError
from floranet.inference import formats, load
from floranet.inference import unknown as unknown_lib
from floranet.rundir import RunDir


def _blobs(seed: int, n: int, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(centres)
    return (centres[labels] + rng.normal(0, 1, size=(n, centres.shape[1]))).astype(np.float32), labels


@pytest.mark.parametrize("method", UNKNOWN_METHODS)
def test_every_method_keeps_known_images_and_flags_far_ones(method: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 6, size=(3, 8)) + 20  # positive, like pooled ReLU features
    x_train, y_train = _blobs(1, 300, centres)
    x_val, y_val = _blobs(2, 200, centres)
    x_far = rng.normal(0, 3, size=(50, 8)).astype(np.float32)  # nowhere near a class, small logits
    # Probabilities that are confident on known images and flat on far ones (msp reads only these).
    top = rng.uniform(0.7, 0.98, size=200).astype(np.float32)
    p_val = np.repeat(((1 - top) / 2)[:, None], 3, axis=1)
    p_val[np.arange(200), y_val] = top
    p_far = np.full((50, 3), 1 / 3, np.float32)
    head = [centres.T.astype(np.float32) / 10, np.zeros(3, np.float32)]  # a linear head: logits = z . centre / 10
    det = unknown_lib.fit(method, x_train, y_train, x_val, p_val, num_classes=3, keep=0.9, head=head)
    known = det.score(x_val, p_val)
    assert 0.88 <= np.mean(known <= det.threshold) <= 0.92
    assert np.all(det.score(x_far, p_far) > det.threshold)
    det.save(tmp_path)
    again = unknown_lib.UnknownDetector.load(tmp_path)
    assert again is not None and again.method == method and again.threshold == det.threshold
    np.testing.assert_allclose(again.score(x_val, p_val), known, rtol=1e-3, atol=1e-4)


def test_combined_is_four_z_scored_parts_and_old_three_part_statistics_still_score(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    centres = rng.normal(0, 6, size=(3, 8)) + 20
    x_train, y_train = _blobs(4, 120, centres)
    x_val, _ = _blobs(5, 60, centres)
    p_val = np.full((60, 3), 1 / 3, np.float32)
    head = [rng.normal(size=(8, 5)).astype(np.float32), np.zeros(5, np.float32)]
    head += [rng.normal(size=(5, 3)).astype(np.float32), np.zeros(3, np.float32)]
    det = unknown_lib.fit("combined", x_train, y_train, x_val, p_val, num_classes=3, head=head)
    assert det.to_json()["parts"] == ["knn_head", "knn", "energy", "class_mean"]
    # The fourth part is class_mean's own score: cosine distance to the nearest class mean.
    means = np.stack([x_train[y_train == c].mean(0) for c in range(3)])
    cos = unknown_lib.normalize(x_val) @ unknown_lib.normalize(means).T
    np.testing.assert_allclose(unknown_lib.components(det.stats, x_val, 1)[:, 3], 1 - cos.max(1), atol=1e-5)
    # Statistics saved before class_mean joined (no class means, three z-scoring pairs) keep their own score.
    old = {k: v for k, v in det.stats.items() if k not in ("means", "z_mean", "z_std")}
    three = unknown_lib.components(old, x_val, 1)
    assert three.shape == (60, 3)
    old.update(z_mean=three.mean(0), z_std=three.std(0))
    unknown_lib.UnknownDetector("combined", 0.5, 0.95, old).save(tmp_path)
    loaded = unknown_lib.UnknownDetector.load(tmp_path)
    assert loaded is not None and json.loads((tmp_path / RunDir.OOD).read_text())["parts"] == [
        "knn_head",
        "knn",
        "energy",
    ]
    np.testing.assert_allclose(loaded.score(x_val, p_val), ((three - three.mean(0)) / three.std(0)).mean(1), atol=1e-4)


def test_near_duplicate_distances_do_not_amplify_the_runtimes_last_digits() -> None:
    """Features two runtimes agree on to 1e-7 gave kNN distances of near-duplicates (about 1e-4) differing in
    their 7th decimal, float32's rounding of the cosine: a thousandth of the score's spread, past the compiled
    model's agreement check."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(50, 64)).astype(np.float32)
    references = unknown_lib.normalize(base)
    query = base + 0.01 * rng.normal(size=base.shape).astype(np.float32)  # near-duplicates of references
    other = (query * (1 + 1e-7 * rng.normal(size=base.shape))).astype(np.float32)  # another runtime's last digits
    near, again = (unknown_lib._knn_distance(q, references, 1) for q in (query, other))
    assert near.max() < 1e-3 and near.std() > 1e-5
    assert np.max(np.abs(near - again)) < 1e-3 * near.std()
    stats = {"means": references[:4]}
    mean_near, mean_again = (unknown_lib._score_block("class_mean", stats, q[:4], 1) for q in (query, other))
    assert np.max(np.abs(mean_near - mean_again)) < 1e-9


def test_validation_images_with_no_spread_stay_known_on_a_runtime_that_rounds_differently() -> None:
    """Validation images identical to training images (pixel-identical shots) score alike: the threshold was that
    very score, and combined divided the constant parts by 1e-6, so the compiled model's rounding (within its
    check's tolerance) answered known images "unknown"."""
    rng = np.random.default_rng(0)
    centres = (rng.normal(0, 6, size=(2, 16)) + 20).astype(np.float32)
    x = np.repeat(centres, 12, axis=0)
    y = np.repeat(np.arange(2), 12)
    probs = np.full((len(x), 2), 0.5, np.float32)
    head = [rng.normal(size=(16, 8)).astype(np.float32), np.zeros(8, np.float32)]
    head += [rng.normal(size=(8, 2)).astype(np.float32), np.zeros(2, np.float32)]
    det = unknown_lib.fit("combined", x, y, x, probs, num_classes=2, head=head)
    scores = det.score(x, probs).astype(np.float64)
    from floranet.inference import compiled

    tolerance = compiled.MAX_SCORE_REL_DIFF * max(1.0, abs(det.threshold))  # the compiled model's check
    assert np.all(scores + 0.99 * tolerance <= det.threshold)  # any score the compiled check lets through
    for _ in range(5):  # another runtime's features, a tenth of the difference the compiled check allows
        other = (x + 1e-5 * np.abs(x).max() * rng.normal(size=x.shape)).astype(np.float32)
        moved = det.score(other, probs)
        assert np.max(np.abs(moved - scores)) < tolerance and not np.any(moved > det.threshold)


def test_no_validation_images_and_bad_settings(tmp_path: Path) -> None:
    from floranet import config
    from floranet.errors import ModelError

    with pytest.raises(ModelError, match="validation"):
        unknown_lib.fit("knn", np.ones((3, 2)), np.arange(3), np.zeros((0, 2)), np.zeros((0, 3)), num_classes=3)
    with pytest.raises(ModelError, match="head's weights"):
        unknown_lib.fit("energy", np.ones((3, 2)), np.arange(3), np.ones((5, 2)), np.ones((5, 3)) / 3, num_classes=3)
    with pytest.raises(ConfigError, match="unknown_keep"):
        config.resolve(data_dir="d", out="o", unknown_keep=1.5)
    with pytest.raises(ConfigError, match="unknown_method"):
        config.resolve(data_dir="d", out="o", unknown_method="vibes")
    with pytest.raises(ConfigError, match="unknown must be"):
        InferenceConfig(unknown="yes")  # type: ignore[arg-type]
    assert unknown_lib.UnknownDetector.load(tmp_path) is None  # a run from before: no answer, no error


def test_the_threshold_keeps_the_share_asked_for_on_enough_images() -> None:
    """numpy's "higher" quantile kept one image more: every one of 20 at keep 0.95, 39 of 40. With one validation
    image combined's z-scoring divided by a zero spread (scores of +-3e4, a third of known images "unknown")."""
    from floranet.errors import ModelError

    rng = np.random.default_rng(0)
    for n, kept in ((20, 19), (40, 38), (100, 95), (1000, 950)):
        scores = rng.normal(size=n)
        assert int(np.sum(scores <= unknown_lib.threshold_for(scores, 0.95))) == kept
    probs = rng.dirichlet(np.ones(3), size=20)
    detector = unknown_lib.fit("msp", None, np.arange(0), None, probs, num_classes=3)
    assert detector.info["validation_kept"] == 0.95
    few = unknown_lib.MIN_VALIDATION - 1
    with pytest.raises(ModelError, match=f"this run has {few}, fewer than the {unknown_lib.MIN_VALIDATION} it needs"):
        unknown_lib.fit("msp", None, np.arange(0), None, probs[:few], num_classes=3)


def _odd_images(folder: Path) -> list[str]:
    """Images unlike the tiny run's colour classes."""
    folder.mkdir(exist_ok=True)
    checker = (np.indices((32, 40)).sum(0) % 2 * 255).astype("uint8")[..., None].repeat(3, 2)
    Image.fromarray(checker).save(folder / "checker.png")
    Image.fromarray(np.full((32, 40, 3), 15, np.uint8)).save(folder / "black.png")
    return [str(folder / "checker.png"), str(folder / "black.png")]


def test_trained_run_answers_unknown(tiny_run: Path, tmp_path: Path) -> None:
    run = RunDir(tiny_run)
    meta = json.loads((tiny_run / RunDir.OOD).read_text())
    assert meta["method"] == "combined" and meta["keep"] == 0.95 and run.exists(RunDir.OOD_STATS)
    with np.load(tiny_run / RunDir.OOD_STATS) as stored:  # both kNN banks in float16, as the README says
        assert stored["references"].dtype == stored["references_backbone"].dtype == np.float16
    predictor = load(tiny_run, runtime="tensorflow", precision="fp32")
    odd = _odd_images(tmp_path)
    known = str(next((Path(run.config().data_dir) / "daisy").glob("*.jpg")))
    rows = predictor.predict([*odd, known])
    assert [r.unknown for r in rows] == [True, True, False]
    assert all(isinstance(r.ood_score, float) for r in rows)
    assert rows[0].ood_score > meta["threshold"] >= rows[2].ood_score
    as_json = json.loads(formats.format_predictions(rows, "json"))
    assert as_json[0]["unknown"] is True and as_json[0]["ood_score"] == rows[0].ood_score
    header, first = formats.format_predictions(rows, "csv").splitlines()[:2]
    assert header.split(",")[-3:] == ["unknown", "ood_score", "error"] and ",true," in first
    assert "UNKNOWN" in formats.format_predictions(rows[:1], "table")
    off = load(tiny_run, runtime="tensorflow", precision="fp32", unknown=False).predict(odd)
    assert [(r.unknown, r.ood_score) for r in off] == [(False, None), (False, None)]
    # The probabilities do not change with the unknown answer on.
    np.testing.assert_allclose([p for _, p in rows[0].top_k], [p for _, p in off[0].top_k], atol=1e-6)


def test_predict_cli_and_parquet_have_the_fields(tiny_run: Path, tmp_path: Path, capsys) -> None:
    from floranet.cli import main

    odd = _odd_images(tmp_path)
    assert main(["predict", str(tiny_run), *odd, "--format", "json", "--runtime", "tensorflow"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["unknown"] for r in rows] == [True, True]
    assert main(["predict", str(tiny_run), *odd, "--format", "json", "--unknown", "off"]) == 0
    assert all(r["unknown"] is False and r["ood_score"] is None for r in json.loads(capsys.readouterr().out))
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "p.parquet"
    assert main(["predict", str(tiny_run), *odd, "--output", str(out)]) == 0
    table = pq.read_table(out).to_pydict()
    assert table["unknown"] == [True, True] and all(s > 0 for s in table["ood_score"])


def test_server_json_and_page_say_unknown(tiny_run: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from floranet.serving import create_app

    odd = _odd_images(tmp_path)
    local = "http://127.0.0.1"  # a Host the server answers on loopback (TestClient's default is not)
    with TestClient(create_app(tiny_run, runtime="tensorflow", precision="fp32"), base_url=local) as client:
        body = client.post("/predict", files={"file": ("checker.png", Path(odd[0]).read_bytes())}).json()
        assert body["unknown"] is True and body["ood_score"] > 0
        assert client.get("/health").json()["unknown"] == "combined"
        assert "answer.unknown" in client.get("/").text
    with TestClient(
        create_app(tiny_run, runtime="tensorflow", precision="fp32", unknown=False), base_url=local
    ) as client:
        body = client.post("/predict", files={"file": ("checker.png", Path(odd[0]).read_bytes())}).json()
        assert body["unknown"] is False and body["ood_score"] is None


def test_export_carries_the_statistics_and_says_what_it_cannot_do(writable_run: Path) -> None:
    from floranet.export import export_run

    result = export_run(writable_run, "keras", max_images=0)
    assert (result.path / RunDir.OOD).exists() and (result.path / RunDir.OOD_STATS).exists()
    readme = (result.path / "README.txt").read_text()
    # A keras export's folder is one floranet predict and serve read, unknown answer and all: its README.txt said
    # the answer was not available from it, as it says of the other formats
    assert "floranet predict/serve on this folder answer 'unknown'" in readme and "NOT AVAILABLE" not in readme
    odd = _odd_images(writable_run.parent)
    assert load(result.path, runtime="tensorflow", precision="fp32").predict(odd[:1])[0].unknown is True
    tflite = export_run(writable_run, "tflite", max_images=0)
    assert "NOT AVAILABLE FROM THIS EXPORT ALONE" in (tflite.path / "README.txt").read_text()
    shutil.rmtree(tflite.path)
    # The model file's own metadata carries the summary (read back with the format's reader).
    from floranet.export.metadata import read_metadata

    summary = result.metadata["unknown"] if result.metadata else {}
    threshold = json.loads((writable_run / RunDir.OOD).read_text())["threshold"]
    assert summary["available"] and summary["method"] == "combined" and summary["threshold"] == threshold
    assert summary["from_this_export"] is False and summary["statistics_file"] == RunDir.OOD_STATS
    assert "references" in summary["statistics"]
    assert json.loads(read_metadata("keras", result.path)[0].extra["unknown"]) == summary
    shutil.rmtree(result.path)
    (writable_run / RunDir.OOD).unlink()  # a run without an unknown answer: the export says so
    bare = export_run(writable_run, "keras", max_images=0)
    assert bare.metadata and bare.metadata["unknown"]["available"] is False
    assert "no unknown answer" in bare.summary() and not (bare.path / RunDir.OOD).exists()
    assert "Unknown answer: none" in (bare.path / "README.txt").read_text()


def test_report_has_unknown_and_audit_sections(tiny_run: Path) -> None:
    html = (tiny_run / RunDir.REPORT).read_text()
    assert "<h2>Unknown answer</h2>" in html and "<h2>Data audit</h2>" in html
    assert "least like the training classes" in html
    assert "the mean of z-scored knn_head, knn, energy, class_mean" in html


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        ({"threshold": float("nan")}, "threshold must be a finite number"),
        ({"threshold": "abc"}, "threshold must be a finite number"),
        ({"threshold": None}, "threshold must be a finite number"),
        ({"threshold": [1]}, "threshold must be a finite number"),
        ({"keep": 1.5}, r"keep must be a number in \(0, 1\)"),
        ({"k": 0}, "k must be an int >= 1"),
        ({"k": "x"}, "k must be an int >= 1"),
        ({"temperature": -1}, "temperature must be a number > 0"),
        ("[1, 2]", "it must hold a JSON object"),
    ],
    ids=["nan", "text", "null", "list", "keep", "k-zero", "k-text", "temperature", "not-an-object"],
)
def test_a_damaged_ood_json_is_named_not_a_traceback_or_a_silent_off(writable_run: Path, edit, needle) -> None:
    """A NaN threshold answered every image as known without a word; text, null or a list was a traceback; k 0
    scored against the farthest neighbour."""
    from floranet.errors import ModelError
    from floranet.inference.unknown import UnknownDetector

    meta = json.loads((writable_run / RunDir.OOD).read_text())
    damaged = edit if isinstance(edit, str) else json.dumps({**meta, **edit})
    (writable_run / RunDir.OOD).write_text(damaged)
    with pytest.raises(ModelError, match=f"ood.json is damaged: {needle}"):
        UnknownDetector.load(writable_run)


def test_a_damaged_calibration_temperature_is_named(writable_run: Path) -> None:
    """A hand-edited temperature of -1 flipped every answer's top class under --calibrated; text was a traceback."""
    from floranet.errors import ModelError

    calib = json.loads((writable_run / RunDir.CALIBRATION).read_text())
    for bad in (-1, 0, "x", None):
        (writable_run / RunDir.CALIBRATION).write_text(json.dumps({**calib, "temperature": bad}))
        with pytest.raises(ModelError, match="calibration.json is damaged: temperature must be a number > 0"):
            RunDir(writable_run).temperature()


def test_the_unknown_answer_decodes_the_images_with_the_doctors_verdict(writable_run: Path, monkeypatch) -> None:
    """The unknown answer's own pass over the images (when training hands over no embeddings of them) guessed each
    file's decoder, where training takes the doctor's verdict: its threshold could be fitted on other pixels."""
    from floranet.evaluation import ood
    from floranet.training import TrainResult
    from floranet.workflows.after_training import audit_and_unknown

    run = RunDir(writable_run)
    config = run.config(audit=False)
    assert config.fine_tune_epochs  # the final model's pass, not stage 1's cached features
    verdict = {r.path: i % 2 == 0 for i, r in enumerate(run.split().rows)}  # any verdict: the one given is used
    passed: list[tuple[list[str], object]] = []
    real = ood.batch.run_on_files

    def recording(fn, paths, **kwargs):
        passed.append(([Path(p).relative_to(config.data_dir).as_posix() for p in paths], kwargs.get("tf_decodable")))
        return real(fn, paths, **kwargs)

    monkeypatch.setattr(ood.batch, "run_on_files", recording)
    said: list[str] = []
    result = TrainResult(run, run.class_names(), model=run.load_model(), tf_decodable=verdict)
    audit_and_unknown(result, config, say=said.append)
    assert [s for s in said if s.startswith("Unknown answer: ") and "threshold" in s], said
    assert len(passed) == 2  # the training images, then the validation images
    for paths, flags in passed:
        assert flags == [verdict[p] for p in paths]
