"""What the model card is written from: the run's files, read once (:class:`CardFacts`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from floranet.rundir import RunDir


class CardFacts:
    """The run's files, read once."""

    def __init__(self, run: RunDir) -> None:
        from floranet import __version__

        self.run = run
        self.version = __version__
        self.name = run.path.resolve().name
        self.config = run.config() if run.exists(RunDir.CONFIG) else None
        self.metrics: dict[str, Any] = run.metrics()
        self.external: dict[str, Any] = run.read_json(RunDir.METRICS_EXTERNAL, {})
        self.calibration: dict[str, Any] = run.read_json(RunDir.CALIBRATION, {})
        self.doctor: dict[str, Any] = run.doctor()
        self.class_names: list[str] = run.class_names() if run.exists(RunDir.CLASS_NAMES) else []
        self.counts = run.split(self.class_names).counts() if run.exists(RunDir.SPLIT) else {}
        self.audit = run.read_json(RunDir.AUDIT)
        self.ood = run.read_json(RunDir.OOD)
        self.stages: dict[str, Any] = (run.read_json(RunDir.STATE) or {}).get("stages", {})

    @classmethod
    def read(cls, run: RunDir) -> CardFacts:
        return cls(run)

    @property
    def dataset(self) -> str:
        data_dir = self.config.data_dir if self.config else ""
        return Path(data_dir).name or "unknown"

    @property
    def backbone(self) -> str:
        return self.config.backbone if self.config else "unknown"

    @property
    def weights(self) -> str:
        weights = self.config.weights if self.config else None
        if weights is None:
            return "none (random initialisation)"
        return weights if weights == "imagenet" else f"file {Path(weights).name}"
