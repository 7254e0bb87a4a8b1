"""Training runs: the run directory contract, cached features vs the full model, resume after SIGKILL."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from floranet import config
from floranet.data import decode
from floranet.models import classifier
from floranet.training import features
from floranet.workflows import train
from imagesets import TINY_MODEL, make_image_folder

RUN_FILES = [
    "config.yaml",
    "split.csv",
    "class_names.json",
    "doctor.json",
    "model.keras",
    "history.csv",
    "metrics.json",
    "plots/samples.png",
    "plots/history.png",
    "plots/confusion_matrix.png",
]
FAST = {**TINY_MODEL, "batch_size": 8}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data"), classes=3, per_class=10)


def test_two_stage_run_writes_the_whole_run_directory(images, tmp_path) -> None:
    cfg = config.resolve(
        data_dir=str(images), out=str(tmp_path / "run"), epochs=3, fine_tune_epochs=2, early_stopping_patience=5, **FAST
    )
    result = train(cfg, progress=False, say=lambda m: None)
    run = result.run_dir
    for name in RUN_FILES:
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    assert list((run / "logs").rglob("events.out.tfevents*")), "TensorBoard logs"
    assert json.loads((run / "class_names.json").read_text()) == ["class_0", "class_1", "class_2"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_examples"] == 6 and 0 <= metrics["accuracy"] <= 1
    assert set(metrics["per_class"]) == {"class_0", "class_1", "class_2"}
    assert {"precision", "recall", "f1"} <= set(metrics["per_class"]["class_0"])
    history = (run / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 5 and history[0].startswith("stage,epoch")
    assert [line.split(",")[0] for line in history[1:]] == ["stage1"] * 3 + ["stage2"] * 2
    model = keras.saving.load_model(run / "model.keras", safe_mode=True)
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 3)
    # Fine-tuned on the prefix cache: the evaluation read stage 1's prefix outputs (float16) through the final top,
    # which gives model.keras's probabilities up to that storage's rounding.
    assert metrics["evaluated_on"].startswith("stage 1's cached prefix outputs") and result.compiled["agrees"]
    val = result.validation
    pixels = np.stack([decode.decode_and_resize(str(images / p), (32, 32)) for p in val.paths])
    np.testing.assert_allclose(val.probs, model.predict(pixels, verbose=0), atol=2e-2)
    assert not any(p.name.endswith(".tmp") or p.name.startswith(".") for p in run.rglob("*"))


def test_auto_precision_fine_tunes_in_mixed_bf16_on_a_bf16_cpu(images, tmp_path, monkeypatch) -> None:
    from floranet.inference import runtime

    monkeypatch.setattr(runtime, "gpu_available", lambda: False)
    monkeypatch.setattr(runtime, "native_bf16", lambda: True)
    said: list[str] = []
    cfg = config.resolve(
        data_dir=str(images), out=str(tmp_path / "run"), epochs=1, fine_tune_epochs=1, **{**FAST, "precision": "auto"}
    )
    run = train(cfg, progress=False, say=said.append).run_dir
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["precision"] == {"features": "tensorflow-fp32", "fine_tune": "mixed_bfloat16"}
    assert any("Stage 2 computes in mixed_bfloat16" in m for m in said)
    model = keras.saving.load_model(run / "model.keras")
    assert model.dtype_policy.name == "float32" and all(w.dtype == "float32" for w in model.weights)
    assert keras.mixed_precision.global_policy().name == "float32"  # nothing leaks into later work
    monkeypatch.setattr(runtime, "native_bf16", lambda: False)
    assert runtime.training_precision("auto")[0] == "float32"


def test_precision_bf16_trains_on_openvino(images, tmp_path) -> None:
    """--precision bf16 builds a mixed-precision model, whose bf16 casts OpenVINO's converter could not read: stage
    1's feature extraction (and the prefix it also writes) failed with a RuntimeError traceback on every CPU."""
    pytest.importorskip("openvino")
    cfg = config.resolve(
        data_dir=str(images),
        out=str(tmp_path / "run"),
        epochs=1,
        fine_tune_epochs=1,
        **{**FAST, "runtime": "openvino", "precision": "bf16"},
    )
    run = train(cfg, progress=False, say=lambda _: None).run_dir
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["precision"] == {"features": "openvino-bf16", "fine_tune": "mixed_bfloat16"}
    assert keras.mixed_precision.global_policy().name == "float32"


def test_cached_feature_head_equals_full_model(images, tmp_path) -> None:
    cfg = config.resolve(data_dir=str(images), out=str(tmp_path / "run"), preset="tutorial", epochs=2, **FAST)
    run = train(cfg, progress=False, say=lambda m: None).run_dir
    model = keras.saving.load_model(run / "model.keras")
    cached = features.load_cache(next((run / "features").iterdir()))
    rows = [line.split(",") for line in (run / "split.csv").read_text().splitlines()[1:]]
    paths = [images / r[0] for r in rows]
    pixels = np.stack([decode.decode_and_resize(str(p), (32, 32)) for p in paths])
    full = model.predict(pixels, verbose=0)
    head = classifier.head_of(model).predict(np.stack([cached[r[3]] for r in rows]), verbose=0)
    np.testing.assert_allclose(head, full, atol=1e-5)
    assert len(cached) == len(rows)


def test_features_are_computed_once_and_reused(images, tmp_path) -> None:
    model = classifier.build_classifier("resnet20", 3, image_size=32, weights=None)
    extractor = classifier.feature_extractor(model)
    paths = sorted(str(p) for p in images.rglob("*.jpg"))[:5]
    hashes = [f"h{i}" for i in range(5)]
    calls = []
    counting = lambda x: calls.append(len(x)) or np.asarray(extractor(x, training=False))  # noqa: E731
    first = features.extract(
        counting, paths, hashes, cache_dir=tmp_path / "c", image_size=(32, 32), batch_size=4, progress=False
    )
    assert sum(calls) == 5
    second = features.extract(
        counting, paths, hashes, cache_dir=tmp_path / "c", image_size=(32, 32), batch_size=4, progress=False
    )
    assert sum(calls) == 5  # nothing recomputed
    for h in hashes:
        np.testing.assert_array_equal(first[h], second[h])


def _counting_extractor(images) -> tuple[Any, list[str], list[str], list[int]]:
    """A random-init ResNet-20 feature extractor that records how many images each call gets, six of ``images``'
    paths and stand-in hashes for them, and the list of call sizes."""
    extractor = classifier.feature_extractor(classifier.build_classifier("resnet20", 3, image_size=32, weights=None))
    calls: list[int] = []
    counting = lambda x: calls.append(len(x)) or np.asarray(extractor(x, training=False))  # noqa: E731
    return counting, sorted(str(p) for p in images.rglob("*.jpg"))[:6], [f"h{i}" for i in range(6)], calls


def test_a_damaged_cache_is_computed_again_not_fatal(images, tmp_path, caplog) -> None:
    """The feature cache is floranet's own: a chunk or key.json damaged on disk costs a recomputation, with a
    warning naming it, never the run."""
    from floranet.rundir import RunDir
    from floranet.training.embeddings import stage1_features

    counting, paths, hashes, calls = _counting_extractor(images)
    kw = {"cache_dir": tmp_path / "c", "image_size": (32, 32), "batch_size": 4, "progress": False}
    first = features.extract(counting, paths[:3], hashes[:3], **kw)
    features.extract(counting, paths, hashes, **kw)  # a second chunk: h3..h5
    assert sum(calls) == 6
    chunks = sorted((tmp_path / "c").glob("chunk-*.npz"))
    assert len(chunks) == 2
    chunks[0].write_bytes(chunks[0].read_bytes()[:100])  # cut short
    again = features.extract(counting, paths, hashes, **kw)
    assert sum(calls) == 9  # the first chunk's three images, once more
    assert "damaged feature cache chunk" in caplog.text and str(chunks[0]) in caplog.text
    for h in hashes[:3]:
        np.testing.assert_allclose(again[h], first[h], atol=1e-6)
    # A damaged key.json: the cache is not matched (a warning), the stage-1 features are computed and served.
    cfg = config.resolve(data_dir=str(images), out=str(tmp_path / "run"), preset="tutorial", epochs=1, **FAST)
    run = RunDir(tmp_path / "run")
    rel = sorted(images.rglob("*.jpg"))[:4]
    got = stage1_features(run, cfg, [str(p) for p in rel], [f"k{i}" for i in range(4)], say=lambda m: None)
    key = next((run.path / "features").glob("*/key.json"))
    key.write_text("{not json")
    caplog.clear()
    got_again = stage1_features(run, cfg, [str(p) for p in rel], [f"k{i}" for i in range(4)], say=lambda m: None)
    assert "Skipped the feature cache" in caplog.text
    assert sorted(got_again) == sorted(got)
    # The backbone is seeded (the same random weights each time): its features go to the same cache folder, which
    # gets a key.json that reads again (as _matching_caches says), and is matched from then on.
    keys = [k.read_text() for k in (run.path / "features").glob("*/key.json")]
    assert keys and all(json.loads(k)["backbone"] == "resnet20" for k in keys)
    caplog.clear()
    assert sorted(stage1_features(run, cfg, [str(p) for p in rel], [f"k{i}" for i in range(4)], say=lambda m: None))
    assert "Skipped the feature cache" not in caplog.text


def test_existing_run_is_not_overwritten_and_resume_checks_settings(images, tmp_path, monkeypatch) -> None:
    out = tmp_path / "run"
    cfg = config.resolve(data_dir=str(images), out=str(out), preset="tutorial", epochs=1, **FAST)
    train(cfg, progress=False, say=lambda m: None)
    from floranet.errors import ConfigError

    with pytest.raises(ConfigError, match="already holds a run"):
        train(cfg, progress=False, say=lambda m: None)
    with pytest.raises(ConfigError, match="Nothing to resume: the run in .* is finished"):
        train(cfg, resume=True, progress=False, say=lambda m: None)
    state = out / "state.json"  # as if killed after training, in its evaluation: resumable, with its settings
    state.write_text(state.read_text().replace('"complete": true', '"complete": false'))
    changed = config.resolve(
        data_dir=str(images), out=str(out), preset="tutorial", epochs=1, **{**FAST, "batch_size": 4}
    )
    with pytest.raises(ConfigError, match="batch_size"):
        train(changed, resume=True, progress=False, say=lambda m: None)
    # A run from before data_dir was recorded absolute (relative to where it was trained) resumes from there.
    saved = (out / "config.yaml").read_text()
    (out / "config.yaml").write_text(saved.replace(f"data_dir: {images}", f"data_dir: {images.name}"))
    assert f"data_dir: {images.name}\n" in (out / "config.yaml").read_text()
    monkeypatch.chdir(images.parent)
    with pytest.raises(ConfigError, match="batch_size") as caught:
        train(changed, resume=True, progress=False, say=lambda m: None)
    assert "data_dir" not in str(caught.value)


def test_a_missing_data_folder_is_said_before_the_run_folder_is_made(tmp_path) -> None:
    """It was found after the lock wrote config.yaml and state.json into --out: the retry was told the folder
    'already holds a run. Use --resume'."""
    from floranet.errors import DatasetError

    out = tmp_path / "run"
    for data, why in ((tmp_path / "nowhere", "does not exist"), (tmp_path / "afile", "not a file")):
        (tmp_path / "afile").write_text("x")
        with pytest.raises(DatasetError, match=f"data_dir {why}|data_dir must be a folder of class sub-folders, {why}"):
            train(config.resolve(data_dir=str(data), out=str(out), **FAST), progress=False, say=lambda m: None)
    assert not out.exists()


def test_a_refused_data_folder_leaves_no_run_to_block_the_retry(tmp_path) -> None:
    """A data folder the doctor refuses (here class folders whose names look alike: NFC and NFD 'cafe' with an
    accent) was found after config.yaml, state.json and doctor.json were written into --out: the retry on the
    mended folder was told "already holds a run. Use --resume", and --resume that the settings differ. Now a
    refused start removes what it wrote (and the folder it made), and what was in --out before stays."""
    import unicodedata

    from floranet.errors import DatasetError

    data = make_image_folder(tmp_path / "data", classes=2, per_class=4, size=(32, 32))
    twin = data / unicodedata.normalize("NFD", "caf\u00e9")
    (data / "class_0").rename(data / unicodedata.normalize("NFC", "caf\u00e9"))
    twin.mkdir()
    for f in (data / "class_1").iterdir():
        (twin / f.name).write_bytes(f.read_bytes())
    cfg = config.resolve(data_dir=str(data), out=str(tmp_path / "run"), epochs=1, fine_tune_epochs=0, **FAST)
    with pytest.raises(DatasetError):
        train(cfg, progress=False, say=lambda m: None)
    assert not (tmp_path / "run").exists()
    kept = tmp_path / "kept"  # an empty folder given as --out stays, empty
    kept.mkdir()
    with pytest.raises(DatasetError):
        train(config.resolve(data_dir=str(data), out=str(kept), **FAST), progress=False, say=lambda m: None)
    assert list(kept.iterdir()) == []
    for f in twin.iterdir():  # mended: the retry, without --resume, trains
        f.unlink()
    twin.rmdir()
    assert train(cfg, progress=False, say=lambda m: None).run_dir == tmp_path / "run"


def test_a_refused_weights_file_leaves_no_run_to_block_the_retry(images, tmp_path) -> None:
    """A --weights file is only a path until the model is built, after the data is prepared: one that is no HDF5
    file was refused with config.yaml, state.json and split.csv left in --out, and the retry with other weights
    was told the folder "already holds a run" (and --resume, that the weights differ)."""
    from floranet.errors import WeightsError

    bad = tmp_path / "w.h5"
    bad.write_text("not weights")
    fast = {**FAST, "weights": str(bad)}
    cfg = config.resolve(data_dir=str(images), out=str(tmp_path / "run"), epochs=1, fine_tune_epochs=0, **fast)
    with pytest.raises(WeightsError, match="not an HDF5 file"):
        train(cfg, progress=False, say=lambda m: None)
    assert not (tmp_path / "run").exists()


def test_fit_refuses_an_empty_data_dir_before_writing_anything(tmp_path, monkeypatch) -> None:
    """fit (training alone) took the dataclass default data_dir='' as the current folder, trained on it if it had
    class folders, and otherwise left config.yaml, doctor.json and state.json in out: the retry with the right
    data was refused with and without resume."""
    from floranet.errors import ConfigError
    from floranet.training import fit

    make_image_folder(tmp_path / "here", classes=2, per_class=3, size=(32, 32))
    monkeypatch.chdir(tmp_path / "here")  # class folders: fit trained on them
    for resume in (False, True):
        with pytest.raises(ConfigError, match=r"data_dir is required .* Received: data_dir=''$"):
            cfg = config.TrainConfig(out=str(tmp_path / "run"), epochs=1, fine_tune_epochs=0, **FAST)
            fit(cfg, resume=resume, progress=False, say=print)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda cfg: train({"data_dir": "x"}), r"config must be a TrainConfig \(floranet.config.resolve\(...\)\)\. "),
        (lambda cfg: train("DATA_DIR"), r"Received: config='DATA_DIR'$"),
        (lambda cfg: train(None), r"Received: config=None$"),
        (lambda cfg: __import__("floranet.training").training.fit({}), r"Received: config=\{\}$"),
        (lambda cfg: train(cfg, say=None), r"say must be a callable .* Received: say=None$"),
        (lambda cfg: train(cfg, resume="no"), r"resume must be True or False\. Received: resume='no'$"),
        (lambda cfg: __import__("floranet.training").training.fit(cfg, resume=1), r"Received: resume=1$"),
        (lambda cfg: __import__("floranet.evaluation").evaluation.evaluate_run(None), r"Received: run_dir=None$"),
    ],
    ids=[
        "train-dict",
        "train-text",
        "train-None",
        "fit-dict",
        "say-None",
        "resume-text",
        "resume-int",
        "evaluate-None",
    ],
)
def test_wrong_argument_types_are_refused_before_anything_is_written(call, match, images, tmp_path) -> None:
    """They were AttributeErrors and TypeErrors (say=None after the run folder was made), and resume='no' resumed."""
    from floranet.errors import ConfigError

    cfg = config.resolve(data_dir=str(images), out=str(tmp_path / "run"), **FAST)
    with pytest.raises(ConfigError, match=match):
        call(cfg)
    assert not (tmp_path / "run").exists()


def test_the_demo_draws_no_progress_bars_into_a_log_or_a_pipe(monkeypatch) -> None:
    """`make demo > log` held 80 escape codes and 17 carriage returns of Keras's bars; train already drew them only
    on a terminal."""
    from floranet.cli import main
    from floranet.workflows import demo

    seen: dict[str, object] = {}
    monkeypatch.setattr(demo, "run_demo", lambda *a, **k: seen.update(k))
    assert main(["demo", "--epochs", "1"]) == 0  # under pytest, stderr is not a terminal
    assert seen["progress"] is False


def test_the_demo_into_a_run_folder_says_to_choose_another(tiny_run: Path, tmp_path, monkeypatch) -> None:
    """The demo passed on train's advice, 'Use --resume to continue it', an option the demo does not have."""
    import shutil

    from floranet.errors import ConfigError
    from floranet.models import weights
    from floranet.workflows.demo import run_demo
    from httpserver import closed_port_url

    monkeypatch.setenv(weights.URL_ENV, closed_port_url() + "/")  # offline: the bundled backbone
    out = tmp_path / "demo"
    out.mkdir()
    for name in ("config.yaml", "state.json"):
        shutil.copy(tiny_run / name, out / name)
    with pytest.raises(ConfigError, match="already holds a run, and the demo always starts a new one: choose another"):
        run_demo(data=str(tiny_run.parent / "data"), out=str(out), epochs=1, progress=False, say=lambda m: None)
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "state.json"]


def test_a_split_file_without_hashes_gets_each_files_own(images, tmp_path) -> None:
    """The feature cache is keyed by sha256: a hand-written split with no (or stale) hashes must not make every
    image share one cached feature vector."""
    import hashlib

    from floranet.errors import ConfigError, DatasetError

    files = sorted(p for p in images.rglob("*.jpg"))
    rows = [
        (p.relative_to(images).as_posix(), p.parent.name, "validation" if i % 4 == 0 else "train")
        for i, p in enumerate(files)
    ]
    hand = tmp_path / "hand.csv"
    stale = "a" * 64
    hand.write_text(
        "path,label,split,sha256\n"
        + "".join(f"{r},{lab},{sp},{stale if i == 0 else ''}\n" for i, (r, lab, sp) in enumerate(rows))
        + "ghost/nothere.jpg,ghost,train,\nghost/gone.jpg,ghost,validation,\n"  # a class with no image here
    )
    said: list[str] = []
    cfg = config.resolve(
        data_dir=str(images), out=str(tmp_path / "run"), preset="tutorial", epochs=1, split_file=str(hand), **FAST
    )
    train(cfg, progress=False, say=said.append)
    with open(tmp_path / "run" / "split.csv", newline="") as f:
        written = {r["path"]: r["sha256"] for r in csv.DictReader(f)}
    assert written == {p.relative_to(images).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    assert any("1 files of the split changed since it was written" in m for m in said), said
    assert any("1 class(es) of the split have no usable image and were left out: ghost" in m for m in said), said
    assert "ghost" not in json.loads((tmp_path / "run" / "class_names.json").read_text())  # no untrained output
    only_validation = tmp_path / "val.csv"
    only_validation.write_text("path,label,split,sha256\n" + "".join(f"{r},{lab},validation,\n" for r, lab, _ in rows))
    cfg = config.resolve(
        data_dir=str(images),
        out=str(tmp_path / "run2"),
        preset="tutorial",
        epochs=1,
        split_file=str(only_validation),
        **FAST,
    )
    with pytest.raises(DatasetError, match="no training images"):
        train(cfg, progress=False, say=lambda m: None)
    exclude = tmp_path / "exclude.txt"
    exclude.write_text("".join(f"{r}\n" for r, lab, _ in rows if lab != files[0].parent.name))
    one_class = config.resolve(
        data_dir=str(images), out=str(tmp_path / "run3"), preset="tutorial", epochs=1, exclude=str(exclude), **FAST
    )
    with pytest.raises(DatasetError, match="Only 1 class left"):
        train(one_class, progress=False, say=lambda m: None)
    inside = config.resolve(data_dir=str(images), out=str(images / "run"), preset="tutorial", epochs=1, **FAST)
    with pytest.raises(ConfigError, match="outside the data folder"):
        train(inside, progress=False, say=lambda m: None)
    assert not (images / "run").exists()  # refused before anything was created


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "floranet.cli", *args]


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 240) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


def _stage_epochs(run: Path, stage: str) -> int:
    try:
        state = json.loads((run / "state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return 0
    return state.get("stages", {}).get(stage, {}).get("epochs_done", 0)


KILL_POINTS = {
    "during-data-prep": lambda run: (run / "config.yaml").exists(),
    "mid-stage1": lambda run: _stage_epochs(run, "stage1") >= 2,
    "mid-stage2": lambda run: _stage_epochs(run, "stage2") >= 1,
}


@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_sigkill_then_resume_completes_the_run(point, images, tmp_path) -> None:
    run = tmp_path / "run"
    args = [
        "train",
        str(images),
        "--out",
        str(run),
        "--backbone",
        "resnet20",
        "--weights",
        "none",
        "--image-size",
        "32",
        "--batch-size",
        "4",
        "--epochs",
        "12",
        "--fine-tune-epochs",
        "4",
        "--augment",
        "off",
        "--runtime",
        "tensorflow",
        "--precision",
        "fp32",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(_cli(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        hit = _wait_for(lambda: KILL_POINTS[point](run), proc)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert hit, f"the run never reached {point}"
    assert not (run / "state.json").exists() or json.loads((run / "state.json").read_text())["complete"] is False
    done = subprocess.run(_cli(*args, "--resume"), capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    state = json.loads((run / "state.json").read_text())
    assert state["complete"]
    assert state["stages"]["stage2"]["path"] == "prefix-cache"  # the resumed stage 2 loaded the top's checkpoint
    history = (run / "history.csv").read_text().splitlines()[1:]
    stage1 = [h for h in history if h.startswith("stage1")]
    assert [int(h.split(",")[2]) for h in stage1] == list(range(1, len(stage1) + 1))  # no epoch lost or repeated
    model = keras.saving.load_model(run / "model.keras")
    assert model.output_shape == (None, 3)


def test_a_start_killed_before_its_config_is_begun_again_and_config_follows_the_state(
    images, tmp_path, monkeypatch
) -> None:
    """A kill between config.yaml and state.json (a CI run hit it) left a folder that neither train nor --resume
    would take: 'not empty and not a floranet run'. state.json is now written first, so a folder with config.yaml
    is a run; one holding only a fresh state.json and a temp file of config.yaml is begun again."""
    from floranet.cli import main
    from floranet.rundir import RunDir

    run = tmp_path / "run"
    run.mkdir()
    (run / "state.json").write_text(json.dumps({"stages": {}, "history": [], "complete": False, "seconds": 0.0}))
    (run / ".config.yaml.x1y2.yaml").write_text("cut short")
    states_first: list[bool] = []
    write_config = RunDir.write_config
    monkeypatch.setattr(
        RunDir, "write_config", lambda r, c: states_first.append(r.exists(RunDir.STATE)) or write_config(r, c)
    )
    args = ["train", str(images), "--out", str(run), "--backbone", "resnet20", "--weights", "none", "--image-size"]
    args += ["32", "--batch-size", "4", "--epochs", "1", "--fine-tune-epochs", "0", "--no-audit"]
    assert main([*args, "--runtime", "tensorflow", "--precision", "fp32"]) == 0
    assert states_first == [True] and json.loads((run / "state.json").read_text())["complete"]


def test_training_on_the_every_case_corpus_uses_the_good_files_and_changes_nothing(tmp_path, monkeypatch) -> None:
    from corpus import deny_locked_reads, make_corpus, snapshot

    root = tmp_path / "data"
    root.mkdir()
    expected = make_corpus(root)
    deny_locked_reads(monkeypatch)
    before = snapshot(root)
    cfg = config.resolve(data_dir=str(root), out=str(tmp_path / "run"), preset="tutorial", epochs=2, **FAST)
    result = train(cfg, progress=False, say=lambda m: None)
    assert snapshot(root) == before  # not a byte, mode or mtime changed
    with open(result.run_dir / "split.csv", encoding="utf-8", errors="surrogateescape", newline="") as f:
        used = {row["path"] for row in csv.DictReader(f)}
    good = {p for p, status in expected.items() if status in ("ok", "note")}
    assert used == good
    assert not used & {p for p, status in expected.items() if status in ("bad", "ignored")}
    assert result.class_names == ["daisy", "roses", "tulips"]  # the empty class is not a label
    assert (result.run_dir / "model.keras").exists()


def test_stage1_head_calls_cover_whole_epochs() -> None:
    """Several batches per call of the head's step, never past an epoch's end (Keras would count "80/78")."""
    from floranet.training.stages import HEAD_STEPS_PER_CALL, steps_per_call

    for steps in range(1, 300):
        k = steps_per_call(steps)
        assert 1 <= k <= HEAD_STEPS_PER_CALL and steps % k == 0
    assert (steps_per_call(8), steps_per_call(78), steps_per_call(96), steps_per_call(79)) == (8, 13, 16, 1)


@pytest.mark.parametrize("weights", [None, "file"])
def test_an_unknown_backbone_fails_before_the_data_is_read_whatever_the_weights(weights, tmp_path) -> None:
    """With weights none or a file, a misspelt backbone was found only after the scan, leaving a run folder."""
    from floranet.errors import ConfigError

    data = make_image_folder(tmp_path / "data", classes=2, per_class=2)
    if weights == "file":
        weights = str(tmp_path / "w.weights.h5")
        Path(weights).write_bytes(b"x")
    cfg = config.resolve(data_dir=str(data), out=str(tmp_path / "run"), backbone="resnet2O", weights=weights)
    with pytest.raises(ConfigError, match="Unknown backbone"):
        train(cfg, progress=False, say=lambda m: None)
    assert not (tmp_path / "run").exists()
    for name in ("backbone", "out"):
        with pytest.raises(ConfigError, match=f"{name} must be a non-empty text"):
            config.TrainConfig(data_dir=str(data), **{name: " "})


def test_a_runtime_that_is_not_installed_is_said_before_the_data_is_read(tmp_path, monkeypatch) -> None:
    """--runtime openvino without OpenVINO (or int8 without NNCF) failed after the scan, leaving a run folder."""
    import sys

    from floranet.errors import MissingDependencyError
    from floranet.inference import runtime

    data = make_image_folder(tmp_path / "data", classes=2, per_class=2)
    monkeypatch.setattr(runtime, "openvino_available", lambda: False)
    monkeypatch.setitem(sys.modules, "openvino", None)
    cfg = config.resolve(data_dir=str(data), out=str(tmp_path / "run"), **{**TINY_MODEL, "runtime": "openvino"})
    with pytest.raises(MissingDependencyError, match="openvino"):
        train(cfg, progress=False, say=lambda m: None)
    monkeypatch.setattr(runtime, "openvino_available", lambda: True)
    monkeypatch.setitem(sys.modules, "nncf", None)
    with pytest.raises(MissingDependencyError, match="nncf"):
        train(config.resolve(data_dir=str(data), out=str(tmp_path / "run"), precision="int8"), say=lambda m: None)
    assert not (tmp_path / "run").exists()


def test_every_file_of_a_run_has_the_permissions_the_umask_gives(tiny_run: Path) -> None:
    """inference/ came from mkdtemp: 0700, so nobody else who may read the run could load its compiled model."""
    import stat

    from floranet.utils.files import current_umask

    mask = current_umask()
    wrong = [
        (str(p.relative_to(tiny_run)), oct(stat.S_IMODE(p.stat().st_mode)))
        for p in [tiny_run, *tiny_run.rglob("*")]
        if not p.is_symlink() and stat.S_IMODE(p.stat().st_mode) != (0o777 if p.is_dir() else 0o666) & ~mask
    ]
    assert (tiny_run / "inference").is_dir() and not wrong, wrong


def test_a_reused_split_says_what_it_leaves_out_and_which_labels_it_changes(tmp_path) -> None:
    """A split made elsewhere (--split-file, --resume, a comparison's) dropped the usable images it did not list
    without a word (images added since, a whole new class), and used rows labelling a file otherwise than its
    folder silently. Both are said now; a split made here, with --exclude and --relabel, says neither."""
    import shutil

    from floranet.rundir import RunDir
    from floranet.training.data import prepare

    data = make_image_folder(tmp_path / "data", classes=2, per_class=4)
    (tmp_path / "exclude.txt").write_text("class_1/img_003.jpg\n")
    (tmp_path / "relabel.csv").write_text("path,new_label\nclass_0/img_002.jpg,class_1\n")
    curated = {"exclude": str(tmp_path / "exclude.txt"), "relabel": str(tmp_path / "relabel.csv")}

    def notes(out: str, *, resume: bool = False, **settings: str) -> list[str]:
        said: list[str] = []
        cfg = config.resolve(data_dir=str(data), out=str(tmp_path / out), preset="tutorial", **settings, **FAST)
        (tmp_path / out).mkdir(exist_ok=True)
        prepare(cfg, RunDir(tmp_path / out), resume=resume, progress=False, say=said.append)
        return [m for m in said if m.startswith("Split:")]

    assert notes("made", **curated) == []
    added = make_image_folder(tmp_path / "more", classes=3, per_class=2, seed=1, names=["a", "b", "new"])
    shutil.move(added / "new", data / "new")
    shutil.copy(added / "a" / "img_000.jpg", data / "class_0" / "added.jpg")
    # The run's own record of its curation explains its excluded file and relabelled row.
    assert notes("made", resume=True, **curated) == [
        "Split: 3 usable images of the data folder are not in the split and were not used; 1 class(es) the split "
        "does not have among them: new."
    ]
    given = notes("given", split_file=str(tmp_path / "made" / "split.csv"))
    assert given == [
        "Split: 4 usable images of the data folder are not in the split and were not used; 1 class(es) the split "
        "does not have among them: new.",
        "Split: 1 rows of the split label their file otherwise than its folder (or --relabel) does "
        "(e.g. class_0/img_002.jpg as 'class_1'); the split's labels are used.",
    ]


@pytest.mark.parametrize("cache", ["auto", "off"])
def test_a_fine_tuning_that_never_improves_leaves_stage_1s_model(images, tmp_path, cache) -> None:
    # A learning rate far too high: every stage-2 epoch is worse than stage 1's model on validation loss. The run
    # used to end with the least bad of them; stage 2's start now competes as its epoch 0 and is kept.
    cfg = config.resolve(
        data_dir=str(images), out=str(tmp_path / "run"), epochs=4, fine_tune_epochs=2, fine_tune_learning_rate=0.9,
        early_stopping_patience=3, fine_tune_cache=cache, label_smoothing=0.0, **FAST,
    )  # fmt: skip
    run = train(cfg, progress=False, say=lambda m: None).run_dir
    state = json.loads((run / "state.json").read_text())["stages"]
    history = list(csv.DictReader((run / "history.csv").open()))
    stage2_losses = [float(r["val_loss"]) for r in history if r["stage"] == "stage2"]
    assert state["stage2"]["best_weights"] == "checkpoints/stage2-best-epoch000.weights.h5"
    assert min(stage2_losses) > state["stage2"]["best_val_loss"] + 0.1, stage2_losses
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["loss"] == pytest.approx(state["stage2"]["best_val_loss"], rel=0.02, abs=1e-3)
    assert "none better than its start, which is kept" in (run / "README.md").read_text()


def test_train_says_the_image_like_files_and_the_class_folders_it_leaves_out(tmp_path) -> None:
    """train said only the doctor's bad files: a JPEG named .jfif (Chrome's and Windows's name) or .jpe was not an
    image at all, an image beside the class folders was ignored, and class folders with no usable image vanished
    from the model, all without a word. JPEG's names are images now (to train and to predict's folder walk), and
    the rest is said, with a few names."""
    import shutil

    from floranet.data import inputs as input_lib
    from floranet.rundir import RunDir
    from floranet.training.data import prepare

    data = make_image_folder(tmp_path / "data", classes=2, per_class=4, names=["a", "b"])
    for name in ("chrome_0.jfif", "x.jpe", "y.jif", "z.JFI"):
        shutil.copy(data / "a" / "img_000.jpg", data / "a" / name)
    for name in ("stray.jpg", "a/one.img", "b/two.bin", "b/three.raw"):
        shutil.copy(data / "a" / "img_001.jpg", data / name)
    (data / "c").mkdir()
    (data / "c" / "cut.jpg").write_bytes((data / "a" / "img_002.jpg").read_bytes()[:200])
    (data / "d").mkdir()
    said: list[str] = []
    cfg = config.resolve(data_dir=str(data), out=str(tmp_path / "run"), preset="tutorial", **FAST)
    (tmp_path / "run").mkdir()
    prepared = prepare(cfg, RunDir(tmp_path / "run"), resume=False, progress=False, say=said.append)
    doctor_json = tmp_path / "run" / "doctor.json"
    assert said[:3] == [
        f"Doctor: 1 unusable file(s) will be skipped; details in {doctor_json}.",
        "Doctor: 4 file(s) ignored that look like images (a/one.img, b/three.raw, b/two.bin, ...): see "
        f"{doctor_json}, or floranet doctor {data}.",
        f"Doctor: Class folders c, d have no usable image: left out of the model (see {doctor_json}).",
    ]
    assert prepared.split.class_names == ("a", "b")
    assert {"a/chrome_0.jfif", "a/x.jpe", "a/y.jif", "a/z.JFI"} <= {r.path for r in prepared.split.rows}
    assert "Class folders c, d have no usable image: left out of the model" in prepared.notes
    # predict's walk of a folder takes what a file argument takes.
    walked, _ = input_lib.expand_inputs([data / "a"])
    assert {p.name for p in walked} >= {"chrome_0.jfif", "x.jpe", "y.jif", "z.JFI"}


def test_classes_with_no_validation_image_are_said_and_shown_as_not_measured(tmp_path) -> None:
    """Classes of 1 or 2 images get no validation image at val_split 0.2: train said nothing, and metrics.json,
    report.html and the model card showed their precision, recall and F1 as 0.000 beside 'macro F1 1.000', which
    read as classes the model fails on. Now train names them, the figures are null (n/a), and the card's
    Limitations says they are not evaluated."""
    data = make_image_folder(tmp_path / "data", classes=3, per_class=10, names=["big", "one", "two"])
    for name, keep in (("one", 1), ("two", 2)):
        for p in sorted((data / name).iterdir())[keep:]:
            p.unlink()
    said: list[str] = []
    cfg = config.resolve(data_dir=str(data), out=str(tmp_path / "run"), epochs=1, fine_tune_epochs=0, **FAST)
    run = train(cfg, progress=False, say=said.append).run_dir
    line = "no validation image for: one, two (classes under 3 images at val_split 0.2): their figures are not measured"
    assert f"Split: {line}." in said
    metrics = json.loads((run / "metrics.json").read_text())
    assert line in metrics["notes"]
    for name in ("one", "two"):
        assert metrics["per_class"][name] == {"precision": None, "recall": None, "f1": None, "support": 0}
    report = (run / "report.html").read_text(encoding="utf-8")
    assert "<tr><td>one</td><td>n/a</td><td>n/a</td><td>n/a</td><td>0</td></tr>" in report
    assert "not measured for one, two, as the validation split holds no image of them" in report
    card = (run / "README.md").read_text(encoding="utf-8")
    assert "| one | n/a | n/a | n/a | 0 |" in card and "| two | n/a | n/a | n/a | 0 |" in card
    assert "- Not evaluated: one, two: the validation split holds no image of them" in card


def _weights_file(path: Path, seed: int) -> Path:
    """A resnet20 weights file at 32 px, its random init drawn with ``seed``."""
    from floranet.models import backbones

    keras.utils.set_random_seed(seed)
    backbones.get("resnet20").build(input_shape=(32, 32, 3), weights=None).save_weights(path)
    return path


def test_a_feature_cache_of_other_weights_is_not_reused(images, tmp_path) -> None:
    """The cache lookup compared the weights' path, not their content: an audit after the --weights file was
    replaced at the same path (or with --weights none and another --seed) served the old weights' features."""
    import dataclasses
    import shutil

    from floranet.rundir import RunDir
    from floranet.training.embeddings import stage1_features

    weights = tmp_path / "w.weights.h5"
    shutil.copyfile(_weights_file(tmp_path / "a.weights.h5", 1), weights)
    cfg = config.resolve(data_dir=str(images), out=str(tmp_path / "run"), **{**FAST, "weights": str(weights)})
    paths, hashes = [str(p) for p in sorted(images.rglob("*.jpg"))[:4]], [f"k{i}" for i in range(4)]
    said: list[str] = []

    def features_of(c: config.TrainConfig, out: str = "run") -> dict[str, np.ndarray]:
        return stage1_features(RunDir(tmp_path / out), c, paths, hashes, say=said.append)

    old = features_of(cfg)
    shutil.copyfile(_weights_file(tmp_path / "b.weights.h5", 2), weights)  # same path, other weights
    new = features_of(cfg)
    assert "(once)" in said[-1], said[-1]  # computed, not "found in the cache"
    assert not np.allclose(old["k0"], new["k0"])
    for h, v in features_of(cfg, "fresh").items():  # what a fresh folder gets
        np.testing.assert_allclose(new[h], v, atol=1e-6)
    features_of(cfg)
    assert "found in the cache" in said[-1]  # the same file again: reused
    # A random init: another seed is other weights.
    first = features_of(dataclasses.replace(cfg, weights=None, seed=1))
    second = features_of(dataclasses.replace(cfg, weights=None, seed=2))
    assert "(once)" in said[-1] and not np.allclose(first["k0"], second["k0"])
    # A key.json from before the weights' source was recorded matches nothing: computed again, no error.
    key_files = list((tmp_path / "run" / "features").glob("*/key.json"))
    for key in key_files:
        key.write_text(json.dumps({k: v for k, v in json.loads(key.read_text()).items() if k != "weights_source"}))
    features_of(cfg)
    assert "(once)" in said[-1]
    features_of(cfg)
    assert "found in the cache" in said[-1]


def test_a_damaged_chunk_is_set_aside_once_its_images_are_computed_again(images, tmp_path, caplog) -> None:
    """A damaged chunk was kept: every later pass warned that its images were computed again, though they were
    in the new chunk by then and nothing was."""
    counting, paths, hashes, calls = _counting_extractor(images)
    cache = tmp_path / "c"
    kw = {"cache_dir": cache, "image_size": (32, 32), "batch_size": 4, "progress": False}
    features.extract(counting, paths[:3], hashes[:3], **kw)
    features.extract(counting, paths, hashes, **kw)
    first = sorted(cache.glob("chunk-*.npz"))[0]
    first.write_bytes(first.read_bytes()[:100])  # cut short
    features.extract(counting, paths, hashes, **kw)
    assert sum(calls) == 9 and "damaged feature cache chunk" in caplog.text  # computed again, said once
    assert (cache / f"{first.name}.damaged").is_file()  # kept to look at, out of the cache's way
    chunks = sorted(p.name for p in cache.glob("chunk-*.npz"))
    assert chunks == ["chunk-00001.npz", "chunk-00002.npz"]  # the new chunk took no number in use
    caplog.clear()
    again = features.extract(counting, paths, hashes, **kw)
    assert sum(calls) == 9 and sorted(again) == hashes and "damaged" not in caplog.text
    more = sorted(str(p) for p in images.rglob("*.jpg"))[:7]  # one image more: a chunk after the highest number
    assert sorted(features.extract(counting, more, [*hashes, "h6"], **kw)) == [*hashes, "h6"]
    assert sum(calls) == 10 and (cache / "chunk-00003.npz").is_file()
    assert sorted(features.load_cache(cache)) == [*hashes, "h6"]  # chunk-00002 kept, not written over
