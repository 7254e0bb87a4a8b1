"""Stage 2 on the cached outputs of the frozen prefix: the cut is exact, the views cycle, the top trains the model."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from floranet import config
from floranet.models import backbones, classifier
from floranet.training import prefix, stages
from floranet.training import views as views_lib
from floranet.workflows import train
from imagesets import TINY_MODEL, make_image_folder

FAST = {**TINY_MODEL, "batch_size": 8, "early_stopping_patience": 0}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data"), classes=3, per_class=10)


# mobilenet_v2 is floranet's (explicit ZeroPadding2D before every stride-2 layer), keras:mobilenet_v2 Keras's.
@pytest.mark.parametrize(
    ("name", "size"), [("resnet20", 32), ("resnet18", 64), ("mobilenet_v2", 64), ("keras:mobilenet_v2", 64)]
)
def test_top_of_prefix_is_the_model(name: str, size: int) -> None:
    keras.utils.set_random_seed(0)
    model = classifier.build_classifier(name, 4, image_size=(size, size), weights=None, head_units=16)
    split = prefix.split_model(model, backbones.get(name))
    assert split is not None
    if "mobilenet" in name:  # one tensor separates the two parts; ours' ZeroPadding2D layers do not break it
        assert split.cut == "block_13_expand"
    x = np.random.default_rng(0).uniform(0, 255, (3, size, size, 3)).astype(np.float32)
    cut = split.prefix(x, training=False)
    assert tuple(cut.shape[1:]) == split.cut_shape
    np.testing.assert_allclose(split.top(cut, training=False), model(x, training=False), atol=1e-5)
    shared = {id(w) for w in model.weights}
    assert all(id(w) in shared for w in split.top.weights)  # training the top trains the classifier


def test_views_cycle_per_epoch_and_carry_class_weights(tmp_path: Path) -> None:
    views = []
    for v in range(3):
        views_lib.write_view(tmp_path / f"v{v}.npy", (2,), 11, [np.full((4, 2), v), np.full((6, 2), v)])
        views.append(views_lib.ViewFile(tmp_path / f"v{v}.npy", 10))
        assert np.load(tmp_path / f"v{v}.npy").shape == (11, 2)  # a plain .npy; the 11th row is padding
    labels = np.arange(10) % 2
    seq = views_lib.ViewSequence(views, labels, 4, seed=1, first_epoch=2, class_weight={0: 1.0, 1: 3.0})
    assert len(seq) == 3
    seen = []
    for _ in range(4):
        batches = [seq[i] for i in range(len(seq))]
        seen.append({float(b[0][0, 0]) for b in batches})
        x, y, w = batches[0]
        assert x.dtype == np.float32 and np.array_equal(w, np.where(y == 1, 3.0, 1.0))
        assert sorted(np.concatenate([b[1] for b in batches]).tolist()) == sorted(labels.tolist())
        seq.on_epoch_end()
    assert seen == [{2.0}, {0.0}, {1.0}, {2.0}]  # epoch e reads view e mod 3, resumed at epoch 2
    rows = np.array([0, 1, 2, 5, 7, 8])
    np.testing.assert_array_equal(views[1].take(rows), np.ones((6, 2), np.float32))
    views_lib.write_view(tmp_path / "ramp.npy", (1,), 6, [np.arange(6, dtype=np.float32).reshape(6, 1)])
    ramp = views_lib.ViewFile(tmp_path / "ramp.npy", 6)
    np.testing.assert_array_equal(ramp.take(np.array([4, 1, 2, 0]))[:, 0], [4, 1, 2, 0])  # any order, kept
    with pytest.raises(ValueError, match="not a cached view"):
        views_lib.ViewFile(tmp_path / "v0.npy", 12)


def _run(images: Path, out: Path, **kw: object) -> Path:
    cfg = config.resolve(data_dir=str(images), out=str(out), epochs=2, **{**FAST, **kw})
    return train(cfg, progress=False, say=lambda m: None).run_dir


def _weights(run: Path) -> list[tuple[int, str, list[np.ndarray]]]:
    """(position in the backbone, name, weights) of every backbone layer with weights."""
    base = classifier.backbone_of(keras.saving.load_model(run / "model.keras"))
    return [(i, la.name, [np.asarray(w) for w in la.get_weights()]) for i, la in enumerate(base.layers) if la.weights]


def test_stage2_trains_the_top_through_the_cache_and_leaves_the_frozen_layers(images, tmp_path) -> None:
    before = _weights(_run(images, tmp_path / "stage1", fine_tune_epochs=0))
    run = _run(images, tmp_path / "cached", fine_tune_epochs=2, fine_tune_learning_rate=1e-2, augment="fine-tune")
    after = _weights(run)
    state = json.loads((run / "state.json").read_text())["stages"]["stage2"]
    assert state["path"] == "prefix-cache" and state["epochs_done"] == 2
    assert not list((run / "features").glob("prefix-*"))  # the views are gone once the stage is complete
    base = classifier.backbone_of(keras.saving.load_model(run / "model.keras"))
    start = backbones.fine_tune_start(base, backbones.get("resnet20"))
    same = {
        name: all(np.array_equal(a, b) for a, b in zip(w0, w1, strict=True))
        for (_, name, w0), (_, _, w1) in zip(before, after, strict=True)
    }
    frozen = [name for i, name, _ in before if i < start]
    tuned = [name for i, name, _ in before if i >= start and "_bn" not in name]
    assert frozen and tuned
    assert all(same[n] for n in frozen)
    assert not any(same[n] for n in tuned)


def test_stage2_falls_back_to_the_full_model_and_says_why(images, tmp_path, monkeypatch) -> None:
    said: list[str] = []
    monkeypatch.setattr(prefix, "MAX_CACHE_BYTES", 1)
    cfg = config.resolve(data_dir=str(images), out=str(tmp_path / "run"), epochs=1, fine_tune_epochs=1, **FAST)
    result = train(cfg, progress=False, say=said.append)
    run = result.run_dir
    assert json.loads((run / "state.json").read_text())["stages"]["stage2"]["path"] == "full"
    assert any("whole model" in m and "over the budget" in m for m in said)
    off = _run(images, tmp_path / "off", fine_tune_epochs=1, fine_tune_cache="off")
    assert json.loads((off / "state.json").read_text())["stages"]["stage2"]["path"] == "full"
    # No prefix outputs from stage 1 either: the validation images are predicted by the compiled model, which
    # gives model.keras's probabilities.
    for folder in (run, off):
        assert json.loads((folder / "metrics.json").read_text())["evaluated_on"].startswith("the compiled model")
    from floranet.data.decode import load_resized

    model = keras.saving.load_model(run / "model.keras")
    val = result.validation
    pixels = np.stack([load_resized(images / p, (32, 32)) for p in val.paths])
    np.testing.assert_allclose(val.probs, model.predict(pixels, verbose=0), atol=1e-4)


def test_class_weights_reach_the_cached_stage(tmp_path, monkeypatch) -> None:
    data = make_image_folder(tmp_path / "data", classes=2, per_class=6)
    weights: list[np.ndarray | None] = []
    real = views_lib.ViewSequence.__init__

    def spy(self: views_lib.ViewSequence, *args: object, **kw: object) -> None:
        real(self, *args, **kw)  # type: ignore[arg-type]
        weights.append(self.weights)

    monkeypatch.setattr(views_lib.ViewSequence, "__init__", spy)
    run = _run(data, tmp_path / "run", fine_tune_epochs=1, class_weights="auto")
    assert json.loads((run / "state.json").read_text())["stages"]["stage2"]["path"] == "prefix-cache"
    assert weights[0] is not None and weights[1] is None  # training batches weighted, validation not


def test_fine_tune_views_is_validated() -> None:
    with pytest.raises(Exception, match="fine_tune_views must be an int >= 0"):
        config.resolve(data_dir=".", out="x", fine_tune_views=-1)
    with pytest.raises(Exception, match=r"augment='off' every view is the same image\). Received: fine_tune_views=3"):
        config.resolve(data_dir=".", out="x", fine_tune_views=3, augment="off")  # it cached 3 identical copies
    assert config.resolve(data_dir=".", out="x", fine_tune_views=3, augment="fine-tune").fine_tune_views == 3
    with pytest.raises(Exception, match="fine_tune_cache"):
        config.resolve(data_dir=".", out="x", fine_tune_cache="sometimes")
    assert config.resolve(data_dir=".", out="x", precision="int8").precision == "int8"  # training takes int8


@pytest.fixture
def computed(monkeypatch) -> list[str]:
    """The names of the views the prefix computes itself (its own pass over the images), in order."""
    names: list[str] = []
    real_compute = prefix._compute

    def spy(fn, prepared, subset, seed, augment, path, *args):  # type: ignore[no-untyped-def]
        names.append(path.stem)
        return real_compute(fn, prepared, subset, seed, augment, path, *args)

    monkeypatch.setattr(prefix, "_compute", spy)
    return names


def test_stage1_writes_the_prefix_outputs_stage2_and_the_unknown_answer_read(
    images, tmp_path, monkeypatch, computed
) -> None:
    monkeypatch.setattr(prefix, "remove_caches", lambda run: None)  # keep the views to compare
    cfg = config.resolve(data_dir=str(images), out=str(tmp_path / "run"), epochs=1, fine_tune_epochs=1, **FAST)
    said: list[str] = []
    result = train(cfg, progress=False, say=said.append)
    run = result.run_dir
    assert json.loads((run / "state.json").read_text())["stages"]["stage2"]["path"] == "prefix-cache"
    assert computed == []  # no pass of the prefix of its own: the validation set and the view came from stage 1
    assert not any("Unknown answer: embedding" in m for m in said)  # nor of the final model
    assert result.training is not None and len(result.training.paths) == 24
    assert (run / "ood.json").exists()
    # The copied views hold what the prefix computes from the images (fp32, TensorFlow, here).
    model = keras.saving.load_model(run / "model.keras")
    split = prefix.split_model(model, backbones.get("resnet20"))
    folder = next(p for p in (run / "features").glob("prefix-*") if not p.name.startswith(prefix.STAGE1))
    rows = np.load(folder / "validation.rows.npy")
    val = views_lib.ViewFile(folder / "validation.npy", len(rows)).take(np.arange(len(rows)))
    from floranet.data.decode import load_resized
    from floranet.rundir import RunDir

    files = [images / r.path for r in RunDir(run).split().validation()]
    pixels = np.stack([load_resized(files[i], (32, 32)) for i in rows])
    want = np.asarray(split.prefix(pixels, training=False))
    np.testing.assert_allclose(val, want, atol=2e-2 * max(1.0, float(np.abs(want).max())))  # float16 storage
    # ...and both subsets' outputs through the fine-tuned top are the saved model's own (the validation ones are
    # the evaluation: no pass over the images of its own).
    for outputs in (result.training, result.validation):
        assert outputs.evaluated_on.startswith("stage 1's cached prefix outputs")
        some = [images / p for p in outputs.paths[:4]]
        np.testing.assert_allclose(
            outputs.probs[:4], model(np.stack([load_resized(f, (32, 32)) for f in some])), atol=2e-2
        )
    assert len(result.validation.paths) == len(files) and result.validation.features is not None


def test_augmented_views_are_computed_and_the_validation_set_is_copied(images, tmp_path, computed) -> None:
    _run(images, tmp_path / "run", fine_tune_epochs=2, augment="fine-tune", fine_tune_views=2)
    assert computed == ["train-view-0", "train-view-1"]
    assert stages.AUTO_VIEWS >= 1
