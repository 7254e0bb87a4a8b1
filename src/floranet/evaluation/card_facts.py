"""What the model card is written from: the run's files, read once (:class:`CardFacts`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from floranet.errors import ConfigError, ModelError
from floranet.rundir import RunDir

_NUMBER = (int, float)
_NONE = type(None)
# What the card and the report read of each optional file, as floranet writes it: field -> type; ``{"*": T}`` an
# object whose every value is a T; ``[T]`` a list of T. A file that differs (a hand edit) is left out by name, as an
# unparsable one is, instead of a traceback from inside a page (report.html failed on an ood.json whose threshold
# was text, the card on a doctor.json whose summary was a number).
SHAPES: dict[str, dict[str, Any]] = {
    RunDir.DOCTOR: {
        "classes": {"*": int},
        "summary": dict,
        "files": [{"path": str, "status": str, "reason": str}],
    },
    RunDir.CALIBRATION: {"fitted": bool, "at_bound": (str, _NONE)},  # at_bound: absent before floranet wrote it
    RunDir.STATE: {"stages": {"*": dict}},
    RunDir.METRICS_EXTERNAL: {"accuracy": _NUMBER, "num_examples": int, "source": str},
    RunDir.OOD: {
        "method": str,
        "threshold": _NUMBER,
        "keep": _NUMBER,
        "k": (int, _NONE),
        "parts": [str],
        "fitted_on": dict,
        "validation_kept": _NUMBER,
        "most_unknown_validation": [{"file": str, "ood_score": _NUMBER, "unknown": bool}],
    },
    RunDir.AUDIT: {
        "images": int,
        "folds": (int, _NONE),
        "counts": {"*": int},
        "duplicate_similarity": _NUMBER,
        "duplicate_z": _NUMBER,
        "outlier_z": _NUMBER,
        "label_issues_skipped": (str, _NONE),
        "label_check_left_out": ([str], _NONE),
        "findings": [{"file": str, "kind": str, "score": _NUMBER, "given_label": str, "suggested_label": str}],
    },
}
_WORDS: dict[Any, str] = {
    dict: "an object",
    list: "a list",
    str: "text",
    int: "an integer",
    bool: "true or false",
    _NUMBER: "a number",
    (int, _NONE): "an integer or null",
    (str, _NONE): "text or null",
}
# Fields the views cannot do without.
REQUIRED: dict[str, tuple[str, ...]] = {RunDir.OOD: ("method", "threshold", "keep")}


def machine_text(machine: dict[str, Any], *, model: bool = False) -> str:
    """A machine in a few words, "AMD EPYC, 2 cores, native bf16" (``model``: with its family and model numbers)."""
    if "cpu" not in machine:
        return "a machine not recorded"
    cpu = str(machine["cpu"]) + (f" ({machine['cpu model']})" if model and machine.get("cpu model") else "")
    bf16 = ", native bf16" if str(machine.get("native bf16", "")).startswith("yes") else ""
    return f"{cpu}, {machine.get('cores', '?')} cores{bf16}"


def machine_shares(machines: Any) -> dict[str, float]:
    """Training seconds per machine (:func:`machine_text` with its model numbers) of metrics.json's ``machines``
    (one entry per process that trained the run); {} for a run from before they were recorded."""
    shares: dict[str, float] = {}
    for m in machines if isinstance(machines, list) else []:
        if isinstance(m, dict) and isinstance(m.get("seconds"), _NUMBER):
            name = machine_text(m, model=True)
            shares[name] = shares.get(name, 0.0) + m["seconds"]
    return shares


def training_time(seconds: Any, machine: Any, machines: Any = None) -> str:
    """Training seconds on the machine that took them (a time holds for that CPU kind only); for a run resumed on
    other machines, each one's share (:func:`machine_shares`)."""
    if not isinstance(seconds, _NUMBER):
        return "not recorded"
    if not isinstance(machine, dict):
        return f"{seconds:.0f} s"
    shares = machine_shares(machines)
    if len(shares) < 2:
        return f"{seconds:.0f} s on {machine_text(machine)}"
    each = "; ".join(f"{share:.0f} s on {name}" for name, share in shares.items())
    return f"{seconds:.0f} s in all, on {len(shares)} machines: {each}"


def mismatch(value: Any, shape: Any, where: str = "") -> str | None:
    """Where ``value`` differs from ``shape`` (see :data:`SHAPES`), as ``"findings[3].score is str"``; None if not."""
    if isinstance(shape, tuple) and any(isinstance(s, (list, dict)) for s in shape):  # e.g. a list of str, or null
        fits = [mismatch(value, s, where) for s in shape]
        return None if None in fits else fits[0]
    if isinstance(shape, list):
        if not isinstance(value, list):
            return f"{where or 'it'} is {type(value).__name__}, not {_WORDS[list]}"
        return next((m for i, v in enumerate(value) if (m := mismatch(v, shape[0], f"{where}[{i}]"))), None)
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            return f"{where or 'it'} is {type(value).__name__}, not {_WORDS[dict]}"
        fields = [(k, value[k], s) for k, s in shape.items() if k in value]
        fields += [(k, v, shape["*"]) for k, v in value.items()] if "*" in shape else []
        return next((m for k, v, s in fields if (m := mismatch(v, s, f"{where}.{k}" if where else str(k)))), None)
    if isinstance(value, shape):
        return None
    return f"{where} is {type(value).__name__}, not {_WORDS.get(shape, getattr(shape, '__name__', str(shape)))}"


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
        self.counts = self._used_counts()
        self.audit = self._optional(RunDir.AUDIT)
        self.ood = self._optional(RunDir.OOD)
        self.stages: dict[str, Any] = (self._optional(RunDir.STATE) or {}).get("stages", {})
        self.curation = self._curation()

    def _used_counts(self) -> dict[str, dict[str, int]]:
        """Per class, the training and validation images the run ended with: ``metrics.json``'s record, as a
        resume leaves out files gone since and keeps ``split.csv`` as it was (else ``split.csv``'s counts)."""
        written = self.split.counts() if self.split else {}
        split = self.metrics.get("split")
        used = split.get("classes") if isinstance(split, dict) else None
        if (
            not isinstance(used, dict)
            or mismatch(used, {"*": {"train": int, "validation": int}})
            or set(used) - set(written)
        ):
            return written
        return {name: {s: int(used.get(name, {}).get(s, 0)) for s in ("train", "validation")} for name in written}

    @property
    def split_gap(self) -> list[str]:
        """A line of the card when ``split.csv`` lists files the run left out at a resume (gone by then)."""
        total = sum(n for c in (self.split.counts() if self.split else {}).values() for n in c.values())
        gap = total - sum(n for c in self.counts.values() for n in c.values())
        if gap <= 0:
            return []
        return [
            f"{gap} file{'s' if gap != 1 else ''} listed in `split.csv` {'were' if gap != 1 else 'was'} missing or "
            "unusable when the run was resumed, and left out from then on: the counts above are those of the "
            "images it ended with."
        ]

    def _curation(self) -> tuple[int, int, list[str]] | None:
        """The run's ``--exclude`` / ``--relabel`` as its ``excluded.txt`` and ``relabel.csv`` record them: files
        left out, files relabelled, and the classes the relabels made (None without either; a damaged one is noted
        in ``unreadable``). The labels trained on then differ from the folders'."""
        from floranet.data.curation import read_exclude, read_relabel

        lists: list[Any] = []
        for name, read in ((RunDir.EXCLUDED, read_exclude), (RunDir.RELABELED, read_relabel)):
            try:
                lists.append(read(self.run / name) if self.run.exists(name) else ())
            except ConfigError as e:
                self.unreadable[name] = ("it is damaged", str(e))
                lists.append(())
        gone, moved = lists
        if not gone and not moved:
            return None
        return len(gone), len(moved), sorted(set(dict(moved).values()) - set(self.doctor.get("classes", {})))

    def _optional(self, name: str) -> dict[str, Any] | None:
        """An optional file as a JSON object; None when it is absent, or damaged (then noted in ``unreadable``)."""
        try:
            value = self.run.read_json(name)
        except ModelError as e:  # names the file, the JSON error, and the command that writes it
            self.unreadable[name] = ("it is damaged (not valid JSON)", str(e))
            return None
        except OSError as e:  # e.g. a folder of that name
            self.unreadable[name] = ("it cannot be read", f"{self.run / name} cannot be read ({e.strerror or e})")
            return None
        if value is None:
            return None
        missing = [k for k in REQUIRED.get(name, ()) if isinstance(value, dict) and k not in value]
        wrong = mismatch(value, SHAPES.get(name, dict)) or (f"{missing[0]} is missing" if missing else None)
        if wrong:
            why = f"it is damaged ({wrong})" if isinstance(value, dict) else "it is damaged (not a JSON object)"
            self.unreadable[name] = (why, f"{self.run / name} {why.removeprefix('it ')}; {self.run.written_by(name)}")
            return None
        return value

    def left_out(self, *names: str) -> list[str]:
        """One line of the card per file of ``names`` left out: which, why, and the command that writes it (as the
        warning says it: :meth:`RunDir.written_by`)."""
        return [
            f"*`{n}` is left out of this card: {self.unreadable[n][0]}; {self.run.written_by(n)}.*"
            for n in names
            if n in self.unreadable
        ]

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
