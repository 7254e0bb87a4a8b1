"""Whole jobs built from the parts: train → evaluate → report."""

from __future__ import annotations

from collections.abc import Callable

from floranet.config import TrainConfig
from floranet.evaluate import Evaluation
from floranet.report import build_report
from floranet.training import TrainResult, train


def train_and_report(config: TrainConfig, *, resume: bool = False, progress: bool = True,
                     say: Callable[[str], None] = print) -> TrainResult:
    """Trains, then evaluates on the validation split (from the predictions training already made),
    fits the temperature, and writes ``metrics.json``, the plots and ``report.html``."""
    result = train(config, resume=resume, progress=progress, say=say)
    if result.validation is not None and len(result.validation[0]):
        paths, labels, probs = result.validation
        ev = Evaluation(tuple(result.class_names), tuple(paths), labels, probs,
                        data_dir=str(result.data_dir)).with_temperature()
        report = build_report(result.run_dir, evaluation=ev, model=result.model)
        import json

        result.metrics = json.loads((result.run_dir / "metrics.json").read_text(encoding="utf-8"))
        say(f"Report: {report}")
    return result
