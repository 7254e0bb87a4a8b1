"""Calibration: expected calibration error, reliability bins, and the temperature that minimises NLL."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

from floranet.inference.temperature import log_probabilities

# The temperatures searched, on a log scale: 0.01 to 100 (a bound at 20 stopped short of a tiny run's 33.6).
LOG_T_BOUNDS = (np.log(0.01), np.log(100.0))
# The mean NLL a temperature must gain over T = 1 to be kept: on a flat likelihood (every answer as sure as the
# others, e.g. all uniform) the optimiser's end point, 99.9995, tied with T = 1 and was recorded as fitted.
MIN_NLL_GAIN = 1e-6
# How near a bound of LOG_T_BOUNDS (in log T) the search's end counts as stopped there: it ends within 1e-5 of it.
BOUND_TOLERANCE = 1e-4
# What the report and the model card say where calibration.json records no fitted temperature.
NOT_FITTED = (
    "no temperature could be fitted: every validation answer is right (the NLL falls as T does, all the way to 0), "
    "or none does better than T = 1 (T = 1 is kept)"
)
# ... for a calibration.json from before "at_bound", when every answer wrong was fitted none either.
NOT_FITTED_BEFORE = (
    "no temperature was fitted: every validation answer is right, or every one wrong (`floranet evaluate` now fits "
    "one there too), or none does better than T = 1 (T = 1 is kept)"
)
# ... and where the search stopped at its upper bound (calibration.json's "at_bound": "upper"), e.g. a model that
# answers one class for every image: the NLL falls all the way toward that of answering every class alike (T -> inf).
AT_UPPER_BOUND = (
    "no temperature was fitted: the search stopped at its upper bound, T = 100, the validation NLL still falling "
    "toward that of answering every class alike, so no finite temperature fits (T = 1 is kept)"
)
# ... and beside a temperature fitted at the search's lower bound ("at_bound": "lower"), an underconfident model.
AT_LOWER_BOUND = (
    "The temperature is the search's lower bound, 0.01: a lower one would fit the validation answers better."
)


@dataclass(frozen=True)
class TemperatureFit:
    """What the temperature search found.

    Attributes:
        temperature: The temperature to use: 1.0 where none is fitted.
        fitted: Whether ``temperature`` was fitted (False: T = 1 is kept).
        at_bound: ``"lower"`` or ``"upper"`` where the search stopped at that bound of :data:`LOG_T_BOUNDS`, the NLL
            still falling past it; None where it stopped inside them, or did not search. At the upper bound no
            temperature is kept (``fitted`` False): the best is T -> inf, every answer alike, which helps no one.
    """

    temperature: float = 1.0
    fitted: bool = False
    at_bound: str | None = None


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature of :func:`search_temperature`: 1.0 where none is fitted."""
    return search_temperature(probs, labels).temperature


def search_temperature(probs: np.ndarray, labels: np.ndarray) -> TemperatureFit:
    """The temperature minimising validation negative log-likelihood (Guo et al. 2017), within 0.01 to 100.

    None is fitted (T = 1 kept) where the images cannot tell it (:func:`temperature_fittable`), where no temperature
    lowers the NLL by more than :data:`MIN_NLL_GAIN`, or where the search stops at its upper bound (the NLL still
    falling at T = 100: see :class:`TemperatureFit`). One at the lower bound is kept, and said (``at_bound``).
    """
    labels = np.asarray(labels, int)
    if not temperature_fittable(probs, labels):
        return TemperatureFit()
    nll = _nll(np.asarray(probs), labels)
    res = minimize_scalar(lambda u: nll(np.exp(u)), bounds=LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-5})
    t = float(np.exp(res.x))
    if not nll(t) < nll(1.0) - MIN_NLL_GAIN:
        return TemperatureFit()
    if res.x > LOG_T_BOUNDS[1] - BOUND_TOLERANCE:
        return TemperatureFit(at_bound="upper")
    return TemperatureFit(t, True, "lower" if res.x < LOG_T_BOUNDS[0] + BOUND_TOLERANCE else None)


def not_fitted_words(calibration: Mapping[str, Any]) -> str:
    """Why ``calibration.json`` (read as ``calibration``) records no fitted temperature, for the report and card."""
    if "at_bound" not in calibration:
        return NOT_FITTED_BEFORE
    return AT_UPPER_BOUND if calibration.get("at_bound") == "upper" else NOT_FITTED


def bound_words(calibration: Mapping[str, Any]) -> str:
    """A sentence (with a leading space) for a fitted temperature at the search's lower bound; else ``""``."""
    return f" {AT_LOWER_BOUND}" if calibration.get("at_bound") == "lower" else ""


def _nll(probs: np.ndarray, labels: np.ndarray) -> Callable[[float], float]:
    """The mean negative log-likelihood of ``labels`` after temperature T, as a function of T, from the logs of the
    probabilities (exact: no floor under small ones, see :func:`~floranet.inference.temperature.log_probabilities`).
    """
    logs, rows = log_probabilities(probs), np.arange(len(labels))
    # An exact zero on the true class (a float32 softmax that underflowed) made the NLL infinite at every T: it is
    # taken at the smallest positive number of its type, the most it can have been.
    dtype = probs.dtype if np.issubdtype(probs.dtype, np.floating) else np.float64
    logs[rows, labels] = np.maximum(logs[rows, labels], np.log(float(np.finfo(dtype).smallest_subnormal)))

    def nll(t: float) -> float:
        scaled = logs / t
        return float(np.mean(logsumexp(scaled, axis=1) - scaled[rows, labels]))

    return nll


def temperature_fittable(probs: np.ndarray, labels: np.ndarray) -> bool:
    """Whether the validation answers can tell a temperature: some are wrong. Where every answer is right the NLL
    only falls as the temperature does (each right answer's probability grows as T falls), so the search would end
    at its lower bound (a run of 6 images fitted 0.016, and its calibrated answers said 100% for any photo). Every
    answer wrong is searched too: with the true class a close second, a temperature below 1 lowers the NLL (0.7985
    to 0.7904 at T = 0.758); else the search ends at its upper bound, and none is fitted."""
    labels = np.asarray(labels, int)
    return bool(len(labels)) and not bool((np.asarray(probs).argmax(axis=1) == labels).all())


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
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        mask = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        count = int(mask.sum())
        out.append(
            {
                "low": float(lo),
                "high": float(hi),
                "count": count,
                "confidence": float(conf[mask].mean()) if count else 0.0,
                "accuracy": float(correct[mask].mean()) if count else 0.0,
            }
        )
    return out
