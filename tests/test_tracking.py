"""MLflow tracking: a finished run, logged (with floranet[mlflow], not in the test extra: skipped without it), and
what is refused before MLflow is asked (with a stand-in module)."""

from __future__ import annotations

import os
import re
import shutil
import sys
import types
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from floranet.errors import MissingDependencyError, ModelError
from floranet.rundir import RunDir
from floranet.workflows.tracking import log_to_mlflow


@pytest.fixture(autouse=True)
def _no_mlflow_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's own set_experiment and set_tracking_uri write MLFLOW_EXPERIMENT_ID and MLFLOW_TRACKING_URI into the
    environment, which floranet reads: each test starts without them and leaves none behind."""
    for name in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_TRACKING_URI"):
        monkeypatch.setenv(name, "")  # recorded as unset, so that the teardown removes what MLflow writes
        monkeypatch.delenv(name)


def _stand_in(monkeypatch: pytest.MonkeyPatch, calls: list[str]) -> types.ModuleType:
    """An ``mlflow`` module that records what it is asked (mlflow itself is not installed for the tests)."""

    def record(name: str):
        return lambda *args, **kwargs: calls.append(name)

    @contextmanager
    def start_run(**kwargs):
        calls.append("start_run")
        yield types.SimpleNamespace(info=types.SimpleNamespace(run_id="r1"))

    stub = types.ModuleType("mlflow")
    for name in ("set_tracking_uri", "set_experiment", "log_params", "log_metrics", "set_tags"):
        setattr(stub, name, record(name))
    stub.start_run = start_run
    stub.active_run = lambda: None  # no caller's run: floranet's is a run of its own
    stub.is_tracking_uri_set = lambda: False  # the caller set none: floranet's is set for its logging only
    monkeypatch.setitem(sys.modules, "mlflow", stub)
    return stub


def test_run_is_logged_with_params_epochs_artefacts_and_model(tiny_run: Path, tmp_path: Path, monkeypatch) -> None:
    mlflow = pytest.importorskip("mlflow")
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
    # each once: MLflow 3's log_model logged the step-0 metrics (the final ones) a second time
    final = client.get_metric_history(run_id, "val_final_accuracy")
    model_metrics = client.get_logged_model(logged.outputs.model_outputs[0].model_id).metrics
    assert len(final) == 1 and "val_final_accuracy" in {m.key for m in model_metrics}  # linked to the model
    assert len(client.get_metric_history(run_id, "val_accuracy")) == len(RunDir(run).history())
    artefacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"metrics.json", "README.md", "config.yaml", "plots"} <= artefacts
    # The caller's tracking URI (none here) is as it was: floranet set its store for its own logging only.
    assert not mlflow.is_tracking_uri_set() and "MLFLOW_TRACKING_URI" not in os.environ
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # where the model's URI is looked up
    model = mlflow.keras.load_model(logged.data.tags["floranet.model_uri"])
    pixels = np.zeros((1, 32, 32, 3), np.float32)
    expected = RunDir(run).load_model()(pixels, training=False).numpy()
    np.testing.assert_allclose(model(pixels, training=False).numpy(), expected, atol=1e-6)


def test_without_mlflow_the_error_names_the_extra(tiny_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(MissingDependencyError, match=r"floranet\[mlflow\]"):
        log_to_mlflow(tiny_run, "file:///nowhere")
    # A run that is not there is said as such first (it was "install mlflow", and then "no such run").
    with pytest.raises(ModelError, match="nowhere"):
        log_to_mlflow(tiny_run.parent / "nowhere", "file:///nowhere")


def test_an_unfinished_run_is_refused(tiny_run: Path, tmp_path: Path, monkeypatch) -> None:
    """A run without metrics.json (killed before its evaluation) was logged as if complete."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("features", "checkpoints"))
    (run / RunDir.METRICS).unlink()
    calls: list[str] = []
    _stand_in(monkeypatch, calls)
    with pytest.raises(ModelError, match=r"is not a finished run .* --resume`, then log it. Received: run_dir="):
        log_to_mlflow(run, "http://127.0.0.1:1")
    assert calls == []


def test_a_damaged_run_is_refused_before_an_mlflow_run_starts(tiny_run: Path, tmp_path: Path, monkeypatch) -> None:
    """A config.yaml error found inside mlflow.start_run() left an empty FAILED MLflow run on every try."""
    from floranet.errors import ConfigError

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("features", "checkpoints"))
    config = run / RunDir.CONFIG
    config.write_text(config.read_text().replace("epochs: 3\n", "epochs: -1\n"))
    calls: list[str] = []
    _stand_in(monkeypatch, calls)
    with pytest.raises(ConfigError, match="Received: epochs=-1"):
        log_to_mlflow(run, "http://127.0.0.1:1")
    assert calls == []


def test_a_store_mlflow_skinny_cannot_use_is_refused_before_training(tiny_run, tmp_path, monkeypatch, capsys) -> None:
    """A bare --mlflow without MLFLOW_TRACKING_URI logs to MLflow 3's default, sqlite:///mlflow.db, which
    mlflow-skinny (what floranet[mlflow] installs) cannot open: train failed every time, after the whole training."""
    from floranet.cli import main
    from floranet.workflows import tracking
    from imagesets import make_image_folder

    calls: list[str] = []
    stub = _stand_in(monkeypatch, calls)
    stub.get_tracking_uri = lambda: f"sqlite:///{tmp_path}/mlflow.db"
    refuse_files = types.SimpleNamespace(get=lambda: False)
    stub.environment_variables = types.SimpleNamespace(MLFLOW_ALLOW_FILE_STORE=refuse_files)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(tracking, "available", lambda module: module != "sqlalchemy", raising=False)  # skinny
    data = make_image_folder(tmp_path / "data", classes=2, per_class=4)
    tiny = ["--backbone", "resnet20", "--weights", "none", "--image-size", "32", "--epochs", "1"]
    assert main(["train", str(data), "--out", str(tmp_path / "run"), *tiny, "--mlflow"]) == 2
    assert not (tmp_path / "run").exists()
    err = capsys.readouterr().err
    assert "without the full mlflow package" in err and "set MLFLOW_TRACKING_URI" in err
    assert f"Received: mlflow='' (MLflow's default store, sqlite:///{tmp_path}/mlflow.db)" in err
    assert main(["track", str(tiny_run), "--mlflow", "file:///tmp/mlruns"]) == 2
    assert "unless MLFLOW_ALLOW_FILE_STORE=true" in capsys.readouterr().err
    assert calls == []


def test_a_server_that_does_not_answer_is_refused_at_once_and_retries_are_bounded(
    tiny_run, tmp_path, monkeypatch, capsys
) -> None:
    """A tracking server that was down cost 253 s of MLflow's silent retries (after the whole training, for train)
    before a message of several lines; nothing said where floranet was logging."""
    from floranet.cli import main
    from httpserver import closed_port_url, error_server
    from imagesets import make_image_folder

    calls: list[str] = []
    stub = _stand_in(monkeypatch, calls)
    down = closed_port_url()
    data = make_image_folder(tmp_path / "data", classes=2, per_class=4)
    tiny = ["--backbone", "resnet20", "--weights", "none", "--image-size", "32", "--epochs", "1"]
    assert main(["train", str(data), "--out", str(tmp_path / "run"), *tiny, "--mlflow", down]) == 2
    assert not (tmp_path / "run").exists()
    assert (
        f"The MLflow tracking server does not answer (Connection refused): start it, or give another tracking "
        f"URI. Received: mlflow='{down}'" in capsys.readouterr().err
    )
    assert main(["track", str(tiny_run), "--mlflow", "http://:5000"]) == 2
    assert "names its host" in capsys.readouterr().err and calls == []

    def failing(name: str) -> None:  # as MLflow fails: a long message, after retries that MLflow reads from here
        calls.append(os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "unset"))
        raise RuntimeError("API request failed\nTraceback-like detail\nmore")

    stub.get_experiment_by_name = failing
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    with error_server(500) as (url, _):
        assert main(["track", str(tiny_run), "--mlflow", url]) == 1
        out, err = capsys.readouterr()
        assert f"Logging {tiny_run} to MLflow at {url} (experiment 'floranet') ..." in out
        assert err.strip() == "floranet track: logging to MLflow failed (RuntimeError: API request failed)"
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5")  # the user's own setting is kept
        assert main(["track", str(tiny_run), "--mlflow", url]) == 1
    # the caller's (none) is put back after each
    assert calls == ["set_tracking_uri", "2", "set_tracking_uri", "set_tracking_uri", "5", "set_tracking_uri"]
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "5"
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES")


def test_a_password_in_the_tracking_uri_is_never_printed(tiny_run, monkeypatch, capsys) -> None:
    """MLflow's error named the URL it requested, password and all, and floranet printed it, then repeated the URI
    in its `floranet track RUN --mlflow URI` hint; MLflow also prints it in its "View run at" lines."""
    from floranet.cli import main
    from floranet.workflows import tracking_store
    from httpserver import error_server

    seen: list[tuple[str, str | None]] = []
    stub = _stand_in(monkeypatch, [])
    stub.set_tracking_uri = lambda uri: seen.append((uri, os.environ.get("MLFLOW_TRACKING_PASSWORD")))

    def failing(name: str) -> None:  # as MLflow's message names the URL
        raise RuntimeError(f"API request to {seen[-1][0]}/api/2.0/mlflow/experiments/get-by-name failed")

    stub.get_experiment_by_name = failing
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    with error_server(500) as (url, _):
        with_password = url.replace("http://", "http://alice:S3cret%40PW@")
        assert main(["track", str(tiny_run), "--mlflow", with_password]) == 1
        # MLflow gets the URI without them, and the credentials where it reads them (sent as Basic auth)
        assert seen == [(url, "S3cret@PW"), (None, "S3cret@PW")] and "MLFLOW_TRACKING_PASSWORD" not in os.environ
    out, err = capsys.readouterr()
    assert "S3cret" not in out + err and "alice:***@127.0.0.1" in out
    assert f"failed (RuntimeError: API request to {url}/api/2.0/mlflow/experiments/get-by-name failed)" in err
    # whatever MLflow's message holds: any URL's password, the one given, decoded or not, or the environment's
    message = RuntimeError("to http://bob:x@h:1/a, S3cret%40PW, S3cret@PW and t0ken (env: http://eve:pw2@h)")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "t0ken")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://eve:pw2@h")
    assert tracking_store.failure(message, with_password) == (
        "RuntimeError: to http://bob:***@h:1/a, ***, *** and *** (env: http://eve:***@h)"
    )


def test_the_hint_after_a_failed_logging_hides_the_password(tmp_path, monkeypatch, capsys) -> None:
    import types

    import floranet.workflows
    from floranet.cli import main

    def trained(cfg, **kwargs):
        return types.SimpleNamespace(
            chief=True, metrics={}, timings={"total": 1.0}, run_dir=tmp_path / "run", tracking_error="Boom"
        )

    monkeypatch.setattr(floranet.workflows, "train", trained)
    assert main(["train", str(tmp_path), "--out", str(tmp_path / "run"), "--mlflow", "https://al:pw9@h:5"]) == 1
    err = capsys.readouterr().err
    assert "pw9" not in err
    assert f"floranet track {tmp_path / 'run'} --mlflow https://al:***@h:5 (your password in place of ***)" in err


def test_mlflow_sends_the_password_it_is_not_shown(tiny_run: Path, monkeypatch, capsys) -> None:
    pytest.importorskip("mlflow")
    from floranet.cli import main
    from httpserver import error_server

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    with error_server(500) as (url, requests):
        assert main(["track", str(tiny_run), "--mlflow", url.replace("//", "//alice:S3cretPW@")]) == 1
    out, err = capsys.readouterr()
    assert "S3cretPW" not in out + err and "logging to MLflow failed (MlflowException: API request to" in err
    assert requests and requests[-1][1] == "Basic YWxpY2U6UzNjcmV0UFc="  # alice:S3cretPW


def test_the_experiment_is_the_flag_else_mlflow_experiment_name_else_floranet(tiny_run, tmp_path, monkeypatch, capsys):
    """train had no --experiment, and MLFLOW_EXPERIMENT_NAME was ignored: every run went to "floranet"."""
    from floranet.cli import main
    from imagesets import make_image_folder

    stub, names = _stand_in(monkeypatch, []), []

    def stop(name: str) -> None:
        names.append(name)
        raise RuntimeError("stop here")

    stub.get_experiment_by_name = stop
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    store = str(tmp_path / "mlruns")
    assert main(["track", str(tiny_run), "--mlflow", store]) == 1
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from-env")
    assert main(["track", str(tiny_run), "--mlflow", store]) == 1
    assert "(experiment 'from-env') ..." in capsys.readouterr().out
    assert main(["track", str(tiny_run), "--mlflow", store, "--experiment", "flag"]) == 1
    data = make_image_folder(tmp_path / "data", classes=2, per_class=4)
    tiny = ["--backbone", "resnet20", "--weights", "none", "--image-size", "32", "--epochs", "1"]
    train = ["train", str(data), "--out", str(tmp_path / "run"), *tiny, "--fine-tune-epochs", "0"]
    assert main([*train, "--mlflow", store, "--experiment", "trained"]) == 1
    assert names == ["floranet", "from-env", "flag", "trained"]
    capsys.readouterr()
    shutil.rmtree(tmp_path / "run")
    # what MLflow would refuse after training, and an experiment logged nowhere: said before training
    assert main([*train, "--mlflow", store, "--experiment", " "]) == 2
    assert "experiment must be the name of an MLflow experiment. Received: experiment=' '" in capsys.readouterr().err
    assert main([*train, "--experiment", "trained"]) == 2
    assert "experiment names the MLflow experiment of mlflow (--mlflow [URI]), which is not given" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "run").exists()


def test_inside_an_mlflow_run_floranet_logs_a_child_run(tiny_run: Path, tmp_path: Path, monkeypatch) -> None:
    """Inside an active MLflow run (library use), or with MLFLOW_RUN_ID set (as `mlflow run` sets it), logging failed
    after training; MLFLOW_RUN_ID of a finished run was resumed, given floranet's params and flipped to FAILED."""
    mlflow = pytest.importorskip("mlflow")
    from floranet.workflows import tracking

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setattr(tracking, "_log_model", lambda mlflow, model: None)  # the model's logging is tested above
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    uri = (tmp_path / "mlruns").as_uri()
    client = mlflow.tracking.MlflowClient(uri)
    mlflow.set_tracking_uri(uri)
    project = mlflow.set_experiment("project")
    with mlflow.start_run() as finished:  # an `mlflow run` project's run, ended before floranet logs
        mlflow.log_param("lr", 0.1)
    monkeypatch.setenv("MLFLOW_RUN_ID", finished.info.run_id)
    child = client.get_run(log_to_mlflow(tiny_run, uri, say=lambda m: None))
    assert child.data.tags["mlflow.parentRunId"] == finished.info.run_id
    assert child.info.experiment_id == project.experiment_id and child.data.params["backbone"] == "resnet20"
    parent = client.get_run(finished.info.run_id)
    assert parent.info.status == "FINISHED" and parent.data.params == {"lr": "0.1"}
    assert os.environ["MLFLOW_RUN_ID"] == finished.info.run_id
    named = client.get_run(log_to_mlflow(tiny_run, uri, experiment="mine", say=lambda m: None))
    assert named.data.tags["mlflow.parentRunId"] == finished.info.run_id  # in the experiment it was told
    assert client.get_experiment(named.info.experiment_id).name == "mine"
    monkeypatch.delenv("MLFLOW_RUN_ID")
    # The caller's tracking URI and active experiment are theirs still ("mine" was made the active one).
    assert mlflow.get_tracking_uri() == uri and os.environ["MLFLOW_EXPERIMENT_ID"] == project.experiment_id
    with mlflow.start_run() as outer:  # library use: floranet's run is a child of the caller's
        child = client.get_run(log_to_mlflow(tiny_run, uri, again=True, say=lambda m: None))  # in "project" again
        assert mlflow.active_run().info.run_id == outer.info.run_id  # still the caller's, still running
        assert client.get_run(outer.info.run_id).info.status == "RUNNING"
    assert child.data.tags["mlflow.parentRunId"] == outer.info.run_id and child.info.status == "FINISHED"
    assert client.get_run(outer.info.run_id).data.params == {} and child.info.experiment_id == project.experiment_id


def test_mlflow_experiment_id_is_read_and_a_deleted_experiment_refused(tiny_run: Path, tmp_path: Path, monkeypatch):
    """MLFLOW_EXPERIMENT_ID (which MLflow itself reads) was ignored: the run went to "floranet"."""
    mlflow = pytest.importorskip("mlflow")
    from floranet.errors import ConfigError
    from floranet.workflows import tracking

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.setattr(tracking, "_log_model", lambda mlflow, model: None)
    uri = (tmp_path / "mlruns").as_uri()
    client = mlflow.tracking.MlflowClient(uri)
    chosen = client.create_experiment("chosen")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", chosen)
    said: list[str] = []
    assert client.get_run(log_to_mlflow(tiny_run, uri, say=said.append)).info.experiment_id == chosen
    assert f"(experiment id '{chosen}' (MLFLOW_EXPERIMENT_ID))" in said[0]
    named = client.get_run(log_to_mlflow(tiny_run, uri, experiment="named", say=said.append))
    assert client.get_experiment(named.info.experiment_id).name == "named"  # a name given wins
    client.delete_experiment(named.info.experiment_id)
    with pytest.raises(ConfigError, match=r"experiment 'named' is deleted in MLflow .* restore it, or name another"):
        log_to_mlflow(tiny_run, uri, experiment="named", again=True, say=said.append)


def test_a_run_logged_already_is_refused_unless_again(tiny_run: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """`floranet track RUN` of a run logged already made a second MLflow run of it, without a word."""
    mlflow = pytest.importorskip("mlflow")
    from floranet.cli import main
    from floranet.workflows import tracking

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    uri = (tmp_path / "mlruns").as_uri()

    def broken(mlflow, model) -> None:
        raise RuntimeError("the server went away")

    monkeypatch.setattr(tracking, "_log_model", broken)
    assert main(["track", str(tiny_run), "--mlflow", uri]) == 1  # its MLflow run FAILED: it does not count
    monkeypatch.setattr(tracking, "_log_model", lambda mlflow, model: None)  # the model's logging is tested above
    assert main(["track", str(tiny_run), "--mlflow", uri]) == 0
    capsys.readouterr()
    assert main(["track", str(tiny_run), "--mlflow", uri]) == 2
    client = mlflow.tracking.MlflowClient(uri)
    (first,) = client.search_runs([client.get_experiment_by_name("floranet").experiment_id], "status = 'FINISHED'")
    assert (
        f"{tiny_run} is logged in MLflow already, with this model.keras: run {first.info.run_id} in experiment "
        f"'floranet'. Log it once more with `floranet track {tiny_run} --again` (again=True)."
    ) in capsys.readouterr().err
    assert main(["track", str(tiny_run), "--mlflow", uri, "--again"]) == 0
    assert main(["track", str(tiny_run), "--mlflow", uri, "--experiment", "other"]) == 0  # another experiment's
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED", "FINISHED", "FINISHED"]


def test_the_filter_for_a_logged_run_quotes_what_it_can() -> None:
    from floranet.workflows.tracking_store import logged_filter

    assert logged_filter("/runs/it's", "abc-it_s") == (
        """tags.`floranet.run_dir` = "/runs/it's" AND tags.`floranet.model_version` = 'abc-it_s' """
        "AND attributes.status = 'FINISHED'"
    )
    assert logged_filter('/runs/it\'s "a"', "v") is None  # MLflow's filter cannot escape a quote


def test_a_damaged_history_is_refused_naming_the_file_and_row(tiny_run: Path, tmp_path: Path, monkeypatch) -> None:
    """A history.csv with a damaged epoch failed with `ValueError: invalid literal for int()`, naming no file."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("features", "checkpoints"))
    history = run / RunDir.HISTORY
    lines = history.read_text().splitlines()
    calls: list[str] = []
    _stand_in(monkeypatch, calls)
    for row, problem in [
        (lambda cells: ["stage1", "x2", *cells[2:]], "epoch='x2', not a whole number >= 0"),
        (lambda cells: [*cells[:2], "1.5", *cells[3:]], None),  # stage_epoch: not logged, a number all the same
        (lambda cells: [*cells[:3], "abc", *cells[4:]], f"{lines[0].split(',')[3]}='abc', not a number"),
    ]:
        history.write_text("\n".join([*lines[:2], ",".join(row(lines[2].split(","))), *lines[3:]]) + "\n")
        if problem is None:
            continue
        with pytest.raises(ModelError, match=re.escape(f"{history} is damaged: row 3 has {problem}. Put it back")):
            log_to_mlflow(run, "http://127.0.0.1:1")
    history.write_text("\n".join([lines[0], lines[1] + ",9", *lines[2:]]) + "\n")
    with pytest.raises(ModelError, match=f"{re.escape(str(history))} is damaged: row 2 has more cells than the header"):
        log_to_mlflow(run, "http://127.0.0.1:1")
    history.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ModelError, match=f"{re.escape(str(history))} is damaged and cannot be read"):
        log_to_mlflow(run, "http://127.0.0.1:1")
    assert calls == []  # refused before MLflow was asked anything
