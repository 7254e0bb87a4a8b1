"""What an export says about the run's "unknown" answer, and the statistics it carries."""

from __future__ import annotations

import shutil
from pathlib import Path

from floranet.inference.unknown import UnknownDetector
from floranet.rundir import RunDir

FILES = (RunDir.UNKNOWN, RunDir.UNKNOWN_STATS)


def carry_unknown(run: RunDir, folder: Path) -> str:
    """Copies ``ood.json`` / ``ood.npz`` into the export folder and returns the README's paragraph on them."""
    detector = UnknownDetector.load(run.path)
    if detector is None:
        return "Unknown answer: this run has none (trained before floranet fitted one); the export has none either.\n"
    for name in FILES:
        if run.exists(name):
            shutil.copy2(run / name, folder / name)
    head = (
        f"Unknown answer: {RunDir.UNKNOWN} (method {detector.method}, threshold {detector.threshold:.6g}; unknown "
        f"when score > threshold)"
        + (f" and its statistics {RunDir.UNKNOWN_STATS}" if detector.stats else "")
        + " are copied here.\n"
    )
    if detector.needs_features:
        return head + (
            f"  NOT AVAILABLE FROM THIS EXPORT ALONE: the {detector.method} score needs the pooled backbone features,\n"
            "  and this model outputs the class probabilities only. floranet predict/serve on the run directory\n"
            "  answer 'unknown'; with the export, use the probabilities without it.\n"
        )
    return head + (
        f"  msp score = 1 - max(softmax(log(p) / {detector.temperature:.6g})) of the output probabilities p.\n"
    )
