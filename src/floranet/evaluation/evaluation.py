"""Evaluation: predictions computed once, then many views of them (as fastai's interpretation object).

An :class:`Evaluation` holds one set of predictions on labelled images; metrics, plots, top losses,
calibration, the report and the model card all read from it. :func:`write_evaluation` stores it in the
run directory (``predictions.csv`` beside ``metrics.json``), so later views never predict again;
:func:`evaluate_run` predicts anew (another runtime, or another labelled folder).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from floranet.config import InferenceConfig
from floranet.errors import ConfigError, DatasetError, ModelError
from floranet.evaluation import plots
from floranet.evaluation.calibration import (
    TemperatureFit,
    expected_calibration_error,
    reliability,
    search_temperature,
)
from floranet.evaluation.heldout import rows_to_evaluate
from floranet.evaluation.metrics import classification_metrics
from floranet.inference.predictor import NON_FINITE, apply_temperature, load
from floranet.rundir import RunDir
from floranet.utils import locks
from floranet.utils.files import file_digest, read_json
from floranet.utils.text import csv_text, formula_safe, unquote_formula

VALIDATION = "validation split"
# Facts of the training run kept in metrics.json when an evaluation is written again.
# metrics.json's record of the predictions.csv it describes (see write_evaluation).
PREDICTIONS_DIGEST = "predictions_sha256"
TRAINING_FACTS: tuple[str, ...] = ("timings_s", "weights", "backbone", "notes", "split", "distribute", "precision")
TRAINING_FACTS += ("trained_on", "machines")


@dataclass(frozen=True)
class Evaluation:
    """One set of predictions on labelled images, and every view of it.

    Attributes:
        class_names: Names in label-index order.
        paths: Image paths relative to ``data_dir``, aligned with ``labels`` and ``probs``.
        labels: True label indices.
        probs: The model's probabilities (uncalibrated).
        temperature: Fitted temperature (1.0 = none).
        data_dir: Folder the paths are relative to.
        source: What was evaluated, e.g. "validation split".
        extra: More fields for ``metrics.json`` (e.g. ``evaluated_on``: the runtime used).
        fit: How :meth:`with_temperature` found ``temperature`` (None: it was given, not fitted here).
    """

    class_names: tuple[str, ...]
    paths: tuple[str, ...]
    labels: np.ndarray
    probs: np.ndarray
    temperature: float = 1.0
    data_dir: str = ""
    source: str = VALIDATION
    extra: dict[str, Any] = field(default_factory=dict)
    fit: TemperatureFit | None = None

    def __post_init__(self) -> None:
        # NaN probabilities would be scored as class 0 and calibrated to NaN: a run that trained into NaN (or
        # damaged weights) is named here rather than finished with meaningless metrics.
        if not np.isfinite(self.probs).all():
            raise ModelError(f"Cannot evaluate on the {self.source}: {NON_FINITE}")

    @property
    def predictions(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    @property
    def calibrated_probs(self) -> np.ndarray:
        return apply_temperature(self.probs, self.temperature)

    def confusion_matrix(self, *, normalize: bool = False) -> np.ndarray:
        from sklearn.metrics import confusion_matrix

        cm: np.ndarray = confusion_matrix(self.labels, self.predictions, labels=list(range(len(self.class_names))))
        if not normalize:
            return cm
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.nan_to_num(cm / cm.sum(axis=1, keepdims=True))

    def most_confused(self, min_count: int = 1) -> list[tuple[str, str, int]]:
        """(true, predicted, count) off the diagonal, most frequent first."""
        cm = self.confusion_matrix()
        pairs = [
            (self.class_names[i], self.class_names[j], int(cm[i, j]))
            for i in range(len(cm))
            for j in range(len(cm))
            if i != j and cm[i, j] >= min_count
        ]
        return sorted(pairs, key=lambda p: (-p[2], p[0], p[1]))

    def losses(self) -> np.ndarray:
        p = self.probs[np.arange(len(self.labels)), self.labels]
        return -np.log(np.clip(p, 1e-12, 1.0))

    def top_losses(self, k: int = 9, *, wrong_only: bool = True) -> list[dict[str, Any]]:
        """The most confidently wrong images: path, true and predicted class, probabilities, loss."""
        losses = self.losses()
        order = np.argsort(-losses, kind="stable")
        out = []
        for i in order:
            if wrong_only and self.predictions[i] == self.labels[i]:
                continue
            out.append(
                {
                    "path": self.paths[i],
                    "true": self.class_names[self.labels[i]],
                    "predicted": self.class_names[self.predictions[i]],
                    "probability": float(self.probs[i].max()),
                    "probability_true": float(self.probs[i, self.labels[i]]),
                    "loss": float(losses[i]),
                }
            )
            if len(out) >= k:
                break
        return out

    def ece(self, *, calibrated: bool = False, n_bins: int = 15) -> float:
        return expected_calibration_error(self.calibrated_probs if calibrated else self.probs, self.labels, n_bins)

    def metrics(self, *, top_k: int = 2) -> dict[str, Any]:
        """Everything as one JSON-ready dict."""
        out = classification_metrics(self.labels, self.probs, self.class_names, top_k=top_k)
        out.update(
            {
                "source": self.source,
                "most_confused": [{"true": t, "predicted": p, "count": c} for t, p, c in self.most_confused()[:10]],
                "top_losses": self.top_losses(),
                "calibration": {
                    "ece": self.ece(),
                    "temperature": self.temperature,
                    "ece_after_temperature": self.ece(calibrated=True),
                    "reliability": reliability(self.probs, self.labels),
                },
            }
        )
        return out

    def with_temperature(self) -> Evaluation:
        """A copy with the temperature fitted on these predictions."""
        fit = search_temperature(self.probs, self.labels)
        return replace(self, temperature=fit.temperature, fit=fit)

    def to_csv(self) -> str:
        """``path,label,<probability of each class>`` per image: what :meth:`from_csv` reads back."""
        # Names as a spreadsheet shows them, never runs them (as every floranet CSV): from_csv reads them back.
        header = ["path", "label", *map(formula_safe, self.class_names)]
        rows = (
            [formula_safe(path), formula_safe(self.class_names[label]), *(f"{p:.9g}" for p in row)]
            for path, label, row in zip(self.paths, self.labels, self.probs, strict=True)
        )
        return csv_text([header, *rows])

    @classmethod
    def from_csv(cls, text: str, **fields: Any) -> Evaluation:
        """An evaluation from :meth:`to_csv`'s text (``fields``: temperature, data_dir, source, extra)."""
        reader = csv.reader(io.StringIO(text))
        header = next(reader)
        names = tuple(map(unquote_formula, header[2:]))
        rows = list(reader)
        index = {n: i for i, n in enumerate(names)}
        labels = np.asarray([index[unquote_formula(r[1])] for r in rows], dtype=np.int64)
        probs = np.asarray([[float(v) for v in r[2:]] for r in rows], dtype=np.float32).reshape(len(rows), len(names))
        return cls(names, tuple(unquote_formula(r[0]) for r in rows), labels, probs, **fields)


def write_evaluation(
    ev: Evaluation,
    run: RunDir,
    *,
    facts: Mapping[str, Any] | None = None,
    external: bool = False,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Stores an evaluation in the run: predictions, calibration and plots first, ``metrics.json`` last.

    ``metrics.json`` marks a complete evaluation: it records the sha256 of the ``predictions.csv`` it describes, so
    a process killed between the files leaves a pair that :func:`read_evaluation` tells apart (an interrupted
    ``evaluate`` left the new metrics beside the old predictions and plots, and the report showed both).

    Args:
        ev: The evaluation.
        run: The run directory.
        facts: Training facts to record beside the metrics (timings, precision, ...); None keeps
            those of the ``metrics.json`` already there (an external evaluation has none to keep).
        external: An evaluation on another folder (``metrics_external.json``), which never replaces
            the run's own validation results or its calibration.
        say: Where a warning goes (a previous ``metrics.json`` that cannot be read, whose facts are lost).

    Returns:
        The metrics as written.
    """
    metrics_name, predictions_name = (
        (RunDir.METRICS_EXTERNAL, RunDir.PREDICTIONS_EXTERNAL) if external else (RunDir.METRICS, RunDir.PREDICTIONS)
    )
    if facts is None:
        facts = {} if external else _previous_facts(run, say)
    if not len(ev.labels):  # no validation image (tiny classes): nothing to measure or draw
        with contextlib.suppress(FileNotFoundError):  # an earlier evaluation's rows would contradict the metrics
            (run / predictions_name).unlink()
        metrics = {**facts, "num_examples": 0, **ev.extra}
        run.write_json(metrics_name, metrics)
        return metrics
    metrics = {**facts, **ev.metrics(), **ev.extra}
    # search_temperature keeps 1.0 where none can be fitted (see TemperatureFit); a temperature given, not fitted
    # here (another folder's evaluation: the run's), counts as fitted unless it is 1
    fit = ev.fit if ev.fit is not None else TemperatureFit(ev.temperature, ev.temperature != 1.0)
    if not external:
        run.write_json(
            RunDir.CALIBRATION,
            {
                "temperature": ev.temperature,
                "fitted_on": VALIDATION,
                "fitted": fit.fitted,
                "at_bound": fit.at_bound,  # "lower" / "upper": the search stopped at that bound (None: inside)
                "ece_before": metrics["calibration"]["ece"],
                "ece_after": metrics["calibration"]["ece_after_temperature"],
            },
        )
    metrics[PREDICTIONS_DIGEST] = file_digest(run.write_text(predictions_name, ev.to_csv()))
    suffix = "_external" if external else ""
    plots.confusion_matrix_plot(
        ev.confusion_matrix(),
        ev.class_names,
        run.plot(f"confusion_matrix{suffix}.png"),
        title=ev.source[:1].upper() + ev.source[1:],  # str.capitalize() lowercased the folder's path
    )
    plots.reliability_plot(  # no "after temperature scaling" series where none was fitted: it lay over the model's
        reliability(ev.probs, ev.labels),
        run.plot(f"reliability{suffix}.png"),
        calibrated=reliability(ev.calibrated_probs, ev.labels) if fit.fitted else None,
    )
    run.write_json(metrics_name, metrics)  # last: it marks the files above as one complete evaluation
    return metrics


def _previous_facts(run: RunDir, say: Callable[[str], None]) -> dict[str, Any]:
    """The training facts of the ``metrics.json`` that is about to be replaced. One that cannot be read costs only
    those facts (said): the evaluation writes the file anew, so its damage must not stop the one step that repairs
    it (it did, after every image was predicted)."""
    path = run / RunDir.METRICS
    try:
        previous = read_json(path) if path.exists() else {}
        problem = "" if isinstance(previous, dict) else f"not a JSON object but {type(previous).__name__}"
    except (OSError, ValueError) as e:  # JSONDecodeError, a damaged encoding, or no file to read
        problem = f"{type(e).__name__}: {e}"
    if problem:  # a list (`[1, 2]`) was an AttributeError traceback
        say(
            f"{path} could not be read ({problem}): it is written anew, without the training facts it held "
            f"({', '.join(TRAINING_FACTS)})."
        )
        return {}
    return {k: v for k, v in previous.items() if k in TRAINING_FACTS}


def read_evaluation(run: RunDir, *, say: Callable[[str], None] | None = None) -> Evaluation | None:
    """The run's stored validation evaluation (``predictions.csv``), or None when it has none.

    ``predictions.csv`` and ``metrics.json`` of different evaluations are read again while another process holds
    the run's lock (an ``evaluate`` between its writes of the two: a report then failed, saying to rerun it), for
    ten minutes at most; ``say`` is told once, after a few seconds, what it waits for.

    Raises:
        ModelError: A file is damaged, or the two are of different evaluations and no other process writes the run
            (an ``evaluate`` interrupted between them).
    """
    what = f"writing {run.path} ({RunDir.PREDICTIONS} and {RunDir.METRICS} are of different evaluations till then)"
    ev, problem = locks.read_while_held(run / RunDir.LOCK, lambda: _read_once(run), what=what, say=say)
    if problem is not None:
        raise ModelError(problem)
    return ev


def _read_once(run: RunDir) -> tuple[Evaluation | None, str | None]:
    """The stored evaluation, and why its predictions.csv is not the one metrics.json describes (None: it is)."""
    if not run.exists(RunDir.PREDICTIONS):
        return None, None
    metrics = run.metrics()
    extra = {"evaluated_on": metrics["evaluated_on"]} if "evaluated_on" in metrics else {}
    path = run / RunDir.PREDICTIONS
    temperature, data_dir = run.temperature(), run.config().data_dir  # their own errors name their own files
    data = path.read_bytes()  # parsed and digested as one read: an evaluate may replace the file between two
    try:
        ev = Evaluation.from_csv(
            # As written: a quoted carriage return in a file name stays one, non-UTF-8 names round-trip.
            data.decode("utf-8", "surrogateescape"),
            temperature=temperature,
            data_dir=data_dir,
            extra=extra,
        )
    except (ValueError, KeyError, IndexError, StopIteration, csv.Error) as e:
        raise ModelError(f"{path} is damaged ({type(e).__name__}: {e}); rerun `floranet evaluate {run.path}`") from None
    except ModelError:  # NaN or infinity in the file: evaluate refuses a model that gives one, so the file is damaged
        raise ModelError(
            f"{path} is damaged (a probability is not a finite number); rerun `floranet evaluate {run.path}`"
        ) from None
    names = run.class_names()  # a damaged class_names.json is named here, not read past
    if list(ev.class_names) != names:
        raise ModelError(
            f"{path} scores the classes {list(ev.class_names)}, but {run / RunDir.CLASS_NAMES} names {names}; "
            f"rerun `floranet evaluate {run.path}`"
        )
    return ev, _mismatch(run, metrics, len(ev.labels), hashlib.sha256(data).hexdigest())


def _mismatch(run: RunDir, metrics: dict[str, Any], rows: int, sha256: str) -> str | None:
    """Why ``predictions.csv`` is not the one ``metrics.json`` describes (None: it is): its row count differs from
    ``num_examples``, or its sha256 from the one recorded (a run from before that record is checked by its count)."""
    path, count, digest = run / RunDir.PREDICTIONS, metrics.get("num_examples"), metrics.get(PREDICTIONS_DIGEST)
    if isinstance(count, int) and count != rows:
        problem = f"it holds {rows} prediction(s), {RunDir.METRICS} counts num_examples={count}"
    elif isinstance(digest, str) and digest != sha256:
        problem = f"its sha256 is not the one {RunDir.METRICS} records"
    else:
        return None
    return (
        f"{path} and {run / RunDir.METRICS} are of different evaluations ({problem}; an `evaluate` interrupted "
        f"between them?): rerun `floranet evaluate {run.path}`"
    )


def evaluate_run(
    run_dir: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 32,
    progress: bool = False,
    runtime: str = "auto",
    precision: str = "auto",
) -> Evaluation:
    """Predicts once on held-out data: the run's validation split, or every image of ``data_dir``.

    Args:
        run_dir: A floranet run directory.
        data_dir: Another labelled folder-per-class set; its classes must be among the run's.
        batch_size: Prediction batch size.
        progress: Show the doctor's progress bar (``data_dir`` only).
        runtime, precision: Inference runtime, as in :func:`floranet.inference.runtime.choose`.

    Raises:
        ConfigError: ``run_dir`` or ``data_dir`` is not a path.
        ModelError: ``run_dir`` is not a finished run.
        DatasetError: ``data_dir`` has classes the model does not know.
    """
    for name, value in (("run_dir", run_dir), ("data_dir", data_dir)):  # None was a TypeError from deep inside
        if not isinstance(value, str | os.PathLike) and (name == "run_dir" or value is not None):
            raise ConfigError(f"{name} must be a folder's path (text or os.PathLike). Received: {name}={value!r}")
    run = RunDir.open(run_dir, needs=RunDir.FINISHED)
    names = run.class_names()
    # The validation split fits the temperature anew (calibration.json is rewritten, so a damaged one is repaired,
    # not read); another folder is scored with the run's, read before any image is predicted.
    temperature = 1.0 if data_dir is None else run.temperature()
    # Metrics need the probabilities only: the unknown answer stays off (predict and serve give it).
    config = InferenceConfig(runtime=runtime, precision=precision, batch_size=batch_size, unknown=False)
    predictor = load(run.path, config)
    facts: dict[str, Any] = {}
    root, rows = rows_to_evaluate(run, names, data_dir, predictor.max_pixels, progress, facts)
    paths = [str(root / r.path) for r in rows]
    out = predictor.predict_files(paths)
    facts["evaluated_on"] = predictor.describe()
    if predictor.choice is not None:  # why that runtime and precision (e.g. bf16 emulated on this CPU)
        facts["evaluated_on_why"] = predictor.choice.reason
    kept = [i for i in range(len(rows)) if i not in out.errors]
    facts["unreadable_left_out"] = facts.get("unreadable_left_out", 0) + len(out.errors)
    if not kept:
        first = next(iter(out.errors.values()), "")
        raise DatasetError(f"none of the {len(rows)} images to evaluate could be read under {root} (first: {first})")
    labels = np.asarray([names.index(rows[i].label) for i in kept], dtype=np.int64)
    ev = Evaluation(
        tuple(names),
        tuple(rows[i].path for i in kept),
        labels,
        out.outputs[kept].reshape(len(kept), len(names)),
        temperature,
        str(root),
        # absolute, as config.yaml records its paths: the card and metrics_external.json are read from anywhere
        VALIDATION if data_dir is None else f"folder {os.path.abspath(data_dir)}",
        facts,
    )
    return ev.with_temperature() if data_dir is None else ev
