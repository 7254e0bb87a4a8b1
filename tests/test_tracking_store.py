"""Where MLflow logs: the tracking URI read as MLflow reads it and refused, before training, where MLflow would fail
after it. MLflow is not installed for the tests: a stand-in module answers what floranet asks of it."""

from __future__ import annotations

import os
import re
import sys
import time
import types
from pathlib import Path

import pytest

from floranet.errors import ConfigError
from floranet.workflows import tracking_store
from floranet.workflows.tracking import check_tracking


@pytest.fixture
def mlflow_stub(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """An ``mlflow`` that refuses file stores, as MLflow 3.17 does without MLFLOW_ALLOW_FILE_STORE=true."""
    stub = types.ModuleType("mlflow")
    stub.get_tracking_uri = lambda: os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    refuse_files = types.SimpleNamespace(get=lambda: False)
    stub.environment_variables = types.SimpleNamespace(MLFLOW_ALLOW_FILE_STORE=refuse_files)
    monkeypatch.setitem(sys.modules, "mlflow", stub)
    monkeypatch.setitem(sys.modules, "mlflow.tracking._tracking_service.utils", None)  # its registry, if imported
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return stub


def test_named_stores_and_unreadable_uris_are_not_taken_for_file_stores(mlflow_stub) -> None:
    """`databricks` and `databricks-uc` (no "://") were refused as file stores "unless MLFLOW_ALLOW_FILE_STORE", and
    so was http://[::1 (urllib cannot read it) instead of being named for what it is."""
    assert check_tracking("databricks") == "databricks"
    read = tracking_store.store_scheme
    assert [read(u, "") for u in ("databricks", "databricks-uc", "uc")] == ["databricks", "databricks-uc", "uc"]
    assert read("databricks://work", "") == "databricks" and read("postgresql+psycopg2://h/db", "") == "postgresql"
    assert read("C:\\mlruns", "") == "" == read("mlruns", "") and read("file:///tmp/m", "") == "file"
    with pytest.raises(ConfigError, match=r"cannot be read \(Invalid IPv6 URL\). Received: mlflow='http://\[::1'"):
        check_tracking("http://[::1")
    with pytest.raises(ConfigError, match=r"cannot be read .*Received: mlflow='http://al:\*\*\*@\[::1'"):
        check_tracking("http://al:pw@[::1")  # its password hidden all the same
    with pytest.raises(ConfigError, match="unless MLFLOW_ALLOW_FILE_STORE=true"):  # what is a file store still is
        check_tracking("mlruns")


def test_a_scheme_mlflow_has_no_tracking_store_for_is_refused_with_the_ones_it_has(mlflow_stub) -> None:
    """ftp://, s3:// and a typo such as htp:// passed the check and failed only when logging, after training."""
    listed = "give a folder or one of databricks://, file://, http://, https://, mssql://, mysql://, postgresql://"
    with pytest.raises(ConfigError, match=f"no tracking store for htp:// URIs: {listed}, sqlite://. Received: "):
        check_tracking("htp://host:5000")
    with pytest.raises(ConfigError, match=r"for s3:// URIs \(an artifact store: it keeps a tracking server's files"):
        check_tracking("s3://bucket/mlruns")
    with pytest.raises(ConfigError, match=r"ftp:// URIs \(an artifact store.*Received: mlflow='ftp://u:\*\*\*@h/x'"):
        check_tracking("ftp://u:pw@h/x")
    with pytest.raises(ConfigError, match="databricks-uc is Unity Catalog's model registry, not a tracking store"):
        check_tracking("databricks-uc")


def test_the_schemes_are_those_of_the_installed_mlflow(monkeypatch) -> None:
    mlflow = pytest.importorskip("mlflow")
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    assert {"", "file", "http", "https", "databricks"} <= set(tracking_store.supported_schemes())
    assert not {"uc", "databricks-uc"} & set(tracking_store.supported_schemes())
    monkeypatch.setitem(_tracking_store_registry._registry, "myplugin", lambda **kwargs: None)  # a plugin's store
    assert check_tracking("myplugin://x") == "myplugin://x"
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    with pytest.raises(ConfigError, match=r"no tracking store for ftp:// URIs .* one of databricks://, file://"):
        check_tracking("ftp://h/x")
    assert mlflow.get_tracking_uri()  # the real MLflow answered, not a stand-in


def test_a_file_store_inside_the_data_folder_is_refused(mlflow_stub, tiny_run, tmp_path, monkeypatch, capsys) -> None:
    """--mlflow mlruns run from the data folder (or a file: URI, or MLFLOW_TRACKING_URI, naming a folder in it) wrote
    MLflow's folders into the dataset: the next training found a new class, "mlruns"."""
    from floranet.cli import main
    from floranet.rundir import RunDir
    from floranet.workflows import tracking
    from imagesets import make_image_folder

    mlflow_stub.environment_variables.MLFLOW_ALLOW_FILE_STORE = types.SimpleNamespace(get=lambda: True)
    data = make_image_folder(tmp_path / "data", classes=2, per_class=2)
    monkeypatch.chdir(data)
    inside = f"must be outside the data folder '{data}' (a folder in it would be read as a class). Received:"
    for uri in ("mlruns", "file:mlruns", (data / "a" / "mlruns").as_uri(), "sqlite:///mlflow.db"):
        monkeypatch.setattr(tracking, "available", lambda module: True)  # the full mlflow, for sqlite
        with pytest.raises(ConfigError, match=re.escape(f"mlflow {inside}")):
            check_tracking(uri, data_dir=data)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", str(data / "runs"))
    with pytest.raises(ConfigError, match=re.escape(f"MLFLOW_TRACKING_URI {inside} MLFLOW_TRACKING_URI='{data}/runs'")):
        check_tracking(None, data_dir=data)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert check_tracking("../mlruns", data_dir=data) == "../mlruns"  # beside it: taken
    assert check_tracking("sqlite:////tmp/elsewhere.db", data_dir=data) and check_tracking("mlruns") == "mlruns"
    # refused before training (no run folder made), and by track for the data folder the run was trained on
    tiny = ["--backbone", "resnet20", "--weights", "none", "--image-size", "32", "--epochs", "1"]
    assert main(["train", str(data), "--out", str(tmp_path / "run"), *tiny, "--mlflow", "mlruns"]) == 2
    assert f"mlflow {inside} mlflow='mlruns'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not (data / "mlruns").exists()
    store = Path(RunDir(tiny_run).config().data_dir) / "mlruns"
    assert main(["track", str(tiny_run), "--mlflow", store.as_uri()]) == 2
    assert f"mlflow must be outside the data folder '{store.parent}'" in capsys.readouterr().err


def test_a_server_that_never_answers_is_refused_in_seconds(mlflow_stub, monkeypatch) -> None:
    """A server that accepted connections and never answered passed the check (a TCP connection), then cost MLflow's
    retries, 3 minutes of silence, after training."""
    from httpserver import error_server, silent_server

    monkeypatch.setattr(tracking_store, "ANSWER_TIMEOUT_S", 0.5, raising=False)
    said: list[str] = []
    with silent_server() as url:
        start = time.monotonic()
        with pytest.raises(ConfigError, match=r"answer \(it accepts connections but sends no answer within 0.5 s\)"):
            check_tracking(url.replace("//", "//u:pw@"), say=said.append)
        assert time.monotonic() - start < 5
    assert said == [f"MLflow: asking the tracking server at {url.replace('//', '//u:***@')} (at most 0.5 s) ..."]
    with error_server(500) as (url, requests):  # an error status is an answer
        assert check_tracking(url.replace("//", "//u:pw@") + "/prefix/") == url.replace("//", "//u:pw@") + "/prefix/"
    assert requests == [("/prefix/api/2.0/mlflow/experiments/get-by-name?experiment_name=_", None)]  # no password
