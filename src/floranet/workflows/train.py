"""The train job: fit, then evaluate once and view it every way (metrics, plots, calibration, report)."""

from __future__ import annotations

import time
from collections.abc import Callable

from floranet.config import TrainConfig
from floranet.data import doctor
from floranet.errors import ConfigError
from floranet.evaluation import Evaluation, plots, write_evaluation
from floranet.evaluation.modelcard import write_model_card
from floranet.evaluation.report import build_report
from floranet.inference import runtime
from floranet.models import weights as weights_lib
from floranet.rundir import RunDir
from floranet.training import TrainResult, fit
from floranet.training.opening import check_resume_settings
from floranet.training.trainer import check_arguments
from floranet.workflows.after_training import audit_and_unknown
from floranet.workflows.tracking import check_tracking
from floranet.workflows.tracking_store import experiment_name


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    say: Callable[[str], None] = print,
    mlflow: str | None = None,
    experiment: str | None = None,
) -> TrainResult:
    """Trains (:func:`floranet.training.fit`), then writes the run's evaluation, plots, ``report.html`` and
    model card (``README.md``).

    The validation predictions training made are the one evaluation of the run: ``metrics.json`` (first),
    ``calibration.json`` (temperature fitted on them), ``predictions.csv``, the plots and the report all
    come from them; nothing is predicted twice.

    Args:
        config: The resolved configuration (see :func:`floranet.config.resolve`).
        resume: Continue the run in ``config.out`` from its last completed epoch.
        progress: Show progress bars.
        say: Where one-line status messages go.
        mlflow: Also log the finished run to MLflow (:func:`floranet.workflows.tracking.log_to_mlflow`) at
            this tracking URI ("" for ``MLFLOW_TRACKING_URI`` or MLflow's default); None: no MLflow.
        experiment: The MLflow experiment's name; None: ``MLFLOW_EXPERIMENT_NAME``, else "floranet".

    Raises:
        ConfigError: ``config`` is no TrainConfig or has no data_dir, ``resume`` no bool or ``say`` not callable.
        MissingDependencyError: ``mlflow`` is asked for and not installed (before anything trains).
        ConfigError: ``mlflow`` names a store the installed MLflow cannot use, or a file store inside
            ``config.data_dir``; ``experiment`` is blank, or given without ``mlflow`` (before anything trains).
        RunLockedError: Another process is writing ``config.out``.
        DatasetError: ``config.data_dir`` does not exist or is a file (before ``config.out`` is made).
        ConfigError: The ``--exclude`` or ``--relabel`` list cannot be read, is malformed or names no file of
            the data folder (what the run folder held by then is removed again).
        WeightsError: The backbone's weights cannot be had (offline: the message names the bundled ones).
    """
    check_arguments(config, resume, say)  # before anything is written (data_dir="" too: the current folder)
    _check_tracking(config, mlflow, experiment, say)  # not after an hour of training
    if resume and (RunDir(config.out) / RunDir.CONFIG).is_file():  # before weights are looked for or downloaded
        check_resume_settings(RunDir(config.out), config)
    runtime.choose(config.runtime, config.precision)  # OpenVINO (and NNCF) said missing before the data scan
    # Offline with download-only weights, or no data folder: fail in seconds, before the run's lock creates its
    # folder and config.yaml (a retry was then told the folder already holds a run).
    weights_lib.ensure_available(config.backbone, config.weights)
    doctor.check_data_dir(config.data_dir)
    RunDir(config.out).check_outside(config.data_dir)  # before the lock creates the folder
    RunDir(config.out).check_new_output()  # a file, or a folder of the user's: said before the lock answers
    with RunDir(config.out).lock():  # one writer per run directory
        if resume:
            _check_unfinished(RunDir(config.out))
        return _train(config, resume=resume, progress=progress, say=say, mlflow=mlflow, experiment=experiment)


def _check_tracking(
    config: TrainConfig, mlflow: str | None, experiment: str | None, say: Callable[[str], None]
) -> None:
    """:func:`~floranet.workflows.tracking.check_tracking` before training, and an experiment without MLflow.

    Raises:
        ConfigError: As those; ``experiment`` without ``mlflow``, which would not be logged anywhere.
    """
    if mlflow is None:
        if experiment is not None:
            raise ConfigError(
                "experiment names the MLflow experiment of mlflow (--mlflow [URI]), which is not given. "
                f"Received: experiment={experiment!r}, mlflow=None"
            )
        return
    experiment_name(experiment)
    check_tracking(mlflow, data_dir=config.data_dir, say=say)


def _check_unfinished(run: RunDir) -> None:
    """Refuses to resume a finished run: it would evaluate, fit the unknown answer and audit again, and record
    the near-zero time of reloading its checkpoints as its training time. One whose training completed but whose
    evaluation did not (killed in the report, say) is resumed: that part runs again.

    Raises:
        ConfigError: The run is finished.
    """
    if run.is_finished():
        raise ConfigError(
            f"Nothing to resume: the run in {run.path} is finished. Evaluate it again with `floranet evaluate`, "
            "write its report with `floranet report`, or start a new run with another --out. Received: resume=True"
        )


def _say_compiled(result: TrainResult, say: Callable[[str], None]) -> None:
    info = result.compiled
    if info is not None:
        verdict = "agrees" if info["agrees"] else "DOES NOT agree (predict will use model.keras)"
        say(
            f"Compiled inference model: {result.run / RunDir.COMPILED} {verdict} with model.keras on "
            f"{info['images']} images (max |dp| {info['max_abs_diff'] or 0:.1e})."
        )


def _train(
    config: TrainConfig,
    *,
    resume: bool,
    progress: bool,
    say: Callable[[str], None],
    mlflow: str | None,
    experiment: str | None,
) -> TrainResult:
    start = time.perf_counter()
    result = fit(config, resume=resume, progress=progress, say=say)
    if result.validation is None:  # a non-chief worker: the chief writes the run directory
        return result
    result.timings["training"] = result.timings.pop("total")
    run, val = result.run, result.validation
    ev = Evaluation(
        tuple(result.class_names),
        val.paths,
        val.labels,
        val.probs,
        data_dir=str(result.data_dir),
        extra={"evaluated_on": val.evaluated_on},
    ).with_temperature()
    result.metrics = write_evaluation(ev, run, facts=result.facts)
    # ood.json, audit.*: read by the compiled check and the report. Without validation images the unknown answer
    # says why it is not fitted; the audit needs none (it was skipped without a word).
    audit_and_unknown(result, config, say)
    _say_compiled(result, say)
    history = run.history()
    if history:
        plots.history_plot(history, run.plot("history.png"))
    if len(ev.labels):
        say(f"Report: {build_report(run.path, evaluation=ev, model=result.model, say=say)}")
    else:  # the report shows a validation evaluation: said, not left out without a word
        say(
            "Report: none, as the split kept no validation image; score other images: "
            f"floranet evaluate {run.path} --data OTHER"
        )
    say(f"Model card: {write_model_card(run.path, say=say)}")
    # Everything this command did (training, evaluation, unknown answer, audit, report), in metrics.json too; with
    # a resumed run's earlier processes, as "training" counts them (total was under training).
    result.timings["total"] = time.perf_counter() - start + result.timings.get("earlier_processes", 0.0)
    result.metrics["timings_s"] = {k: round(v, 2) for k, v in result.timings.items()}
    run.write_json(RunDir.METRICS, result.metrics)
    if mlflow is not None:
        _track(result, mlflow, experiment, say)
    return result


def _track(result: TrainResult, uri: str, experiment: str | None, say: Callable[[str], None]) -> None:
    """Logs the finished run to MLflow; a failure there (a server down, a store refusing it) is kept in
    ``result.tracking_error`` rather than raised: the run is complete, and ``floranet track`` logs it later."""
    from floranet.workflows.tracking import log_to_mlflow
    from floranet.workflows.tracking_store import failure

    try:
        log_to_mlflow(result.run.path, uri or None, experiment=experiment, say=say)
    except Exception as e:  # noqa: BLE001 - MLflow's own exceptions, connection errors, ...: the run stands
        result.tracking_error = failure(e, uri or None)
