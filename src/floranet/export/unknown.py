"""What an export carries of the run's "unknown" answer: a summary in its metadata, and ``ood.json`` /
``ood.npz`` beside the model file.

:func:`summary` is the ``unknown`` field that :func:`floranet.export.metadata.for_source` writes into every
format's metadata (the one place that writes metadata): the method, threshold and rule, and what the
statistics are, or ``"available": false`` with the reason. An exported model outputs the class probabilities
only, so a score that reads the pooled backbone features cannot be computed from the export alone; the
summary says so (``"from_this_export"``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from floranet.errors import ModelError
from floranet.export.common import log
from floranet.inference.unknown import UnknownDetector
from floranet.rundir import RunDir

FILES = (RunDir.OOD, RunDir.OOD_STATS)


def summary(run: RunDir) -> dict[str, Any]:
    """The run's unknown answer as an export describes it (JSON-ready); a damaged one is left out with a warning
    (it does not block the export of the classifier, as ``predict --unknown off`` gets past it)."""
    try:
        detector = UnknownDetector.load(run.path)
    except ModelError as e:
        log.warning("Exporting without the unknown answer: %s", e)
        return {"available": False, "reason": f"the run's unknown answer cannot be read ({e})"}
    if detector is None:
        return {
            "available": False,
            "reason": f"the run has no unknown answer ({RunDir.OOD}): trained before floranet fitted one, "
            "or fitting it failed",
        }
    return {
        "available": True,
        "method": detector.method,
        "threshold": float(detector.threshold),
        "keep": detector.keep,
        "validation_kept": detector.info.get("validation_kept"),
        "temperature": detector.temperature,
        "k": detector.k,
        "rule": "unknown when score > threshold; higher scores are less like the training classes",
        "statistics": {name: list(a.shape) for name, a in sorted(detector.stats.items())},
        "statistics_file": RunDir.OOD_STATS if detector.stats else None,
        "from_this_export": not detector.needs_features,
        "needs": "the pooled backbone features, which this export does not output (floranet predict/serve on "
        "the run directory answer unknown)"
        if detector.needs_features
        else "the output probabilities only",
    }


def carry_unknown(run: RunDir, folder: Path, facts: dict[str, Any], fmt: str = "") -> str:
    """Copies ``ood.json`` / ``ood.npz`` into the export folder; returns the README's paragraph on them.

    Args:
        run: The run being exported.
        folder: The export folder.
        facts: :func:`summary` of the run.
        fmt: The export's format (a keras export's folder is one floranet predict and serve read).
    """
    if not facts["available"]:
        return f"Unknown answer: none ({facts['reason']}); the export has none either.\n"
    for name in FILES:
        if run.exists(name):
            shutil.copy2(run / name, folder / name)
    head = (
        f"Unknown answer: {RunDir.OOD} (method {facts['method']}, threshold {facts['threshold']:.6g}; unknown "
        f"when score > threshold)"
        + (f" and its statistics {RunDir.OOD_STATS}" if facts["statistics_file"] else "")
        + " are copied here; the model file's metadata holds the same summary (key 'unknown').\n"
    )
    if not facts["from_this_export"] and fmt == "keras":  # floranet reads this folder as it reads the run
        return head + (
            f"  The {facts['method']} score needs the pooled backbone features, which this model's outputs do not\n"
            "  include: floranet predict/serve on this folder answer 'unknown' (they read the model's layers and\n"
            "  these files); Keras alone gives the probabilities without it.\n"
        )
    if not facts["from_this_export"]:
        return head + (
            f"  NOT AVAILABLE FROM THIS EXPORT ALONE: the {facts['method']} score needs the pooled backbone features,\n"
            "  and this model outputs the class probabilities only. floranet predict/serve on the run directory\n"
            "  answer 'unknown'; with the export, use the probabilities without it.\n"
        )
    return (
        head + f"  msp score = 1 - max(softmax(log(p) / {facts['temperature']:.6g})) of the output probabilities p.\n"
    )
