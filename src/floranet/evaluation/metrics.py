"""Classification metrics from one set of predictions (scikit-learn underneath)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm


def classification_metrics(
    y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str], *, top_k: int = 2
) -> dict[str, Any]:
    """Accuracy, loss, top-k accuracy, per-class precision/recall/F1 and the confusion matrix.

    ``macro_f1`` averages the classes that are in ``y_true`` or predicted: a class with neither (``evaluate
    --data`` on a folder of some of the run's classes) has no F1 to average, and counting it as 0 understated
    a perfect score. A class with no image (``support`` 0) has its figures ``None`` (null in JSON), not
    measured: its recall always, its precision and F1 unless it was predicted (then 0: every answer was wrong).
    Shown as 0, a class the split kept no validation image of read as one the model fails on.

    Args:
        y_true: Integer labels, shape (n,).
        probs: Predicted probabilities, shape (n, classes).
        class_names: Names in label-index order.
        top_k: k of the top-k accuracy.

    Returns:
        A JSON-ready dict.
    """
    y_true = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    if len(probs):
        probs = probs / probs.sum(axis=1, keepdims=True)  # float32 softmax sums can be 1 ± 1e-7
    n_classes = len(class_names)
    labels = list(range(n_classes))
    y_pred = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=int)
    out: dict[str, Any] = {"num_examples": int(len(y_true))}
    if not len(y_true):
        return out
    clipped = np.clip(probs, 1e-12, 1.0)
    out["accuracy"] = float(skm.accuracy_score(y_true, y_pred))
    out["loss"] = float(skm.log_loss(y_true, clipped, labels=labels))
    k = min(top_k, n_classes)
    # Ties ranked as predict's top-k ranks them (the lower class index first; scikit-learn's puts it last)
    ranked = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    out[f"top_{k}_accuracy"] = float(np.mean(np.any(ranked == np.asarray(y_true)[:, None], axis=1)))
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    answered = np.bincount(y_pred, minlength=n_classes) > 0
    out["per_class"] = {
        name: _class_figures(float(p[i]), float(r[i]), float(f[i]), int(s[i]), answered=bool(answered[i]))
        for i, name in enumerate(class_names)
    }
    present = (s > 0) | answered
    out["macro_f1"] = float(np.mean(f[present]))
    cm = skm.confusion_matrix(y_true, y_pred, labels=labels)
    out["confusion_matrix"] = cm.tolist()
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = cm / cm.sum(axis=1, keepdims=True)
    out["confusion_matrix_normalized"] = np.nan_to_num(norm).round(4).tolist()
    out["class_names"] = list(class_names)
    return out


def _class_figures(precision: float, recall: float, f1: float, support: int, *, answered: bool) -> dict[str, Any]:
    """One class's row of ``per_class``: None for a figure with nothing to measure it on (scikit-learn's 0)."""
    if support:
        return {"precision": precision, "recall": recall, "f1": f1, "support": support}
    wrong = 0.0 if answered else None  # predicted, never right: a measured 0, which macro_f1 counts
    return {"precision": wrong, "recall": None, "f1": wrong, "support": support}


def unmeasured_classes(metrics: dict[str, Any]) -> list[str]:
    """The classes of a metrics dict's ``per_class`` with no image (support 0), whose figures are not measured."""
    per_class = metrics.get("per_class")
    if not isinstance(per_class, dict):
        return []
    return [name for name, r in per_class.items() if isinstance(r, dict) and r.get("support") == 0]


def unmeasured_why(metrics: dict[str, Any]) -> str:
    """Why :func:`unmeasured_classes` have no figures, as the end of a sentence ("... not measured, as ..."): the
    split holds no validation image of them, or some of its validation files were gone or changed when evaluated
    (``validation_files``: a class's images may be among those)."""
    one = len(unmeasured_classes(metrics)) == 1
    files = metrics.get("validation_files")
    files = files if isinstance(files, dict) else {}
    lost = sum(n for n in (files.get("missing"), files.get("changed")) if isinstance(n, int))
    if not lost:
        return f"the validation split holds no image of {'it' if one else 'them'}"
    return (
        f"none of {'its' if one else 'their'} validation images was there as at training ({lost} of the split's "
        f"{files.get('recorded', '?')} validation files were gone or changed when evaluated)"
    )


def support_counts(metrics: dict[str, Any]) -> dict[str, int]:
    """Per class, the validation images its figures are on (``per_class`` support): what was evaluated, which
    differs from the split's counts when files were gone or changed."""
    per_class = metrics.get("per_class")
    if not isinstance(per_class, dict):
        return {}
    return {n: r["support"] for n, r in per_class.items() if isinstance(r, dict) and isinstance(r.get("support"), int)}
