"""Shared test setup: quiet TensorFlow, an isolated Keras cache, artifact folder."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Never read or write the user's ~/.keras from tests.
os.environ["KERAS_HOME"] = _KERAS_HOME = tempfile.mkdtemp(prefix="floranet-keras-home-")

import pytest

# Keras writes keras.json there on import; without this every test run left one folder in the temp dir.
atexit.register(shutil.rmtree, _KERAS_HOME, ignore_errors=True)

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture
def keras_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty Keras cache for one test."""
    home = tmp_path / "keras-home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home


@pytest.fixture
def artifacts_dir() -> Path:
    """Where tests leave files for people to look at (screenshots, reports)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A finished run (random-init CIFAR ResNet-20, 32 px, 3 classes) shared by read-only tests.

    Read-only is checked: a test that changes any of its files fails the session at teardown
    (tests that write use ``writable_run``).
    """
    from corpus import snapshot
    from floranet import config
    from floranet.workflows import train
    from imagesets import make_image_folder

    root = tmp_path_factory.mktemp("tiny")
    data = make_image_folder(root / "data", classes=3, per_class=10, names=["daisy", "roses", "tulips"])
    cfg = config.resolve(
        data_dir=str(data),
        out=str(root / "run"),
        backbone="resnet20",
        weights="none",
        image_size=32,
        batch_size=8,
        epochs=3,
        fine_tune_epochs=1,
        runtime="tensorflow",
        precision="fp32",
    )
    run = train(cfg, progress=False, say=lambda m: None).run_dir
    before = snapshot(run)
    yield run
    after = snapshot(run)
    changed = sorted(os.fsdecode(p) for p in set(before) | set(after) if before.get(p) != after.get(p))
    assert not changed, f"tests wrote into the shared read-only tiny_run: {changed[:10]}"


@pytest.fixture
def writable_run(tiny_run: Path, tmp_path: Path) -> Path:
    """A private copy of ``tiny_run`` for a test that writes into its run directory."""
    dst = tmp_path / "run"
    shutil.copytree(tiny_run, dst)
    return dst
