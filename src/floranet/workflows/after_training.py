"""What ``train`` adds once the model and its evaluation are written: the "unknown" answer and the audit.

* The "unknown" answer (``ood.json`` + ``ood.npz``) is always fitted: it needs the final model's
  embeddings, which training hands over (the evaluation's pass for the validation images; stage 1's cache, or
  its prefix outputs through the fine-tuned top, for the training images), else one pass over the images.
  The compiled model's check then covers its score (:func:`floranet.inference.compiled.recheck`).
* The label audit runs when it is cheap: stage 1 trained on cached features (so every image's embedding is
  already on disk and the audit is k small head trainings, seconds) and ``audit`` is on (``--no-audit``).

Neither can fail a finished training: a problem is reported and the run stays as it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from floranet.config import TrainConfig
from floranet.errors import FloranetError
from floranet.evaluation.audit_report import summary
from floranet.evaluation.ood import Embeddings, fit_unknown
from floranet.inference import compiled
from floranet.training import Predictions, TrainResult


def _embeddings(outputs: Predictions | None) -> Embeddings | None:
    """Training's outputs on a subset as the unknown answer's embeddings (None: it has no features of them)."""
    if outputs is None or outputs.features is None or outputs.features.shape[1] == 0:
        return None
    return Embeddings(outputs.paths, outputs.labels, outputs.features, outputs.probs)


def audit_is_cheap(config: TrainConfig) -> bool:
    """Stage 1 ran on cached features: every image's embedding is on disk."""
    return bool(config.epochs) and config.augment != "all"


def audit_and_unknown(result: TrainResult, config: TrainConfig, say: Callable[[str], None] = print) -> None:
    """Fits the unknown answer, then audits the labels when cheap; records the seconds in ``result.timings``."""
    from floranet.workflows.audit import audit

    t = time.perf_counter()
    try:
        detector = fit_unknown(
            result.run,
            result.model,
            config,
            train=_embeddings(result.training),
            validation=_embeddings(result.validation),
            tf_decodable=result.tf_decodable,
            say=say,
        )
        result.compiled = compiled.recheck(result.run, detector) or result.compiled
    except (FloranetError, ValueError) as e:
        say(f"Unknown answer not fitted: {e}")
    result.timings["unknown"] = time.perf_counter() - t
    if not config.audit:
        return
    if not audit_is_cheap(config):
        say("Audit skipped: stage 1 did not run on cached features (run `floranet audit RUN_DIR` for it).")
        return
    t = time.perf_counter()
    try:
        outcome = audit(result.run.path, say=say, rebuild_report=False, held=True)  # train holds the run lock
    except (FloranetError, ValueError) as e:
        say(f"Audit not run: {e}")
        return
    result.timings["audit"] = time.perf_counter() - t
    for line in summary(outcome.result, 5).splitlines():  # one line at a time: say() escapes newlines
        say(line)
