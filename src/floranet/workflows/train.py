"""The train job: fit, then evaluate once and view it every way (metrics, plots, calibration, report)."""

from __future__ import annotations

from collections.abc import Callable

from floranet.config import TrainConfig
from floranet.evaluation import Evaluation, plots, write_evaluation
from floranet.evaluation.report import build_report
from floranet.training import TrainResult, fit
from floranet.workflows.after_training import audit_and_unknown


def train(
    config: TrainConfig, *, resume: bool = False, progress: bool = True, say: Callable[[str], None] = print
) -> TrainResult:
    """Trains (:func:`floranet.training.fit`), then writes the run's evaluation, plots and ``report.html``.

    The validation predictions training made are the one evaluation of the run: ``metrics.json`` (first),
    ``calibration.json`` (temperature fitted on them), ``predictions.csv``, the plots and the report all
    come from them; nothing is predicted twice.

    Args:
        config: The resolved configuration (see :func:`floranet.config.resolve`).
        resume: Continue the run in ``config.out`` from its last completed epoch.
        progress: Show progress bars.
        say: Where one-line status messages go.
    """
    result = fit(config, resume=resume, progress=progress, say=say)
    if result.validation is None:  # a non-chief worker: the chief writes the run directory
        return result
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
    history = run.history()
    if history:
        plots.history_plot(history, run.plot("history.png"))
    if len(ev.labels):
        audit_and_unknown(result, config, say)  # ood.json, audit.*: read by the report
        say(f"Report: {build_report(run.path, evaluation=ev, model=result.model)}")
    return result
