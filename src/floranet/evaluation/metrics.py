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
    a perfect score.

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
    out["per_class"] = {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, name in enumerate(class_names)
    }
    present = (s > 0) | (np.bincount(y_pred, minlength=n_classes) > 0)
    out["macro_f1"] = float(np.mean(f[present]))
    cm = skm.confusion_matrix(y_true, y_pred, labels=labels)
    out["confusion_matrix"] = cm.tolist()
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = cm / cm.sum(axis=1, keepdims=True)
    out["confusion_matrix_normalized"] = np.nan_to_num(norm).round(4).tolist()
    out["class_names"] = list(class_names)
    return out
