"""The "unknown" answer: an out-of-distribution score and a threshold fitted at the end of training.

A run holds ``ood.json`` (method, threshold, the share of known images it keeps, ...) and ``ood.npz`` (the
statistics the score needs, plain arrays). Every score is "higher = less like the training classes":

* ``combined``: the mean of four z-scored scores (means and deviations of the known validation images):
  ``knn_head``, ``knn``, ``energy`` and ``class_mean``. The first three fail on different held-out flower
  classes, so together they separate those best; ``class_mean`` adds what is far from every class (a cat, a
  rocket, a page of text), which the other three often let through. A run fitted before ``class_mean`` joined
  (its ``ood.npz`` has no ``means``) keeps scoring with its three parts.
* ``knn_head``: cosine distance from the image's activations in the head's last hidden layer to those of its
  k-th nearest training image (Sun et al. 2022, "Out-of-distribution detection with deep nearest neighbors").
* ``knn``: the same on the pooled backbone features, centred on the training mean.
* ``energy``: ``-logsumexp(logits)`` of the head (Liu et al. 2020), computed from the features with the
  head's stored weights.
* ``mahalanobis``: smallest Mahalanobis distance to a class mean, one shared covariance (Ledoit-Wolf shrunk).
* ``class_mean``: cosine distance to the nearest class mean.
* ``msp``: 1 - the largest temperature-calibrated probability (needs no features).

The threshold is the ``keep`` quantile (default 0.95) of the scores of known validation images (the
ceil(keep * n)-th smallest) raised above it and any score tied with it (:func:`lifted`), so they stay known on a
runtime that rounds differently, chosen on at least :data:`MIN_VALIDATION` of them: about ``keep`` of images like
the training classes are answered normally, the rest and anything scoring higher are "unknown".
benchmarks/bench_unknown.py compares the methods (and energy, which needs logits the saved model does not output)
on flower_photos with each class held out in turn.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from floranet.config import UNKNOWN_METHODS, check_choice, is_finite_number
from floranet.errors import ModelError
from floranet.inference.temperature import apply_temperature
from floranet.rundir import RunDir

# k of the k-th nearest neighbour: 1 separated held-out flower classes best (benchmarks/bench_unknown.py).
DEFAULT_K = 1
# Fewer validation images give a threshold that means nothing (with one, combined's z-scoring divides by a zero
# spread: scores of +-3e4 and a third of known images "unknown"); the answer is then not fitted, and said.
MIN_VALIDATION = 5
# Why no answer is fitted on a run without validation images (its threshold is chosen on them).
NO_VALIDATION = "The unknown threshold is chosen on validation images, and this run has none."
# Methods that read the head's weights (its penultimate activations or logits).
HEAD_METHODS = frozenset({"combined", "knn_head", "energy"})
# ``combined``'s parts, in the order of :func:`components` (statistics from before class_mean joined: the first 3).
COMBINED_PARTS = ("knn_head", "knn", "energy", "class_mean")
# Training images kept as kNN references at most (a seeded sample beyond): bounds ood.npz and predict time.
MAX_REFERENCES = 20_000
# How far two runtimes' scores of one image may differ, relative to max(1, |threshold|): the compiled model's
# check (floranet.inference.compiled) allows no more. The threshold sits this far above the validation score it
# keeps (see lifted), so a known image whose score ties it (all of them where the scores have no spread) stays
# known on a runtime that rounds differently.
SCORE_REL_TOLERANCE = 1e-3
# Least deviation ``combined`` divides a part by: this share of the part's mean magnitude, and at least
# _Z_STD_FLOOR (in the parts' units: cosine distances, logits). A part constant on the validation images (all of them
# copies of training images) was divided by 1e-6, which made float rounding of 1e-7 a tenth of a score.
_Z_STD_REL_FLOOR = 1e-3
_Z_STD_FLOOR = 1e-4
_BLOCK = 1024


def normalize(x: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, dtype)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _cosine_distance(x: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """``1 - cos`` of each row of ``x`` and its row of ``neighbours``, in float64: near-duplicates sit at distances
    of 1e-5 and below, where float32's rounding of the cosine (6e-8) is a thousandth of the score's own spread,
    and two runtimes' features that agree to 1e-7 scored differently."""
    return np.asarray(1.0 - np.einsum("ij,ij->i", normalize(x, np.float64), neighbours.astype(np.float64)), np.float32)


def head_stats(weights: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """The head's Dense weights (``[hidden kernel, hidden bias,] output kernel, output bias``) as stats arrays:
    its penultimate activations and logits are then computed from pooled features (dropout is off at inference)."""
    w = [np.asarray(a, np.float32) for a in weights]
    out = {"output_kernel": w[-2], "output_bias": w[-1]}
    if len(w) == 4:
        out.update(hidden_kernel=w[0], hidden_bias=w[1])
    return out


def penultimate(stats: dict[str, np.ndarray], z: np.ndarray) -> np.ndarray:
    """The head's last hidden activations (relu), or the features for a linear head."""
    if "hidden_kernel" not in stats:
        return z
    return np.maximum(z @ stats["hidden_kernel"] + stats["hidden_bias"], 0.0)


def logits(stats: dict[str, np.ndarray], z: np.ndarray) -> np.ndarray:
    """The head's pre-softmax outputs (the saved model outputs only their softmax)."""
    return np.asarray(penultimate(stats, z) @ stats["output_kernel"] + stats["output_bias"], np.float64)


def _references(x: np.ndarray, seed: int) -> np.ndarray:
    ref = normalize(x)
    if len(ref) > MAX_REFERENCES:
        ref = ref[np.sort(np.random.default_rng(seed).choice(len(ref), MAX_REFERENCES, replace=False))]
    # Stored in float16 (half the file); rounded here already, so the threshold is fitted on the very
    # references predictions use.
    return ref.astype(np.float16).astype(np.float32)


def fit_stats(
    method: str,
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    head: Sequence[np.ndarray] | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """The arrays ``method`` scores with, from training features and labels (``head``: the head's Dense
    weights, for ``combined``, ``knn_head`` and ``energy``)."""
    check_choice("unknown_method", method, UNKNOWN_METHODS)
    features = np.asarray(features, np.float32)
    labels = np.asarray(labels)
    if method in HEAD_METHODS and head is None:
        raise ModelError(f"unknown_method={method!r} needs the head's weights")
    hs = head_stats(head) if head is not None and method in HEAD_METHODS else {}
    if method in ("msp", "energy"):
        return hs
    if method == "knn_head":
        return {**hs, "references": _references(penultimate(hs, features), seed)}
    mean = features.mean(axis=0)
    if method == "knn":
        return {"mean": mean, "references_backbone": _references(features - mean, seed)}
    present = [c for c in range(num_classes) if np.any(labels == c)]
    means = np.stack([features[labels == c].mean(axis=0) for c in present])
    if method == "class_mean":
        return {"means": normalize(means)}
    if method == "combined":
        return {
            **hs,
            "mean": mean,
            "references_backbone": _references(features - mean, seed),
            "references": _references(penultimate(hs, features), seed),
            "means": normalize(means),
        }
    from sklearn.covariance import LedoitWolf

    centred = features - means[np.searchsorted(present, labels)]
    precision = LedoitWolf(assume_centered=True).fit(centred).get_precision()
    return {"means": means, "precision": precision.astype(np.float32)}


def score(
    method: str,
    stats: dict[str, np.ndarray],
    features: np.ndarray | None,
    probs: np.ndarray,
    *,
    temperature: float = 1.0,
    k: int = DEFAULT_K,
) -> np.ndarray:
    """The out-of-distribution score of each row (higher: less like the training classes)."""
    if method == "msp":
        return (1.0 - apply_temperature(probs, temperature).max(axis=1)).astype(np.float32)
    if features is None:
        raise ModelError(f"unknown_method={method!r} needs the backbone features of each image")
    from threadpoolctl import threadpool_limits  # scikit-learn's own dependency

    z = np.asarray(features, np.float32)
    out = np.empty(len(z), np.float32)
    # One BLAS thread: these products are small, and BLAS threads left spinning after them take the cores from
    # the model's next call (warm ResNet50 predict with the unknown answer: 49 ms with them, 29 ms without).
    try:
        with threadpool_limits(1, user_api="blas"):
            for s in range(0, len(z), _BLOCK):
                block = z[s : s + _BLOCK]
                if method == "combined":  # the mean of the z-scored components (statistics from validation)
                    out[s : s + _BLOCK] = np.mean((components(stats, block, k) - stats["z_mean"]) / stats["z_std"], 1)
                else:
                    out[s : s + _BLOCK] = _score_block(method, stats, block, k)
    except ValueError as e:  # shapes that do not meet: another model's statistics (it was a numpy traceback)
        why = f"{RunDir.OOD_STATS} (the unknown answer) does not fit this model's {z.shape[1]} features ({e})"
        raise ModelError(f"{why}: was model.keras replaced after training? Use --unknown off, or train again") from None
    return out


def components(stats: dict[str, np.ndarray], z: np.ndarray, k: int) -> np.ndarray:
    """``combined``'s parts, ``[n, 4]``: kNN distance in the head's penultimate space, kNN distance of the
    centred backbone features, energy, cosine distance to the nearest class mean (``[n, 3]``, without the last,
    for statistics fitted before it joined: they have no ``means``)."""
    parts = [
        _knn_distance(penultimate(stats, z), stats["references"], k),
        _knn_distance(z - stats["mean"], stats["references_backbone"], k),
        -np.logaddexp.reduce(logits(stats, z), axis=1),
    ]
    if "means" in stats:
        parts.append(_score_block("class_mean", stats, z, k))
    return np.stack(parts, axis=1)


def threshold_for(scores: np.ndarray, keep: float) -> float:
    """The score that keeps ``keep`` of ``scores`` at or below it: the ceil(keep * n)-th smallest (numpy's
    ``inverted_cdf``; "higher" kept one image more, all of them below 21)."""
    return float(np.quantile(np.asarray(scores, np.float64), keep, method="inverted_cdf"))


def score_tolerance(threshold: float) -> float:
    """The largest difference of two runtimes' scores the compiled model's check allows near ``threshold``."""
    return SCORE_REL_TOLERANCE * max(1.0, abs(float(threshold)))


def lifted(threshold: float, scores: np.ndarray) -> float:
    """``threshold`` (a validation score) raised by :func:`score_tolerance`, or by half the gap to the next higher
    validation score where that is closer: the images it keeps, and every one tied with them (all of them where the
    scores have no spread), stay known on a runtime whose scores differ within the compiled model's check, and no
    validation image it left out is kept."""
    above = np.asarray(scores, np.float64)
    above = above[above > threshold]
    gap = float(above.min() - threshold) / 2 if len(above) else np.inf
    return float(threshold + min(score_tolerance(threshold), gap))


def z_scoring(stats: dict[str, np.ndarray], val_features: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """``combined``'s ``z_mean`` and ``z_std``: each component's mean and deviation on the known validation images
    (the deviation floored, :data:`_Z_STD_REL_FLOOR` of the part's magnitude and at least :data:`_Z_STD_FLOOR`, so
    a part that is (nearly) constant there cannot blow float rounding up into the score)."""
    parts = components(stats, val_features, k)
    mean = parts.mean(axis=0)
    floor = np.maximum(_Z_STD_REL_FLOOR * np.abs(mean), _Z_STD_FLOOR)
    return {"z_mean": mean, "z_std": np.maximum(parts.std(axis=0), floor)}


def _knn_distance(x: np.ndarray, references: np.ndarray, k: int) -> np.ndarray:
    """Cosine distance of each row to its k-th nearest reference (references normalised): found in float32, the
    one distance then computed in float64."""
    sims = normalize(x) @ references.T
    kk = min(k, references.shape[0])
    nearest = np.argpartition(-sims, kk - 1, axis=1)[:, kk - 1]
    return _cosine_distance(x, references[nearest])


def _score_block(method: str, stats: dict[str, np.ndarray], z: np.ndarray, k: int) -> np.ndarray:
    if method == "knn":
        return _knn_distance(z - stats["mean"], stats["references_backbone"], k)
    if method == "knn_head":
        return _knn_distance(penultimate(stats, z), stats["references"], k)
    if method == "energy":
        return -np.logaddexp.reduce(logits(stats, z), axis=1)
    if method == "class_mean":
        means = stats["means"]
        return _cosine_distance(z, means[(normalize(z) @ means.T).argmax(axis=1)])
    means, precision = stats["means"], stats["precision"]
    zp = z @ precision
    quad = np.sum(zp * z, axis=1, keepdims=True) - 2 * zp @ means.T + np.sum((means @ precision) * means, axis=1)
    return np.asarray(quad.min(axis=1), np.float32)


# The kNN references, stored in float16 exactly (_references rounded them): half the file.
_HALF = ("references", "references_backbone")


@dataclass(frozen=True)
class UnknownDetector:
    """A fitted "unknown" answer.

    Attributes:
        method: One of :data:`floranet.config.UNKNOWN_METHODS`.
        threshold: Scores above it are "unknown".
        keep: The share of known validation images the threshold was chosen to keep.
        stats: The arrays the score needs (``ood.npz``).
        temperature: The run's calibration temperature (``msp``).
        k: The neighbour ``knn`` measures the distance to.
        info: What ``ood.json`` records besides (images it was fitted on, kept share measured, ...).
    """

    method: str
    threshold: float
    keep: float
    stats: dict[str, np.ndarray] = field(repr=False)
    temperature: float = 1.0
    k: int = DEFAULT_K
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def needs_features(self) -> bool:
        return self.method != "msp"

    def score(self, features: np.ndarray | None, probs: np.ndarray) -> np.ndarray:
        """Scores of a batch: pooled backbone features (None for ``msp``) and raw probabilities."""
        return score(self.method, self.stats, features, probs, temperature=self.temperature, k=self.k)

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "threshold": float(self.threshold),
            "keep": self.keep,
            "temperature": self.temperature,
            "k": self.k,
            "statistics": RunDir.OOD_STATS if self.stats else None,
            **({"parts": list(COMBINED_PARTS[: len(self.stats["z_mean"])])} if "z_mean" in self.stats else {}),
            "rule": "unknown when score > threshold; higher scores are less like the training classes",
            **self.info,
        }

    def save(self, folder: str | os.PathLike[str]) -> None:
        """Writes ``ood.json`` and ``ood.npz`` into a run (or export) folder."""
        run = RunDir(folder)
        if self.stats:  # kNN references in float16 (exactly: fit_stats rounded them)
            run.write_npz(
                RunDir.OOD_STATS,
                {k: v.astype(np.float16) if k in _HALF else v for k, v in self.stats.items()},
            )
        run.write_json(RunDir.OOD, self.to_json())

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> UnknownDetector | None:
        """The detector saved in ``folder``, or None when it has none (a run from before, or a failed fit).

        Raises:
            ModelError: ``ood.json`` names a method this floranet does not know, or its statistics are missing.
        """
        run = RunDir(folder)
        meta = run.read_json(RunDir.OOD)
        if not meta:
            return None
        where = run / RunDir.OOD
        if not isinstance(meta, dict):
            raise ModelError(f"{where} is damaged: it must hold a JSON object. Received: {str(meta)[:60]}")
        if meta.get("method") not in UNKNOWN_METHODS:
            raise ModelError(f"{where}: unknown method. Received: method={meta.get('method')!r}")
        stats = run.read_npz(RunDir.OOD_STATS) if meta.get("statistics") else {}  # ModelError when damaged
        stats = {k: v.astype(np.float32) for k, v in stats.items()}  # once, not per call
        known = {"method", "threshold", "keep", "temperature", "k", "statistics", "rule", "parts"}
        return cls(
            meta["method"],
            _number(where, meta, "threshold", lambda v: True, "a finite number"),
            _number(where, meta, "keep", lambda v: 0 < v < 1, "a number in (0, 1)"),
            stats,
            _number(where, meta, "temperature", lambda v: v > 0, "a number > 0", default=1.0),
            int(_number(where, meta, "k", lambda v: v >= 1 and v == int(v), "an int >= 1", default=DEFAULT_K)),
            {k: v for k, v in meta.items() if k not in known},
        )


def _number(
    where: Path, meta: dict[str, Any], key: str, ok: Callable[[float], bool], what: str, default: float | None = None
) -> float:
    """``meta[key]`` as a finite float that passes ``ok``, else a ModelError: a damaged ``ood.json`` was a
    traceback, or (a NaN threshold) silently answered every image as known."""
    value = meta.get(key, default)
    if not is_finite_number(value) or not ok(value):
        raise ModelError(f"{where} is damaged: {key} must be {what}. Received: {key}={str(value)[:40]}")
    return float(value)


def needs_features(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder``'s unknown answer reads the pooled features (``ood.json`` alone; False: it has none)."""
    meta = RunDir(folder).read_json(RunDir.OOD)
    return isinstance(meta, dict) and meta.get("method") in UNKNOWN_METHODS and meta.get("method") != "msp"


def fit(
    method: str,
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray | None,
    val_probs: np.ndarray,
    *,
    num_classes: int,
    keep: float = 0.95,
    temperature: float = 1.0,
    k: int = DEFAULT_K,
    head: Sequence[np.ndarray] | None = None,
) -> UnknownDetector:
    """Statistics from the training images, threshold (and ``combined``'s z-scoring) from the known
    validation images.

    Raises:
        ModelError: No validation image to choose the threshold on.
    """
    if not len(val_probs):
        raise ModelError(NO_VALIDATION)
    if len(val_probs) < MIN_VALIDATION:
        raise ModelError(
            f"The unknown threshold is chosen on validation images, and this run has {len(val_probs)}, fewer than "
            f"the {MIN_VALIDATION} it needs."
        )
    stats = fit_stats(method, train_features, train_labels, num_classes, head=head)
    if method == "combined":
        stats.update(z_scoring(stats, np.asarray(val_features, np.float32), k))
    val_scores = score(method, stats, val_features, val_probs, temperature=temperature, k=k)
    threshold = lifted(threshold_for(val_scores, keep), val_scores)
    info = {
        "fitted_on": {"train_images": len(train_labels), "validation_images": len(val_probs)},
        "validation_kept": float(np.mean(val_scores <= threshold)),
    }
    return UnknownDetector(method, threshold, keep, stats, temperature, k, info)
