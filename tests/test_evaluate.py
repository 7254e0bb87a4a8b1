"""Evaluation views: metrics equal scikit-learn's, confusion rows follow split.csv, calibration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

from floranet.evaluation import Evaluation
from floranet.evaluation.calibration import expected_calibration_error, fit_temperature
from floranet.evaluation.metrics import classification_metrics
from floranet.inference.predictor import apply_temperature
from floranet.rundir import RunDir

NAMES = ("daisy", "roses", "tulips", "sunflowers")


def fixed_predictions(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(NAMES), n)
    logits = rng.normal(0, 1, (n, len(NAMES)))
    logits[np.arange(n), labels] += 1.5  # better than chance, not perfect
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probs


def test_metrics_equal_scikit_learn() -> None:
    labels, probs = fixed_predictions()
    m = classification_metrics(labels, probs, NAMES, top_k=2)
    pred = probs.argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(labels, pred))
    assert m["loss"] == pytest.approx(skm.log_loss(labels, probs))
    assert m["top_2_accuracy"] == pytest.approx(skm.top_k_accuracy_score(labels, probs, k=2))
    p, r, f, s = skm.precision_recall_fscore_support(labels, pred)
    for i, name in enumerate(NAMES):
        assert m["per_class"][name]["precision"] == pytest.approx(p[i])
        assert m["per_class"][name]["recall"] == pytest.approx(r[i])
        assert m["per_class"][name]["f1"] == pytest.approx(f[i])
        assert m["per_class"][name]["support"] == s[i]
    assert m["confusion_matrix"] == skm.confusion_matrix(labels, pred).tolist()
    norm = np.asarray(m["confusion_matrix_normalized"])
    np.testing.assert_allclose(norm.sum(axis=1), 1.0, atol=1e-3)


def test_confusion_rows_follow_the_manifest_after_shuffling() -> None:
    labels, probs = fixed_predictions(60)
    paths = tuple(f"{NAMES[y]}/img{i}.jpg" for i, y in enumerate(labels))
    ev = Evaluation(NAMES, paths, labels, probs)
    perm = np.random.default_rng(3).permutation(len(labels))
    shuffled = Evaluation(NAMES, tuple(paths[i] for i in perm), labels[perm], probs[perm])
    np.testing.assert_array_equal(ev.confusion_matrix(), shuffled.confusion_matrix())
    # Each row i counts exactly the manifest's images of class i.
    for i, name in enumerate(NAMES):
        assert ev.confusion_matrix()[i].sum() == sum(p.startswith(name + "/") for p in paths)
    worst = ev.top_losses(5)
    assert all(w["true"] == w["path"].split("/")[0] and w["true"] != w["predicted"] for w in worst)
    assert [w["loss"] for w in worst] == sorted((w["loss"] for w in worst), reverse=True)
    pairs = ev.most_confused()
    cm = ev.confusion_matrix()
    assert pairs[0][2] == max(cm[i, j] for i in range(4) for j in range(4) if i != j)


def test_temperature_scaling_lowers_ece_of_an_overconfident_model() -> None:
    labels, probs = fixed_predictions(500, seed=1)
    overconfident = apply_temperature(probs, 0.25)  # sharpen: same argmax, far too sure
    ece_before = expected_calibration_error(overconfident, labels)
    t = fit_temperature(overconfident, labels)
    assert t > 2.0  # undoes the sharpening
    ece_after = expected_calibration_error(apply_temperature(overconfident, t), labels)
    assert ece_after < ece_before / 2
    np.testing.assert_array_equal(apply_temperature(overconfident, t).argmax(1), overconfident.argmax(1))
    ev = Evaluation(NAMES, tuple(str(i) for i in range(500)), labels, overconfident).with_temperature()
    assert ev.ece(calibrated=True) < ev.ece()


def test_no_temperature_is_fitted_when_every_answer_is_right_or_the_search_runs_to_100() -> None:
    """All 6 validation answers right fitted T = 0.016, and the calibrated answers said 100% for any photo; all
    wrong (here, the true class never second) runs to the upper bound, 100, and fits none."""
    from floranet.evaluation.calibration import TemperatureFit, search_temperature

    labels, probs = fixed_predictions(60, seed=3)
    right = np.eye(len(NAMES), dtype=np.float32)[probs.argmax(1)] * 0.5 + probs * 0.5  # same argmax as probs
    assert fit_temperature(right, right.argmax(1)) == 1.0
    wrong = (right.argmax(1) + 1) % len(NAMES)
    assert search_temperature(right, wrong) == TemperatureFit(1.0, False, "upper")
    mixed = right.argmax(1).copy()
    mixed[:5] = wrong[:5]
    assert fit_temperature(right, mixed) != 1.0  # with some wrong answers there is a temperature to find


def test_a_flat_likelihood_keeps_temperature_one_not_fitted(tmp_path: Path) -> None:
    """Every answer equally sure (uniform): no temperature changes the NLL, yet the optimiser's end point, 99.9995,
    was kept (a tie with T = 1 counted as better) and calibration.json said it was fitted."""
    import json

    from floranet.evaluation import write_evaluation
    from floranet.rundir import RunDir

    flat, labels = np.full((6, 3), 1 / 3, np.float32), np.array([0, 0, 1, 1, 2, 2])
    assert fit_temperature(flat, labels) == 1.0
    ev = Evaluation(NAMES[:3], tuple(str(i) for i in range(6)), labels, flat).with_temperature()
    write_evaluation(ev, RunDir(tmp_path), facts={})
    assert json.loads((tmp_path / RunDir.CALIBRATION).read_text())["fitted"] is False


def test_an_evaluation_of_no_image_leaves_no_earlier_predictions_beside_it(tmp_path: Path) -> None:
    """With no validation image, metrics.json said num_examples=0 beside an earlier evaluation's predictions.csv."""
    from floranet.evaluation import write_evaluation
    from floranet.rundir import RunDir

    labels, probs = fixed_predictions(6)
    write_evaluation(Evaluation(NAMES, tuple(map(str, range(6))), labels, probs), RunDir(tmp_path), facts={})
    assert (tmp_path / RunDir.PREDICTIONS).exists()
    write_evaluation(Evaluation(NAMES, (), labels[:0], probs[:0]), RunDir(tmp_path), facts={})
    assert not (tmp_path / RunDir.PREDICTIONS).exists()
    assert RunDir(tmp_path).metrics()["num_examples"] == 0


def test_temperature_is_found_past_twenty_and_ties_rank_as_predict_ranks_them() -> None:
    """The search stopped at T = 20 (a tiny run's optimum was 33.6); top-2 accuracy broke ties the other way from
    predict's top-k (scikit-learn ranks the higher index first)."""
    from scipy.optimize import minimize_scalar

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 0.3, (300, 4))
    calibrated = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(4, p=row) for row in calibrated])  # drawn from them: right at T = 1
    sharp = np.exp(40 * logits) / np.exp(40 * logits).sum(axis=1, keepdims=True)  # far too sure: best T far above 20
    nll = lambda t: -np.mean(np.log(np.clip(apply_temperature(sharp, t)[np.arange(300), labels], 1e-12, 1)))  # noqa: E731
    best = float(np.exp(minimize_scalar(lambda u: nll(np.exp(u)), bounds=(-7, 7), method="bounded").x))
    assert best > 20 and fit_temperature(sharp, labels) == pytest.approx(best, rel=1e-3)
    assert classification_metrics([1], np.array([[1.0, 0.0, 0.0]]), ["a", "b", "c"])["top_2_accuracy"] == 1.0


def test_predictions_csv_quotes_names_a_spreadsheet_would_run_and_reads_them_back() -> None:
    """predictions.csv wrote '=SUM(1+1)/img.jpg' and a class '=SUM(1+1)' as they were: every other floranet CSV
    quotes them."""
    names = ("=SUM(1+1)", "a,b", "-neg", "'=q")
    ev = Evaluation(
        names, ("=SUM(1+1)/0.jpg", "a,b/1.jpg", "-neg/2.jpg", "'=q/3.jpg"), np.arange(4), np.eye(4, dtype=np.float32)
    )
    text = ev.to_csv()
    assert not any(line[:1] in "=+-@" for line in text.splitlines())
    assert text.splitlines()[0] == "path,label,'=SUM(1+1),\"a,b\",'-neg,''=q"
    back = Evaluation.from_csv(text)
    assert back.class_names == names and back.paths == ev.paths and list(back.labels) == [0, 1, 2, 3]


def test_metrics_dict_has_every_view() -> None:
    labels, probs = fixed_predictions(40)
    m = Evaluation(NAMES, tuple(str(i) for i in range(40)), labels, probs).with_temperature().metrics()
    for key in (
        "accuracy",
        "loss",
        "top_2_accuracy",
        "per_class",
        "confusion_matrix",
        "most_confused",
        "top_losses",
        "calibration",
    ):
        assert key in m
    assert len(m["calibration"]["reliability"]) == 15


def test_two_classes_have_metrics_too() -> None:
    m = classification_metrics(np.array([0, 1, 1]), np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]), ["a", "b"])
    assert m["accuracy"] == pytest.approx(2 / 3) and m["top_2_accuracy"] == 1.0


def test_macro_f1_averages_the_classes_the_images_or_answers_have() -> None:
    """evaluate --data on a folder of one of three classes: all right gave macro F1 0.333."""
    perfect = classification_metrics(np.array([0, 0]), np.array([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1]]), NAMES[:3])
    assert perfect["macro_f1"] == 1.0 and perfect["per_class"]["roses"]["support"] == 0
    wrong = classification_metrics(np.array([0, 0]), np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1]]), NAMES[:3])
    assert wrong["macro_f1"] == pytest.approx((2 / 3 + 0) / 2)  # roses was answered: its F1 of 0 counts
    labels, probs = fixed_predictions()  # every class present: scikit-learn's macro average
    pred = probs.argmax(1)
    assert classification_metrics(labels, probs, NAMES)["macro_f1"] == pytest.approx(
        skm.f1_score(labels, pred, average="macro")
    )


def test_a_class_with_no_image_has_its_figures_not_measured() -> None:
    """A class with no validation image had precision, recall and F1 0 (scikit-learn's zero_division), which
    reads as a class the model fails on: they are None (null) now, unless the class was answered, whose precision
    and F1 of 0 are measured (every such answer was wrong) and counted by macro F1."""
    probs = np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1]])
    m = classification_metrics(np.array([0, 0]), probs, NAMES[:3])
    assert m["per_class"]["roses"] == {"precision": 0.0, "recall": None, "f1": 0.0, "support": 0}  # answered once
    assert m["per_class"][NAMES[2]] == {"precision": None, "recall": None, "f1": None, "support": 0}
    assert m["per_class"][NAMES[0]]["recall"] == 0.5 and m["macro_f1"] == pytest.approx((2 / 3 + 0) / 2)
    from floranet.evaluation.metrics import unmeasured_classes

    assert unmeasured_classes(m) == ["roses", NAMES[2]]
    assert json.loads(json.dumps(m))["per_class"][NAMES[2]]["f1"] is None


def test_evaluating_a_folder_with_no_usable_image_says_so(tiny_run, tmp_path) -> None:
    from floranet.errors import DatasetError
    from floranet.evaluation import evaluate_run

    bad = tmp_path / "bad" / "roses"
    bad.mkdir(parents=True)
    (bad / "a.jpg").write_text("not an image")
    for folder in (tmp_path / "bad", tmp_path / "bad" / "roses"):  # unreadable images; a flat folder of them
        with pytest.raises(DatasetError, match="no usable images"):
            evaluate_run(tiny_run, data_dir=folder)


def test_a_damaged_run_file_is_named_and_a_damaged_compiled_record_is_ignored(writable_run) -> None:
    from floranet.errors import ModelError
    from floranet.inference import compiled
    from floranet.rundir import RunDir

    run = RunDir(writable_run)
    (writable_run / RunDir.CLASS_NAMES).write_text("[1, 2")
    with pytest.raises(ModelError, match="class_names.json is damaged"):
        run.class_names()
    (writable_run / RunDir.OOD_STATS).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ModelError, match="ood.npz cannot be read"):
        run.read_npz(RunDir.OOD_STATS)
    (writable_run / RunDir.COMPILED).mkdir(exist_ok=True)
    (writable_run / RunDir.COMPILED / RunDir.COMPILED_INFO).write_text("{bad")
    assert compiled.info(run) == {} and compiled.usable(run) is None  # a cache: model.keras answers


def _own_data_folder(run_dir: Path, tmp_path: Path) -> tuple[RunDir, Path]:
    """The run and a copy of its data folder, which its config.yaml now names: a test may delete files there."""
    import shutil

    run = RunDir(run_dir)
    data = tmp_path / "data"
    shutil.copytree(run.config().data_dir, data)
    config = (run_dir / RunDir.CONFIG).read_text()
    (run_dir / RunDir.CONFIG).write_text(config.replace(str(run.config().data_dir), str(data)))
    return run, data


def test_validation_files_gone_or_changed_since_training_are_counted_not_scored(writable_run, tmp_path, capsys) -> None:
    """A removed file was dropped silently and a replaced one scored under its old label (split.csv has its
    sha256): evaluate now leaves both out, says so, and records the counts in metrics.json."""
    import json
    import shutil

    from floranet.cli import main
    from floranet.rundir import RunDir

    run, data = _own_data_folder(writable_run, tmp_path)
    val = run.split().validation()
    assert len(val) >= 3
    (data / val[0].path).unlink()
    other = next(r for r in val[1:] if r.label != val[1].label)
    shutil.copyfile(data / other.path, data / val[1].path)  # a photo of another class under the old name
    assert main(["evaluate", str(writable_run)]) == 0
    err = capsys.readouterr().err
    recorded = len(val)
    assert (
        f"1 validation file(s) of split.csv are gone and 1 changed since training (sha256): evaluated on the "
        f"other {recorded - 2} of {recorded}" in err
    )
    metrics = json.loads((writable_run / RunDir.METRICS).read_text())
    assert metrics["validation_files"] == {"recorded": recorded, "missing": 1, "changed": 1, "evaluated": recorded - 2}
    assert metrics["num_examples"] == recorded - 2


def test_a_class_whose_validation_files_are_gone_is_not_said_to_have_none(writable_run, tmp_path, capsys) -> None:
    """With a class's validation files deleted since training, the card and report said "the validation split holds
    no image of" it (its Data table lists them) and still called its figures "rough" from the split's counts; and
    `evaluate --data` on a folder with an empty class folder gave one accuracy without a word of that class."""
    import json
    import shutil

    from floranet.cli import main
    from floranet.rundir import RunDir

    run, data = _own_data_folder(writable_run, tmp_path)
    val = run.split().validation()
    lost = val[0].label
    for row in val:
        if row.label == lost:
            (data / row.path).unlink()
    assert main(["evaluate", str(writable_run)]) == 0 and main(["report", str(writable_run)]) == 0
    n = sum(r.label == lost for r in val)
    why = f"none of its validation images was there as at training ({n} of the split's {len(val)} validation files"
    card = (writable_run / RunDir.MODEL_CARD).read_text(encoding="utf-8")
    assert f"- Not evaluated: {lost}: {why} were gone or changed when evaluated)" in card
    assert "holds no image" not in card and not any(
        line.startswith("- Few validation images") and lost in line for line in card.splitlines()
    )
    page = (writable_run / RunDir.REPORT).read_text(encoding="utf-8")
    assert f"n/a: not measured for {lost}, as {why}".replace("'", "&#x27;") in page
    # Another folder with an empty class folder: its accuracy omits that class, which is said
    other = tmp_path / "other"
    for name in run.class_names():
        (other / name).mkdir(parents=True)
    for row in val:
        if row.label != lost:
            shutil.copy(data / row.path, other / row.path)
    capsys.readouterr()
    assert main(["evaluate", str(writable_run), "--data", str(other)]) == 0
    assert f"Not measured (no image evaluated): {lost}." in capsys.readouterr().err
    assert f"; not measured: {lost})." in (writable_run / RunDir.MODEL_CARD).read_text(encoding="utf-8")
    assert json.loads((writable_run / RunDir.METRICS_EXTERNAL).read_text())["per_class"][lost]["support"] == 0


def test_evaluate_data_leaves_out_the_images_the_run_trained_on(writable_run, tmp_path, capsys) -> None:
    """evaluate --data on the very folder the run trained on published accuracy on its training images, without a
    word. They are now left out (the same file as split.csv's training side), counted and said."""
    import json
    import shutil

    from floranet.cli import main
    from floranet.evaluation import evaluate_run
    from floranet.rundir import RunDir

    run = RunDir(writable_run)
    trained = Path(run.config().data_dir)
    split = run.split()
    mixed = tmp_path / "mixed"
    shutil.copytree(trained, mixed)
    ev = evaluate_run(writable_run, data_dir=mixed)
    assert ev.extra["training_images_left_out"] == len(split.train())
    assert sorted(ev.paths) == sorted(r.path for r in split.validation())
    assert main(["evaluate", str(writable_run), "--data", str(mixed)]) == 0
    assert f"{len(split.train())} image(s) of {mixed} are training images of the run" in capsys.readouterr().err
    external = json.loads((writable_run / "metrics_external.json").read_text())
    assert external["training_images_left_out"] == len(split.train())
    only_training = tmp_path / "only"
    for r in split.train():
        (only_training / r.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(trained / r.path, only_training / r.path)
    assert main(["evaluate", str(writable_run), "--data", str(only_training)]) == 2
    assert "is one the run trained on" in capsys.readouterr().err


def test_a_moved_data_folder_is_named_and_unreadable_files_are_counted(writable_run, tmp_path, capsys) -> None:
    """With the data folder moved, evaluate blamed the split ("every image is on the training side"); with
    --data, files it could not read were dropped from the figures without a word."""
    import json
    import shutil

    from floranet.cli import main
    from floranet.rundir import RunDir

    run = RunDir(writable_run)
    config = (writable_run / RunDir.CONFIG).read_text()
    data = Path(run.config().data_dir)
    (writable_run / RunDir.CONFIG).write_text(config.replace(str(data), str(tmp_path / "moved_away")))
    assert main(["evaluate", str(writable_run)]) == 2
    recorded = len(run.split().validation())
    assert f"none of the run's {recorded} validation images is in" in capsys.readouterr().err
    (writable_run / RunDir.CONFIG).write_text(config)
    other = tmp_path / "other"
    for name in run.class_names()[:2]:
        shutil.copytree(data / name, other / name)
    (other / run.class_names()[0] / "notes.jpg").write_text("not an image")
    (other / run.class_names()[1] / "empty.png").write_bytes(b"")
    trained = {r.path for r in run.split().train()}
    for name in run.class_names()[:2]:  # images the run has not seen, so that there is something to evaluate
        for f in (other / name).iterdir():
            if f"{name}/{f.name}" in trained:
                f.write_bytes(f.read_bytes() + b"\0")
    assert main(["evaluate", str(writable_run), "--data", str(other)]) == 0
    assert "2 file(s) could not be read as images and are left out" in capsys.readouterr().err
    assert json.loads((writable_run / RunDir.METRICS_EXTERNAL).read_text())["unreadable_left_out"] == 2


def test_evaluate_rewrites_the_files_it_writes_when_they_are_damaged(writable_run, capsys) -> None:
    """A damaged metrics.json, calibration.json or metrics_external.json stopped `evaluate` (after predicting every
    image) with "rerun the step that wrote it", though evaluate is that step: it now writes them anew; the old
    metrics.json only costs the training facts it held, said; the others are not read."""
    import json

    from floranet.cli import main
    from floranet.rundir import RunDir

    run = RunDir(writable_run)
    data = run.config().data_dir
    (writable_run / RunDir.METRICS).write_text("garbage")
    (writable_run / RunDir.CALIBRATION).write_text(json.dumps({"temperature": -1}))
    assert main(["evaluate", str(writable_run)]) == 0
    err = capsys.readouterr().err
    assert "metrics.json could not be read (JSONDecodeError" in err and "without the training facts it held" in err
    assert run.metrics()["source"] == "validation split" and run.temperature() > 0
    assert main(["evaluate", str(writable_run)]) == 0 and "could not be read" not in capsys.readouterr().err
    (writable_run / RunDir.METRICS_EXTERNAL).write_text("garbage")
    assert main(["evaluate", str(writable_run), "--data", data]) == 0
    assert "could not be read" not in capsys.readouterr().err
    assert json.loads((writable_run / RunDir.METRICS_EXTERNAL).read_text())["num_examples"] > 0


def test_evaluate_rewrites_a_metrics_file_that_is_not_an_object(writable_run, capsys) -> None:
    """metrics.json holding `[1,2]` was an AttributeError traceback ('list' object has no attribute 'items'):
    it is treated as unreadable, as a file that is not JSON is."""
    from floranet.cli import main
    from floranet.rundir import RunDir

    (writable_run / RunDir.METRICS).write_text("[1,2]")
    assert main(["evaluate", str(writable_run)]) == 0
    err = capsys.readouterr().err
    assert "metrics.json could not be read (not a JSON object but list)" in err and "Traceback" not in err
    assert RunDir(writable_run).metrics()["source"] == "validation split"


def test_evaluate_data_records_the_folder_as_an_absolute_path(writable_run, tmp_path, monkeypatch, capsys) -> None:
    """`evaluate RUN --data ext_sub` recorded "folder ext_sub", relative to the shell's folder then, in
    metrics_external.json and the model card; it is now absolute, as config.yaml records its paths."""
    import json
    import shutil

    from floranet.cli import main
    from floranet.rundir import RunDir

    run = RunDir(writable_run)
    trained = Path(run.config().data_dir)
    for r in run.split().validation():  # images the run has not trained on
        (tmp_path / "ext_sub" / r.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(trained / r.path, tmp_path / "ext_sub" / r.path)
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", str(writable_run), "--data", "ext_sub"]) == 0
    source = json.loads((writable_run / RunDir.METRICS_EXTERNAL).read_text())["source"]
    assert source == f"folder {tmp_path / 'ext_sub'}"
    assert str(tmp_path / "ext_sub").replace("_", "\\_") in (writable_run / "README.md").read_text(encoding="utf-8")


def test_an_interrupted_evaluate_leaves_no_mismatch_that_the_report_would_show(writable_run, monkeypatch, capsys):
    """evaluate wrote metrics.json first: a Ctrl-C before predictions.csv left the new metrics (5 images, 20%)
    beside the old predictions and plots (6 images), and `report` showed both without a word. metrics.json is now
    written last, records the sha256 of its predictions.csv, and a pair of different evaluations is refused."""
    from floranet.cli import main
    from floranet.errors import ModelError
    from floranet.evaluation import read_evaluation
    from floranet.rundir import RunDir

    run = RunDir(writable_run)
    predictions, metrics = writable_run / RunDir.PREDICTIONS, writable_run / RunDir.METRICS
    before = metrics.stat().st_ino
    write_text = RunDir.write_text

    def killed(self: RunDir, name: str, text: str) -> Path:
        if name == RunDir.PREDICTIONS:
            raise KeyboardInterrupt  # Ctrl-C, or a kill, between the files
        return write_text(self, name, text)

    with monkeypatch.context() as m:
        m.setattr(RunDir, "write_text", killed)
        assert main(["evaluate", str(writable_run)]) == 130
    assert metrics.stat().st_ino == before  # not replaced: it is written last
    good = predictions.read_bytes()
    rows = good.decode().splitlines(keepends=True)
    predictions.write_text("".join(rows[:-1]))  # another evaluation's predictions, of one image fewer
    count = rf"it holds {len(rows) - 2} prediction\(s\), metrics.json counts num_examples={len(rows) - 1}"
    with pytest.raises(ModelError, match=rf"predictions.csv and .*metrics.json are of different evaluations \({count}"):
        read_evaluation(run)
    assert main(["report", str(writable_run), "--out", str(writable_run.parent / "r.html")]) == 2
    assert f"rerun `floranet evaluate {writable_run}`" in capsys.readouterr().err
    header, first, *rest = good.decode().splitlines(keepends=True)
    cells = first.rstrip("\r\n").split(",")
    cells[-1] = f"{float(cells[-1]) * 0.5:.9g}"  # as many rows, other figures
    predictions.write_text("".join([header, ",".join(cells) + "\r\n", *rest]))
    with pytest.raises(ModelError, match="its sha256 is not the one metrics.json records"):
        read_evaluation(run)
    assert main(["evaluate", str(writable_run)]) == 0
    assert read_evaluation(run) is not None


def test_evaluate_data_refuses_a_damaged_metrics_file_before_writing_anything(writable_run, tmp_path, capsys) -> None:
    """`evaluate RUN --data DIR` with a damaged metrics.json wrote metrics_external.json and predictions_external.csv,
    then exited 2 from the model card (which is written from metrics.json): it now refuses before predicting."""
    from floranet.cli import main
    from floranet.rundir import RunDir

    run = RunDir(writable_run)
    (writable_run / RunDir.METRICS).write_text("{")  # cut short
    assert main(["evaluate", str(writable_run), "--data", run.config().data_dir]) == 2
    assert "metrics.json is damaged (not valid JSON" in capsys.readouterr().err
    assert not run.exists(RunDir.METRICS_EXTERNAL) and not run.exists(RunDir.PREDICTIONS_EXTERNAL)
    assert main(["evaluate", str(writable_run)]) == 0  # plain evaluate writes it again
    assert main(["evaluate", str(writable_run), "--data", run.config().data_dir]) == 0
    assert run.exists(RunDir.METRICS_EXTERNAL)


def test_evaluate_data_says_why_each_image_is_left_out(writable_run, tmp_path, capsys) -> None:
    """`evaluate --data` counted label conflicts (one file in two class folders) and images over the run's
    max_pixels among the files that "could not be read as images": each reason is now counted and said as itself."""
    import json
    import re
    import shutil

    import numpy as np
    from PIL import Image

    from floranet.cli import main
    from floranet.rundir import RunDir

    run = RunDir(writable_run)
    trained, (first, second, _) = Path(run.config().data_dir), run.class_names()
    other = tmp_path / "other"
    for r in run.split().validation():  # images the run has not trained on
        (other / r.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(trained / r.path, other / r.path)
    one = next((other / first).iterdir())
    shutil.copy(one, other / second / "copy.jpg")  # a label conflict: both copies are left out
    Image.fromarray(np.zeros((60, 60, 3), np.uint8)).save(other / first / "big.png")  # 3600 px, over 2000
    (other / second / "notes.jpg").write_text("not an image")
    config = (writable_run / RunDir.CONFIG).read_text()
    (writable_run / RunDir.CONFIG).write_text(re.sub(r"(?m)^max_pixels: .*$", "max_pixels: 2000", config))
    assert main(["evaluate", str(writable_run), "--data", str(other)]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "1 image(s) are larger than the run decodes (its max_pixels) and are left out" in err
    assert "2 image(s) are label conflicts (the same file in two class folders" in err
    assert "1 file(s) could not be read as images" in err
    external = json.loads((writable_run / RunDir.METRICS_EXTERNAL).read_text())
    counts = {k: external[k] for k in ("unreadable_left_out", "too_large_left_out", "label_conflicts_left_out")}
    assert counts == {"unreadable_left_out": 1, "too_large_left_out": 1, "label_conflicts_left_out": 2}


def test_evaluate_data_shows_class_names_that_only_look_like_the_runs(writable_run, tmp_path) -> None:
    """Class folders the run does not know were listed unquoted: "café" in NFD, "roses " and a Cyrillic "rоses"
    read exactly as the known names. They are quoted, a name that is a known one in another Unicode form or white
    space says so (it is not taken for it), and one that is not ASCII shows its escapes."""
    import json

    from floranet.errors import DatasetError
    from floranet.evaluation import evaluate_run
    from floranet.rundir import RunDir

    run = RunDir(writable_run)
    photo = next(r for r in run.split().validation())
    (writable_run / RunDir.CLASS_NAMES).write_text(json.dumps(["caf\u00e9", "roses", "tulips"]))
    data = (Path(run.config().data_dir) / photo.path).read_bytes()
    for i, name in enumerate(("cafe\u0301", "roses ", "r\u043eses", "tulips")):
        (tmp_path / "other" / name).mkdir(parents=True)
        (tmp_path / "other" / name / "x.jpg").write_bytes(data + b"\0" * i)  # not one file in two classes
    with pytest.raises(DatasetError) as caught:
        evaluate_run(writable_run, data_dir=tmp_path / "other")
    message = str(caught.value)
    assert "'cafe\u0301' (it and the known 'caf\u00e9' are one name written in two Unicode forms)" in message
    assert "'roses ' (it and the known 'roses' differ only by white space" in message
    assert "'r\u043eses' (written 'r\\u043eses')" in message
    assert message.endswith("Known: 'caf\u00e9', 'roses', 'tulips'")


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["evaluate", "{run}", "--data", ""], "data"),
        (["evaluate", ""], "run_dir"),
        (["doctor", ""], "data_dir"),
        (["report", "{run}", "--out", ""], "out"),
        (["explain", "{run}", "{photo}", "--out", ""], "out"),
        (["predict", "{run}", "{photo}", "--output", ""], "output"),
        (["train", "{data}", "--out", ""], "out"),
    ],
)
def test_an_empty_path_argument_is_refused(writable_run, tmp_path, monkeypatch, capsys, argv, name) -> None:
    """`evaluate RUN --data ""` (an unset shell variable) evaluated the current folder, as Path("") is "."; every
    command's file and folder arguments now refuse an empty path, before anything is read or written."""
    from floranet.cli import main
    from floranet.rundir import RunDir

    data = RunDir(writable_run).config().data_dir
    photo = str(Path(data) / RunDir(writable_run).split().validation()[0].path)
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    args = [a.format(run=writable_run, photo=photo, data=data) for a in argv]
    assert main(args) == 2
    assert f"{name} must be a path, not empty (an empty path would be the current folder). Received: {name}=''" in (
        capsys.readouterr().err
    )
    assert not list(here.iterdir())


def test_temperature_scaling_is_exact_for_probabilities_far_below_1e_12() -> None:
    """The logs were floored at 1e-12: a confident model (a quarter of its float32 probabilities below it) was fitted
    T = 6.12 where scaling its logits gives 6.86, and its calibrated answers were up to 0.06 off."""
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax, softmax

    rng = np.random.default_rng(7)
    logits = rng.normal(size=(200, 10)) * 12.0
    labels = np.where(rng.random(200) < 0.7, logits.argmax(1), rng.integers(0, 10, 200))
    probs = softmax(logits, axis=1).astype(np.float32)  # what the model gives
    assert np.mean(probs < 1e-12) > 0.1 and (probs > 0).all()
    for t in (0.5, 3.0, 7.0):
        np.testing.assert_allclose(apply_temperature(probs, t), softmax(logits / t, axis=1), rtol=0, atol=1e-6)
    nll = lambda u: -np.mean(log_softmax(logits / np.exp(u), axis=1)[np.arange(200), labels])  # noqa: E731
    best = float(np.exp(minimize_scalar(nll, bounds=(np.log(0.01), np.log(100)), method="bounded").x))
    assert best > 2 and fit_temperature(probs, labels) == pytest.approx(best, rel=1e-3)
    # An exact zero stays zero after scaling; one on the true class leaves the fit finite (not T = 1 by default).
    np.testing.assert_array_equal(apply_temperature(np.array([[1.0, 0.0]]), 5.0), [[1.0, 0.0]])
    zeroed = probs.copy()
    zeroed[0] = 0.0
    zeroed[0, (labels[0] + 1) % 10] = 1.0
    assert fit_temperature(zeroed, labels) == pytest.approx(fit_temperature(probs, labels), rel=0.2)


def test_a_temperature_at_the_search_bound_is_recorded_so(tmp_path: Path) -> None:
    """A model answering one class for every image ran to the upper bound (T = 99.9994, `"fitted": true`), an
    underconfident one to the lower (0.01, its optimum 0.0056), and calibration.json said nothing of either."""
    from floranet.cli.inference import _after_temperature
    from floranet.evaluation import write_evaluation
    from floranet.evaluation.calibration import TemperatureFit, search_temperature
    from floranet.rundir import RunDir

    one_class, labels = np.array([[0.2, 0.1, 0.7]] * 6, np.float32), np.array([0, 0, 1, 1, 2, 2])
    assert search_temperature(one_class, labels) == TemperatureFit(1.0, False, "upper")
    ev = Evaluation(NAMES[:3], tuple(map(str, range(6))), labels, one_class).with_temperature()
    write_evaluation(ev, RunDir(tmp_path), facts={})
    written = json.loads((tmp_path / RunDir.CALIBRATION).read_text())
    assert (written["temperature"], written["fitted"], written["at_bound"]) == (1.0, False, "upper")
    assert "upper bound" in _after_temperature(ev.fit, ev.temperature, 0.0)
    unsure = np.array([[0.34, 0.33, 0.33]] * 99 + [[0.33, 0.34, 0.33]], np.float32)
    fit = search_temperature(unsure, np.zeros(100, int))
    assert fit.fitted and fit.at_bound == "lower" and fit.temperature == pytest.approx(0.01, rel=1e-3)
    assert "lower bound" in _after_temperature(fit, fit.temperature, 0.0)
    labels, probs = fixed_predictions(200, seed=1)
    assert search_temperature(probs, labels).at_bound is None


def test_every_answer_wrong_is_fitted_where_a_temperature_lowers_the_nll() -> None:
    """Every answer wrong was never fitted ("the NLL grows with T"), though with the true class a close second a
    temperature below 1 lowers it: 0.7985 at T = 1, 0.7904 at the optimum T = 0.758."""
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    probs = np.array([[0.5, 0.45, 0.05]] * 3 + [[0.05, 0.5, 0.45]] * 3, np.float32)
    labels = np.array([1, 1, 1, 2, 2, 2])  # each the second answer
    nll = lambda t: -np.mean(log_softmax(np.log(probs) / t, axis=1)[np.arange(6), labels])  # noqa: E731
    best = float(np.exp(minimize_scalar(lambda u: nll(np.exp(u)), bounds=(-5, 5), method="bounded").x))
    assert best == pytest.approx(0.758, abs=1e-3) and nll(best) < nll(1.0) - 0.005
    assert fit_temperature(probs, labels) == pytest.approx(best, rel=1e-4)


def test_the_reliability_diagram_draws_no_calibrated_series_without_a_fitted_temperature(tmp_path, monkeypatch) -> None:
    """With every validation answer right (no temperature fitted, T = 1) the diagram still drew an "after
    temperature scaling" series, exactly over the model's points."""
    from floranet.evaluation import plots, write_evaluation
    from floranet.rundir import RunDir

    drawn: list[object] = []
    real = plots.reliability_plot
    monkeypatch.setattr(plots, "reliability_plot", lambda *a, **k: drawn.append(k["calibrated"]) or real(*a, **k))
    labels = np.array([0, 0, 1, 1, 2, 2])
    right = np.full((6, 3), 0.15, np.float32)
    right[np.arange(6), labels] = 0.7
    ev = Evaluation(NAMES[:3], tuple(map(str, range(6))), labels, right).with_temperature()
    write_evaluation(ev, RunDir(tmp_path), facts={})
    assert drawn == [None] and json.loads((tmp_path / RunDir.CALIBRATION).read_text())["fitted"] is False
    labels, probs = fixed_predictions(60)
    write_evaluation(Evaluation(NAMES, tuple(map(str, range(60))), labels, probs).with_temperature(), RunDir(tmp_path))
    assert drawn[1] is not None and (tmp_path / "plots" / "reliability.png").stat().st_size > 0


def test_evaluate_says_why_it_runs_as_it_does(writable_run, monkeypatch, capsys) -> None:
    """evaluate printed only the runtime it ran on, so `--precision bf16` on a CPU without native bf16 was not said
    to be emulated there (predict said so); the reason is kept in metrics.json too."""
    from floranet.cli import main
    from floranet.inference import runtime

    monkeypatch.setattr(runtime, "native_bf16", lambda: False)
    monkeypatch.setattr(runtime, "gpu_available", lambda: False)
    assert main(["evaluate", str(writable_run), "--runtime", "openvino", "--precision", "bf16"]) == 0
    ran = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("Ran on "))
    assert ran.startswith("Ran on compiled model (openvino bf16): ") and "emulated" in ran, ran
    assert "emulated" in json.loads((writable_run / "metrics.json").read_text())["evaluated_on_why"]


_HOLDER = """import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"{os.getpid()}\\n".encode())
print("held", flush=True)
sys.stdin.readline()
os.unlink(sys.argv[1])
"""  # another process holding the run's lock as floranet.utils.locks does (an `evaluate` writing the run)


def test_a_report_waits_for_an_evaluate_between_its_two_files_and_refuses_an_interrupted_one(
    writable_run: Path, tmp_path: Path
) -> None:
    """`report --out` takes no lock: one that read predictions.csv after a running evaluate replaced it, before
    that evaluate's metrics.json, failed with "of different evaluations (... an `evaluate` interrupted between
    them?): rerun `floranet evaluate RUN`". While another process holds the run, it now reads again."""
    import subprocess
    import sys

    from floranet.errors import ModelError
    from floranet.evaluation.report import build_report
    from floranet.rundir import RunDir

    predictions = writable_run / RunDir.PREDICTIONS
    good = predictions.read_bytes()
    header, first, *rest = good.decode().splitlines(keepends=True)
    cells = first.rstrip("\r\n").split(",")
    cells[-1] = f"{float(cells[-1]) * 0.5:.9g}"  # the next evaluation's figures, its metrics.json not yet written
    predictions.write_text("".join([header, ",".join(cells) + "\r\n", *rest]))
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(writable_run / RunDir.LOCK)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    said: list[str] = []

    def evaluate_finishes(message: str) -> None:  # told that it waits: the evaluate writes its files and ends
        said.append(message)
        predictions.write_bytes(good)
        holder.communicate("\n", timeout=30)

    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        build_report(writable_run, out=tmp_path / "r.html", say=evaluate_finishes)
    finally:
        if holder.poll() is None:
            holder.kill()
    assert (tmp_path / "r.html").exists() and not (writable_run / RunDir.LOCK).exists()
    assert len(said) == 1 and f"Waiting for another floranet process (pid {holder.pid}) to finish writing" in said[0]
    # With no process writing the run, the pair is an interrupted evaluate's: refused at once, as before.
    predictions.write_text("".join([header, ",".join(cells) + "\r\n", *rest]))
    (writable_run / RunDir.LOCK).write_text(f"{holder.pid}\n")  # left by a killed one: its process is gone
    with pytest.raises(ModelError, match=r"different evaluations \(its sha256 .*rerun `floranet evaluate"):
        build_report(writable_run, out=tmp_path / "r2.html", say=said.append)
    assert len(said) == 1
