"""Evaluation: predictions computed once, then many views of them.

:func:`evaluate_run` predicts the held-out split of a run (or another labelled
folder) and returns an :class:`Evaluation`; metrics, plots, top losses,
calibration and the report all read from that one object.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

from floranet import plots
from floranet.errors import DatasetError, ModelError
from floranet.io import write_json
from floranet.metrics import classification_metrics

CALIBRATION_FILE = "calibration.json"


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax of ``log(probs) / T``: T > 1 softens overconfident probabilities."""
    logits = np.log(np.clip(np.asarray(probs, np.float64), 1e-12, 1.0)) / float(temperature)
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising validation negative log-likelihood (Guo et al. 2017)."""
    labels = np.asarray(labels, int)
    if not len(labels):
        return 1.0

    def nll(t: float) -> float:
        p = apply_temperature(probs, t)[np.arange(len(labels)), labels]
        return float(-np.mean(np.log(np.clip(p, 1e-12, 1.0))))

    res = minimize_scalar(nll, bounds=(0.05, 20.0), method="bounded", options={"xatol": 1e-4})
    return float(res.x) if nll(res.x) <= nll(1.0) else 1.0


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """ECE: bin by confidence, average |accuracy - confidence| weighted by bin size."""
    rel = reliability(probs, labels, n_bins)
    n = max(1, sum(b["count"] for b in rel))
    return float(sum(b["count"] / n * abs(b["accuracy"] - b["confidence"]) for b in rel if b["count"]))


def reliability(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> list[dict[str, float]]:
    """Per confidence bin: mean confidence, accuracy and count (the reliability diagram's data)."""
    probs = np.asarray(probs)
    conf = probs.max(axis=1) if len(probs) else np.zeros(0)
    correct = (probs.argmax(axis=1) == np.asarray(labels)) if len(probs) else np.zeros(0, bool)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        mask = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        count = int(mask.sum())
        out.append({"low": float(lo), "high": float(hi), "count": count,
                    "confidence": float(conf[mask].mean()) if count else 0.0,
                    "accuracy": float(correct[mask].mean()) if count else 0.0})
    return out


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
    """

    class_names: tuple[str, ...]
    paths: tuple[str, ...]
    labels: np.ndarray
    probs: np.ndarray
    temperature: float = 1.0
    data_dir: str = ""
    source: str = "validation split"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def predictions(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    @property
    def calibrated_probs(self) -> np.ndarray:
        return apply_temperature(self.probs, self.temperature)

    def confusion_matrix(self, *, normalize: bool = False) -> np.ndarray:
        from sklearn.metrics import confusion_matrix

        cm = confusion_matrix(self.labels, self.predictions, labels=list(range(len(self.class_names))))
        if not normalize:
            return cm
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.nan_to_num(cm / cm.sum(axis=1, keepdims=True))

    def most_confused(self, min_count: int = 1) -> list[tuple[str, str, int]]:
        """(true, predicted, count) off the diagonal, most frequent first."""
        cm = self.confusion_matrix()
        pairs = [(self.class_names[i], self.class_names[j], int(cm[i, j]))
                 for i in range(len(cm)) for j in range(len(cm)) if i != j and cm[i, j] >= min_count]
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
            out.append({"path": self.paths[i], "true": self.class_names[self.labels[i]],
                        "predicted": self.class_names[self.predictions[i]],
                        "probability": float(self.probs[i].max()),
                        "probability_true": float(self.probs[i, self.labels[i]]), "loss": float(losses[i])})
            if len(out) >= k:
                break
        return out

    def ece(self, *, calibrated: bool = False, n_bins: int = 15) -> float:
        return expected_calibration_error(self.calibrated_probs if calibrated else self.probs, self.labels, n_bins)

    def metrics(self, *, top_k: int = 2) -> dict[str, Any]:
        """Everything as one JSON-ready dict."""
        out = classification_metrics(self.labels, self.probs, self.class_names, top_k=top_k)
        out.update({
            "source": self.source,
            "most_confused": [{"true": t, "predicted": p, "count": c} for t, p, c in self.most_confused()[:10]],
            "top_losses": self.top_losses(),
            "calibration": {"ece": self.ece(), "temperature": self.temperature,
                            "ece_after_temperature": self.ece(calibrated=True),
                            "reliability": reliability(self.probs, self.labels)},
        })
        return out

    def with_temperature(self) -> Evaluation:
        """A copy with the temperature fitted on these predictions."""
        from dataclasses import replace

        return replace(self, temperature=fit_temperature(self.probs, self.labels))

    def write(self, run_dir: str | os.PathLike[str], *, name: str = "metrics.json") -> dict[str, Any]:
        """Writes metrics (merged into ``metrics.json``), ``calibration.json`` and the plots."""
        run = Path(run_dir)
        metrics = self.metrics()
        path = run / name
        previous = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        keep = {k: v for k, v in previous.items()
                if k in ("timings_s", "weights", "backbone", "notes", "split", "distribute", "precision")}
        merged = {**keep, **metrics, **self.extra}
        write_json(path, merged)
        if self.source == "validation split":
            write_json(run / CALIBRATION_FILE, {"temperature": self.temperature,
                                                "fitted_on": "validation split",
                                                "ece_before": metrics["calibration"]["ece"],
                                                "ece_after": metrics["calibration"]["ece_after_temperature"]})
        plots.confusion_matrix_plot(self.confusion_matrix(), self.class_names, run / "plots" / "confusion_matrix.png",
                                    title=self.source.capitalize())
        plots.reliability_plot(reliability(self.probs, self.labels), run / "plots" / "reliability.png",
                               calibrated=reliability(self.calibrated_probs, self.labels))
        return merged


def evaluate_run(run_dir: str | os.PathLike[str], *, data_dir: str | os.PathLike[str] | None = None,
                 batch_size: int = 32, progress: bool = False, runtime: str = "auto",
                 precision: str = "auto") -> Evaluation:
    """Predicts once on held-out data: the run's validation split, or every image of ``data_dir``.

    Args:
        run_dir: A floranet run directory.
        data_dir: Another labelled folder-per-class set; its classes must be among the run's.
        batch_size: Prediction batch size.
        progress: Show the doctor's progress bar.
        runtime, precision: Inference runtime, as in :func:`floranet.runtime.choose`.

    Raises:
        ModelError: ``run_dir`` is not a finished run.
        DatasetError: ``data_dir`` has classes the model does not know.
    """
    import keras

    from floranet import config as config_lib
    from floranet.data import doctor
    from floranet.data import split as split_lib
    from floranet.training.data import Prepared

    run = Path(run_dir)
    for needed in ("model.keras", "config.yaml", "split.csv", "class_names.json"):
        if not (run / needed).exists():
            raise ModelError(f"{run} is not a finished floranet run: {needed} is missing.")
    cfg = config_lib.resolve(file=run / "config.yaml", batch_size=batch_size)
    names = json.loads((run / "class_names.json").read_text(encoding="utf-8"))
    model = keras.saving.load_model(run / "model.keras")
    if data_dir is None:
        split = split_lib.Split.from_csv(run / "split.csv", class_names=names)
        root, source, subset = Path(cfg.data_dir), "validation split", "validation"
        report = doctor.diagnose(root, max_pixels=cfg.max_pixels, progress=progress)
    else:
        root, source, subset = Path(data_dir), f"folder {data_dir}", "all"
        report = doctor.diagnose(root, max_pixels=cfg.max_pixels, progress=progress)
        usable = report.usable_files()
        unknown = sorted({f.label for f in usable} - set(names))
        if unknown:
            raise DatasetError(f"{root} has classes the model was not trained on: {', '.join(unknown)}. "
                               f"Known: {', '.join(names)}")
        split = split_lib.Split(rows=tuple(split_lib.SplitRow(f.path, f.label, "validation", f.sha256)
                                           for f in usable), class_names=tuple(names))
    tf_flags = {f.path: f.tf_decodable for f in report.usable_files()}
    prepared = Prepared(root, split, tf_flags, cfg)
    subset = "validation" if subset == "validation" else "all"
    from floranet import runtime as runtime_lib

    choice = runtime_lib.choose_inference(runtime, precision, images=len(prepared.rows(subset)))
    predict_fn = model if choice.runtime == "tensorflow" else runtime_lib.compile_inference(model, choice)
    probs, labels, rows = prepared.predict(predict_fn, subset)
    temperature = 1.0
    calib = run / CALIBRATION_FILE
    if data_dir is not None and calib.exists():
        temperature = float(json.loads(calib.read_text())["temperature"])
    ev = Evaluation(tuple(names), tuple(r.path for r in rows), labels, probs, temperature, str(root), source,
                    {"evaluated_on": f"model.keras ({choice.runtime} {choice.precision})"})
    return ev.with_temperature() if data_dir is None else ev
