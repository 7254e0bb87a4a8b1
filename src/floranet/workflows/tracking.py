"""Experiment tracking where users already look: a finished run logged to MLflow (``floranet[mlflow]``).

TensorBoard stays (``RUN_DIR/logs``, written while training). :func:`log_to_mlflow` logs a finished run
directory as one MLflow run: the settings of ``config.yaml`` as params, every epoch of ``history.csv`` as
metrics (``step`` = the epoch, both stages), the final validation metrics of ``metrics.json``, the run's
files as artifacts (metrics, calibration, history, split, model card, report, plots, config) and the model
as an MLflow model (the Keras flavor: ``mlflow.keras.load_model(uri)`` or ``mlflow.pyfunc`` load it back; its
URI is the run's tag ``floranet.model_uri``).
It reads the files after training, so it never slows training down and works for any finished run.

Inside an active MLflow run (floranet called from the user's code) or with ``MLFLOW_RUN_ID`` set (``mlflow run``
sets it for a project's entry point), floranet's run is a child of that run (tag ``mlflow.parentRunId``), in its
experiment unless one is named; the parent's status, params and metrics are left as they are.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

from floranet.config import MLFLOW_EXPERIMENT
from floranet.errors import ConfigError, ModelError
from floranet.rundir import RunDir
from floranet.utils.download import redacted
from floranet.utils.optional import available, require
from floranet.workflows.tracking_store import (
    DATABASE_SCHEMES,
    check_reachable,
    check_scheme,
    experiment_name,
    local_store_path,
    logged_filter,
    split_credentials,
    store_scheme,
)

ARTIFACTS = (
    RunDir.CONFIG,
    RunDir.METRICS,
    RunDir.CALIBRATION,
    RunDir.HISTORY,
    RunDir.SPLIT,
    RunDir.CLASS_NAMES,
    RunDir.MODEL_CARD,
    RunDir.REPORT,
)
SCALARS = ("accuracy", "loss", "macro_f1", "top_2_accuracy", "num_examples")
# MLflow retries a failed request 7 times with exponential backoff: 4 minutes of silence for a server that went
# down. Bounded while floranet logs, unless the user set them.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}


def log_to_mlflow(
    run_dir: str | os.PathLike[str],
    tracking_uri: str | None = None,
    *,
    experiment: str | None = None,
    again: bool = False,
    say: Callable[[str], None] = print,
) -> str:
    """Logs a finished run to MLflow; returns the MLflow run id.

    Args:
        run_dir: A finished floranet run.
        tracking_uri: Where to log (``file:///...``, ``http://host:5000``, ``sqlite:///mlflow.db``, ...);
            None or "" uses ``MLFLOW_TRACKING_URI``, else MLflow's own default (a ``sqlite:///mlflow.db``
            store in the current folder, which needs the full ``mlflow`` package).
        experiment: The MLflow experiment's name; None: ``MLFLOW_EXPERIMENT_NAME``, else the parent run's (see
            the module's docstring), else "floranet" (:func:`~floranet.workflows.tracking_store.experiment_name`).
        again: Log a run that the experiment already holds (same run folder, same ``model.keras``) once more.
        say: Where the one-line summary goes.

    Raises:
        MissingDependencyError: MLflow is not installed (``pip install 'floranet[mlflow]'``).
        ConfigError: A store the installed MLflow cannot use (see :func:`check_tracking`); the run is logged in
            the experiment already, and ``again`` is False.
        ModelError: Not a finished run.
    """
    run = RunDir.open(run_dir, needs=RunDir.FINISHED)  # first: a run that is not there is said as such
    mlflow = require("mlflow", "--mlflow")
    named = experiment_name(experiment, fallback=None)
    if not run.is_finished():  # an interrupted run: model.keras is a checkpoint, its metrics are missing
        raise ModelError(
            f"{run.path} is not a finished run (its training or evaluation did not complete): finish it with "
            f"`floranet train DATA_DIR --out {run.path} --resume`, then log it. Received: run_dir={str(run_dir)!r}"
        )
    # Everything read first: a damaged file then leaves no empty FAILED MLflow run behind.
    params, history, final, model = _params(run), _history(run), _final_metrics(run), run.load_model()
    target = check_tracking(tracking_uri, data_dir=run.config().data_dir or None, say=say)
    active, parent_env = mlflow.active_run(), os.environ.get("MLFLOW_RUN_ID")
    parent = active.info.run_id if active is not None else parent_env
    say(f"Logging {run.path} to MLflow at {redacted(target)} ({_where(named, parent)}) ...")
    uri, credentials = split_credentials(target)
    # The caller's tracking URI and active experiment are theirs: floranet's store is set for its logging only, and
    # its experiment is given to start_run (MLflow's set_experiment made it the caller's active one).
    restored = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")
    with _environment(defaults=HTTP_LIMITS, overrides=credentials, removed=("MLFLOW_RUN_ID",), restored=restored):
        callers = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
        if tracking_uri or credentials:
            mlflow.set_tracking_uri(uri)
        try:
            into = _experiment(mlflow, named, active, parent_env)
            if not again:
                _refuse_logged_twice(mlflow, run, into)
            child = {"nested": True} if active is not None else {"parent_run_id": parent_env} if parent_env else {}
            with mlflow.start_run(run_name=run.path.resolve().name, experiment_id=into.experiment_id, **child) as got:
                _log(mlflow, run, params, history, final, model)
                run_id: str = got.info.run_id
        finally:
            if tracking_uri or credentials:
                mlflow.set_tracking_uri(callers)
    say(f"MLflow: logged {run.path} as run {run_id} in experiment {into.name!r} at {redacted(target)}")
    return run_id


def _where(named: str | None, parent: str | None) -> str:
    """Which experiment floranet's run goes to, in words (see :func:`_experiment`)."""
    by_id = os.environ.get("MLFLOW_EXPERIMENT_ID")
    into = f"experiment {named or MLFLOW_EXPERIMENT!r}" if named or not parent else "its parent's experiment"
    into = f"experiment id {by_id!r} (MLFLOW_EXPERIMENT_ID)" if by_id and not named and not parent else into
    return into + (f", a child of run {parent}" if parent else "")


def _log(
    mlflow: Any,
    run: RunDir,
    params: dict[str, Any],
    history: list[tuple[int, dict[str, float]]],
    final: dict[str, float],
    model: Any,
) -> None:
    """Everything of ``run`` into MLflow's active run: params, tags, the model, metrics and artefacts.

    The model comes before the metrics: MLflow 3's ``log_model`` logs every step-0 metric the run has again (linked
    to the model), and the final metrics, logged at step 0, appeared twice in their history. They are linked to the
    model by its id instead.
    """
    mlflow.log_params(params)
    mlflow.set_tags({"floranet.run_dir": str(run.path.resolve()), "floranet.model_version": run.model_version()})
    model_id = _log_model(mlflow, model)
    for step, values in history:
        mlflow.log_metrics(values, step=step)
    mlflow.log_metrics(final, model_id=model_id)
    for name in ARTIFACTS:
        if run.exists(name):
            mlflow.log_artifact(str(run / name))
    if (run / RunDir.PLOTS).is_dir():
        mlflow.log_artifacts(str(run / RunDir.PLOTS), artifact_path=RunDir.PLOTS)


def check_tracking(
    tracking_uri: str | None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    say: Callable[[str], None] | None = None,
) -> str:
    """Refuses, in a moment and before anything is trained or logged, a tracking store the installed MLflow cannot
    use (logging to it failed only after the whole training).

    Args:
        tracking_uri: As for :func:`log_to_mlflow`.
        data_dir: The run's data folder: a file store (or SQLite database) in it is refused, as ``--out`` is (its
            folders would be read as a class).
        say: Where the line saying that a tracking server is asked goes (None: nowhere).

    Returns:
        The tracking URI MLflow will log to.

    Raises:
        MissingDependencyError: MLflow is not installed.
        ConfigError: A URI urllib cannot read (``http://[::1``); a scheme MLflow has no tracking store for
            (``ftp://``, ``s3://``, ``databricks-uc``; see ``tracking_store.check_scheme``); a database store
            (MLflow's default among them) without SQLAlchemy (mlflow-skinny); a file store that MLflow keeps behind
            ``MLFLOW_ALLOW_FILE_STORE=true``, or one inside ``data_dir``; a tracking server that does not accept a
            connection and answer within ``tracking_store.ANSWER_TIMEOUT_S`` (MLflow itself retried for minutes).
    """
    mlflow = require("mlflow", "--mlflow")
    target: str = tracking_uri or mlflow.get_tracking_uri()
    arg = "mlflow" if tracking_uri or not os.environ.get("MLFLOW_TRACKING_URI") else "MLFLOW_TRACKING_URI"
    if tracking_uri or arg != "mlflow":
        given = f"{arg}={redacted(target)!r}"
    else:
        given = f"mlflow={tracking_uri!r} (MLflow's default store, {redacted(target)})"
    scheme = store_scheme(target, given)
    if scheme in DATABASE_SCHEMES and not available("sqlalchemy"):
        raise ConfigError(
            "MLflow cannot log to a database store without the full mlflow package (floranet[mlflow] installs "
            "mlflow-skinny): give a tracking server (--mlflow http://host:5000) or set MLFLOW_TRACKING_URI to "
            f"one, or `pip install mlflow`. Received: {given}"
        )
    check_scheme(scheme, given)
    _check_local_store(mlflow, target, scheme, (arg, given), data_dir)
    if scheme in ("http", "https"):
        check_reachable(target, given, say)
    return target


def _check_local_store(
    mlflow: Any, target: str, scheme: str, named: tuple[str, str], data_dir: str | os.PathLike[str] | None
) -> None:
    """A file store where MLflow keeps them behind ``MLFLOW_ALLOW_FILE_STORE=true``; one, or a SQLite database,
    inside ``data_dir`` (MLflow's folders would be read as a class by the next training, as ``--out``'s would).

    Raises:
        ConfigError: Either; ``named`` is the argument that gave ``target`` and how to show it.
    """
    arg, given = named
    allow_files = getattr(getattr(mlflow, "environment_variables", None), "MLFLOW_ALLOW_FILE_STORE", None)
    if scheme in ("", "file") and allow_files is not None and not allow_files.get():
        raise ConfigError(
            "MLflow refuses file stores unless MLFLOW_ALLOW_FILE_STORE=true: set it, or give a tracking server "
            f"(--mlflow http://host:5000). Received: {given}"
        )
    where = local_store_path(target, scheme)
    if where is not None and data_dir is not None:
        RunDir(where).check_outside(data_dir, arg=arg)


def _experiment(mlflow: Any, named: str | None, active: Any, parent_env: str | None) -> Any:
    """The experiment of floranet's run, made when new, never made MLflow's active one: ``named``, else the parent
    run's (a child run is listed under its parent in its experiment), else ``MLFLOW_EXPERIMENT_ID``'s, else
    :data:`~floranet.config.MLFLOW_EXPERIMENT`.

    Raises:
        ConfigError: The experiment named is deleted (MLflow keeps its name until it is purged).
    """
    if named is None and (active is not None or parent_env):
        parent = active if active is not None else mlflow.get_run(parent_env)
        return mlflow.get_experiment(parent.info.experiment_id)
    if named is None and os.environ.get("MLFLOW_EXPERIMENT_ID"):
        return mlflow.get_experiment(os.environ["MLFLOW_EXPERIMENT_ID"])
    name = named or MLFLOW_EXPERIMENT
    found = mlflow.get_experiment_by_name(name)
    if found is None:
        return mlflow.get_experiment(mlflow.create_experiment(name))
    if found.lifecycle_stage == "deleted":
        raise ConfigError(
            f"experiment {name!r} is deleted in MLflow (its name is kept until it is purged): restore it, or name "
            f"another. Received: experiment={name!r}"
        )
    return found


def _refuse_logged_twice(mlflow: Any, run: RunDir, experiment: Any) -> None:
    """Refuses a run the experiment holds already: `floranet track` again made a second MLflow run of it, beside
    the first, without a word. A logging that failed (its MLflow run FAILED) or a deleted run does not count.

    Raises:
        ConfigError: A finished MLflow run of ``experiment`` has this run folder and ``model.keras``.
    """
    query = logged_filter(str(run.path.resolve()), run.model_version())
    if query is None:
        return
    found = mlflow.search_runs([experiment.experiment_id], query, max_results=1, output_format="list")
    if found:
        raise ConfigError(
            f"{run.path} is logged in MLflow already, with this model.keras: run {found[0].info.run_id} in experiment "
            f"{experiment.name!r}. Log it once more with `floranet track {run.path} --again` (again=True). "
            "Received: again=False"
        )


@contextlib.contextmanager
def _environment(
    defaults: dict[str, str], overrides: dict[str, str], removed: tuple[str, ...] = (), restored: tuple[str, ...] = ()
) -> Iterator[None]:
    """``defaults`` (e.g. :data:`HTTP_LIMITS`) where the user has not set them, ``overrides``, and none of
    ``removed``, in the environment MLflow reads while it logs; what was there before is put back, and so are the
    ``restored`` variables that MLflow sets itself. (MLflow's ``start_run`` resumes the run of ``MLFLOW_RUN_ID``, and
    ends it, instead of starting a child of it.)"""
    saved = {name: os.environ.get(name) for name in (*defaults, *overrides, *removed, *restored)}
    os.environ.update({name: value for name, value in defaults.items() if name not in os.environ})
    os.environ.update(overrides)
    for name in removed:
        os.environ.pop(name, None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


_NOT_METRICS = frozenset({"epoch", "stage_epoch", "stage"})


def _params(run: RunDir) -> dict[str, Any]:
    params = {k: ("none" if v is None else v) for k, v in run.config().to_dict().items()}
    params["image_size"] = "x".join(str(s) for s in params["image_size"])
    params["num_classes"] = len(run.class_names())
    return params


def _final_metrics(run: RunDir) -> dict[str, float]:
    m = run.metrics()
    out = {f"val_final_{k}": float(m[k]) for k in SCALARS if isinstance(m.get(k), (int, float))}
    cal = m.get("calibration", {})
    for key in ("ece", "ece_after_temperature", "temperature"):
        if isinstance(cal.get(key), (int, float)):
            out[f"val_final_{key}"] = float(cal[key])
    timings = m.get("timings_s", {})
    if isinstance(timings.get("total"), (int, float)):
        out["train_seconds"] = float(timings["total"])
    return out


def _history(run: RunDir) -> list[tuple[int, dict[str, float]]]:
    """Every epoch of ``history.csv`` as (step = the epoch, its metrics); empty cells are left out.

    Raises:
        ModelError: The file is damaged (:meth:`RunDir.history` names the row and cell).
    """
    rows = []
    for row in run.history():
        values = {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and k not in _NOT_METRICS}
        rows.append((int(row.get("epoch") or 0), values))  # an empty epoch: 0, as before
    return rows


def _log_model(mlflow: Any, model: Any) -> str | None:
    """The model as an MLflow model (Keras flavor, raw RGB 0..255 in, probabilities out); returns its model id."""
    import numpy as np

    h, w = model.inputs[0].shape[1:3]
    example = np.zeros((1, int(h), int(w), 3), np.float32)
    signature = mlflow.models.infer_signature(example, model(example, training=False).numpy())
    info = mlflow.keras.log_model(model, name="model", signature=signature)
    mlflow.set_tag("floranet.model_uri", info.model_uri)  # MLflow 3 keeps models beside the run's artefacts
    model_id: str | None = info.model_id
    return model_id
