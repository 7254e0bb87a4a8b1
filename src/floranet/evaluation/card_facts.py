"""What the model card is written from: the run's files, read once (:class:`CardFacts`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from floranet.errors import ModelError
from floranet.rundir import RunDir


class CardFacts:
    """The run's files, read once.

    ``metrics.json``, ``config.yaml``, ``class_names.json`` and ``split.csv`` are the card; a damaged one fails it.
    The others are optional parts: one that cannot be read is left out, its reason in :attr:`unreadable`, so that
    ``floranet evaluate``, which writes its results before the card, does not fail on a side file it did not write
    (it exited 2 with the card stale and no word that the evaluation was saved).

    Attributes:
        unreadable: Optional file name -> (why, for the card; the full error, for a warning).
    """

    def __init__(self, run: RunDir) -> None:
        from floranet import __version__

        self.run = run
        self.version = __version__
        self.name = run.path.resolve().name
        self.config = run.config() if run.exists(RunDir.CONFIG) else None
        self.metrics: dict[str, Any] = run.metrics()
        self.unreadable: dict[str, tuple[str, str]] = {}
        self.external: dict[str, Any] = self._optional(RunDir.METRICS_EXTERNAL) or {}
        self.calibration: dict[str, Any] = self._optional(RunDir.CALIBRATION) or {}
        self.doctor: dict[str, Any] = self._optional(RunDir.DOCTOR) or {}
        self.class_names: list[str] = run.class_names() if run.exists(RunDir.CLASS_NAMES) else []
        self.split = run.split(self.class_names) if run.exists(RunDir.SPLIT) else None
        self.counts = self.split.counts() if self.split else {}
        self.audit = self._optional(RunDir.AUDIT)
        self.ood = self._optional(RunDir.OOD)
        self.stages: dict[str, Any] = (self._optional(RunDir.STATE) or {}).get("stages", {})

    def _optional(self, name: str) -> dict[str, Any] | None:
        """An optional file as a JSON object; None when it is absent, or damaged (then noted in ``unreadable``)."""
        try:
            value = self.run.read_json(name)
        except ModelError as e:  # names the file, the JSON error, and to rerun the step that wrote it
            self.unreadable[name] = ("it is damaged (not valid JSON)", str(e))
            return None
        except OSError as e:  # e.g. a folder of that name
            self.unreadable[name] = ("it cannot be read", f"{self.run / name} cannot be read ({e.strerror or e})")
            return None
        if value is not None and not isinstance(value, dict):
            full = f"{self.run / name} is damaged (not a JSON object); rerun the step that wrote it"
            self.unreadable[name] = ("it is damaged (not a JSON object)", full)
            return None
        return value

    def left_out(self, *names: str) -> list[str]:
        """One line of the card per file of ``names`` left out: which, and why."""
        return [f"*`{n}` is left out of this card: {self.unreadable[n][0]}.*" for n in names if n in self.unreadable]

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

    @property
    def class_weights(self) -> dict[str, float]:
        """The balanced weights ``--class-weights auto`` trained with: ``split.csv``'s, as training computes them
        (:meth:`~floranet.data.split.Split.balanced_weights`)."""
        return self.split.balanced_weights() if self.split else {}
