"""MLflow tracking (floranet[mlflow], not in the test extra: skipped without it): a finished run, logged."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

mlflow = pytest.importorskip("mlflow")

from floranet.errors import MissingDependencyError  # noqa: E402
from floranet.rundir import RunDir  # noqa: E402
from floranet.workflows.tracking import log_to_mlflow  # noqa: E402


def test_run_is_logged_with_params_epochs_artefacts_and_model(tiny_run: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3.17 keeps file stores behind this switch
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("features", "checkpoints"))
    uri = (tmp_path / "mlruns").as_uri()
    run_id = log_to_mlflow(run, uri, experiment="tests", say=lambda m: None)
    client = mlflow.tracking.MlflowClient(uri)
    logged = client.get_run(run_id)
    assert logged.data.params["backbone"] == "resnet20" and logged.data.params["image_size"] == "32x32"
    metrics = RunDir(run).metrics()
    assert logged.data.metrics["val_final_accuracy"] == pytest.approx(metrics["accuracy"])
    history = client.get_metric_history(run_id, "val_loss")
    assert [m.step for m in history] == [r["epoch"] for r in RunDir(run).history()]  # both stages, per epoch
    artefacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"metrics.json", "README.md", "config.yaml", "plots"} <= artefacts
    model = mlflow.keras.load_model(logged.data.tags["floranet.model_uri"])
    pixels = np.zeros((1, 32, 32, 3), np.float32)
    expected = RunDir(run).load_model()(pixels, training=False).numpy()
    np.testing.assert_allclose(model(pixels, training=False).numpy(), expected, atol=1e-6)


def test_without_mlflow_the_error_names_the_extra(tiny_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(MissingDependencyError, match=r"floranet\[mlflow\]"):
        log_to_mlflow(tiny_run, "file:///nowhere")
