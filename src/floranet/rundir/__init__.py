"""The run directory: one object that knows every file of a floranet run, reads them and writes them atomically.

A finished run holds::

    config.yaml        the resolved TrainConfig
    split.csv          path,label,split,sha256 (reused by every later step)
    class_names.json   label index → name
    doctor.json        the dataset doctor's report
    model.keras        raw RGB 0..255 in, probabilities out (safe mode, no custom objects)
    history.csv        one row per epoch of both stages
    predictions.csv    the final model's validation predictions (what metrics, plots and report read)
    metrics.json       metrics of those predictions, plus training facts (timings, precision, ...)
    calibration.json   the temperature fitted on the validation split
    metrics_external.json, predictions_external.csv   `evaluate --data OTHER` (plots/*_external.png)
    plots/             samples, history, confusion matrix, reliability, top losses
    report.html        self-contained report
    inference/         model.xml + model.bin (OpenVINO IR of model.keras) and compiled.json (its agreement
                       check): predict, evaluate and serve load it without TensorFlow when it agrees
    README.md          the model card (Hugging Face format)
    logs/              TensorBoard
    state.json, checkpoints/, features/   for --resume and the stage-1 feature cache
    exports.json, exports/                written by ``floranet export``
    audit.json, audit.csv, audit.html     the label audit (``floranet audit``, or the end of ``train``)
    ood.json, ood.npz                     the "unknown" answer: score method, threshold, statistics
    excluded.txt, relabel.csv             ``train --exclude`` / ``--relabel`` as applied to the split
    backup/            --distribute multi-worker: each stage's BackupAndRestore state (removed at the end)
    run.lock           only while a process writes the run (train, evaluate, report, export, audit): its pid

Every other module names these files through :class:`RunDir`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from floranet.config import TrainConfig, as_name, is_finite_number, load_file, resolve
from floranet.errors import ConfigError, ModelError
from floranet.rundir.foreign import export_note
from floranet.rundir.history import parse_history
from floranet.utils import files, locks
from floranet.utils.files import atomic_path, atomic_write_text, check_outside, file_digest, write_json

if TYPE_CHECKING:
    import keras

    from floranet.data.split import Split


class RunDir:
    """A floranet run directory (finished or in progress).

    Args:
        path: The folder.
    """

    CONFIG = "config.yaml"
    SPLIT = "split.csv"
    CLASS_NAMES = "class_names.json"
    DOCTOR = "doctor.json"
    MODEL = "model.keras"
    HISTORY = "history.csv"
    PREDICTIONS = "predictions.csv"
    METRICS = "metrics.json"
    PREDICTIONS_EXTERNAL = "predictions_external.csv"  # `evaluate --data OTHER`
    METRICS_EXTERNAL = "metrics_external.json"
    CALIBRATION = "calibration.json"
    STATE = "state.json"
    REPORT = "report.html"
    EXPORTS = "exports.json"
    MODEL_CARD = "README.md"  # the Hugging Face model card (train writes it, evaluate refreshes it)
    AUDIT = "audit.json"  # the label audit (floranet audit, or the end of train)
    OOD = "ood.json"  # the "unknown" answer: method, threshold, the share of known images it keeps
    PLOTS = "plots"
    LOGS = "logs"
    CHECKPOINTS = "checkpoints"
    FEATURES = "features"
    EXPORTS_DIR = "exports"
    AUDIT_CSV = "audit.csv"
    AUDIT_HTML = "audit.html"
    OOD_STATS = "ood.npz"  # the arrays the unknown score needs (beside ood.json)
    EXCLUDED = "excluded.txt"
    RELABELED = "relabel.csv"
    LOCK = "run.lock"  # present while a process writes the run; holds its pid
    COMPARISON_SPLIT = "split.json"  # `compare --out OUT`: which data folder OUT/split.csv was made from
    BACKUP = "backup"  # multi-worker fault tolerance: backup/<stage>, backup/worker-<i>/<stage>
    COMPILED = "inference"  # the compiled inference model (OpenVINO IR) and its check
    COMPILED_XML = "model.xml"
    COMPILED_INFO = "compiled.json"
    COMPILED_CHECK = "check.npz"  # both models' outputs on the check images (what a later unknown answer is checked on)
    # What `evaluate`, `report` and `export` need besides the model.
    FINISHED = (MODEL, CLASS_NAMES, CONFIG, SPLIT)
    # The command that writes each file: a damaged one's message names it (not "rerun the step that wrote it").
    WRITERS = {"train": (CLASS_NAMES, STATE, HISTORY, OOD, OOD_STATS), "evaluate": (METRICS, CALIBRATION)}
    WRITERS |= {"audit": (AUDIT,), "evaluate --data": (METRICS_EXTERNAL,), "export": (EXPORTS,)}
    WRITERS |= {"compare": (COMPARISON_SPLIT,)}

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, needs: tuple[str, ...] = (MODEL, CLASS_NAMES)) -> RunDir:
        """A finished run, checked for the files a command needs.

        Raises:
            ModelError: The folder does not exist, or it lacks one of ``needs``
                (an unfinished run or a foreign folder).
        """
        run = cls(path)
        if not run.path.is_dir():
            what = (
                "run_dir must be a run directory (made by floranet train), not a file; an exported model is used "
                "with its format's own runtime (see its README.txt)"
                if run.path.exists()
                else "Run directory not found"
            )
            raise ModelError(f"{what}. Received: run_dir={str(path)!r}")
        missing = [name for name in needs if not (run.path / name).exists()]
        if missing:
            why = f"{run.path} is not a finished floranet run: {missing[0]} is missing."
            raise ModelError(export_note(run.path) or why)
        return run

    # -- paths ----------------------------------------------------------------------------------------------------
    @property
    def model_file(self) -> Path:
        return self.path / self.MODEL

    def plot(self, name: str) -> Path:
        """``plots/<name>``."""
        return self.path / self.PLOTS / name

    def exists(self, name: str) -> bool:
        return (self.path / name).exists()

    def is_run(self) -> bool:
        """Whether the folder holds a floranet run or audit (finished or not): a ``config.yaml`` as floranet writes
        it (every key a training setting, and the resolved ``data_dir``, ``out`` and ``preset`` among them) beside
        what a run writes next (``doctor.json``, ``split.csv`` or ``state.json``). Another tool's ``config.yaml``,
        a hand-written settings file kept in a project folder, or a damaged one does not make a folder a run, so
        nothing of the user's in it is taken over (such a folder had its config.yaml and README.md replaced)."""
        if not (self.path / self.CONFIG).is_file() or not any(self.exists(n) for n in _RUN_MARKS):
            return False
        try:
            return {"data_dir", "out", "preset"} <= load_file(self.path / self.CONFIG).keys()
        except ConfigError:
            return False

    def is_training_run(self) -> bool:
        """Whether the folder holds a training run (finished, or one that can resume), not only an audit."""
        return any(self.exists(name) for name in (self.STATE, self.MODEL, self.CHECKPOINTS, self.HISTORY))

    def check_outside(self, data_dir: str | os.PathLike[str], *, arg: str = "out") -> None:
        """Refuses a run (or audit) folder inside the data folder: its plots would become images of a class. Also
        for another folder floranet has written (an MLflow file store), named by ``arg`` in the message.

        Raises:
            ConfigError: The folder is ``data_dir`` or inside it.
        """
        where = f"the data folder {os.fspath(data_dir)!r} (a folder in it would be read as a class)"
        check_outside(self.path, arg=arg, inside=[(where, Path(data_dir))])

    def check_new_output(self) -> None:
        """Refuses to write a new run into a folder that already holds other things.

        Raises:
            ConfigError: The folder exists, is not empty and is not a floranet run.
        """
        if not self.path.exists():
            return
        if not self.path.is_dir():
            raise ConfigError(f"out must be a folder for the run; it is a file. Received: out={str(self.path)!r}")
        others = [p.name for p in self.path.iterdir() if p.name != self.LOCK and not _ours(p)]
        if others and not self.is_run():
            raise ConfigError(
                f"out is a folder that is not empty and not a floranet run (it holds {', '.join(sorted(others)[:3])}"
                f"{', ...' if len(others) > 3 else ''}); choose a new or empty folder, so nothing of yours is "
                f"overwritten. Received: out={str(self.path)!r}"
            )

    @contextlib.contextmanager
    def lock(self, *, hint: str | None = None) -> Iterator[RunDir]:
        """Holds the run's lock while the block writes it; a second writer is refused (``hint``: what to do then).

        Raises:
            RunLockedError: Another process holds it (its pid is in the message and the error).
            OutputError: The folder cannot be created.
        """
        made = locks.missing_folders(self.path)  # folders the lock creates
        fd = locks.acquire(self.path / self.LOCK, what=f"the run directory {self.path}", hint=hint)
        try:
            yield self
        finally:
            locks.release(self.path / self.LOCK, fd)
            locks.remove_empty(made)  # those nothing was written to (a refused --resume) go again

    # -- reading --------------------------------------------------------------------------------------------------
    def read_json(self, name: str, default: Any = None) -> Any:
        """A JSON file of the run, or ``default`` when it is absent."""
        path = self.path / name
        if not path.exists():
            return default
        try:
            return files.read_json(path)
        except ValueError as e:  # JSONDecodeError, or a damaged encoding
            raise ModelError(f"{path} is damaged (not valid JSON: {e}); {self.written_by(name)}") from None

    def written_by(self, name: str) -> str:
        """The end of a damaged file's message: the command that writes ``name`` (:attr:`WRITERS`)."""
        writer = next((w for w, names in self.WRITERS.items() if name in names), None)
        return f"it is written by `floranet {writer}`" if writer else "rerun the step that wrote it"

    def class_names(self) -> list[str]:
        names = self.read_json(self.CLASS_NAMES)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ModelError(f"{self.path / self.CLASS_NAMES} is missing or not a list of class names.")
        return names

    def config(self, **overrides: Any) -> TrainConfig:
        """The run's resolved config (``overrides`` replace saved values, e.g. ``batch_size``)."""
        return resolve(file=self.path / self.CONFIG, **overrides)

    def max_pixels(self) -> int:
        """The largest image (width x height) this run decodes: its ``max_pixels`` setting (the default for a run
        without ``config.yaml``), the same for predict, explain and the report's gallery."""
        return self.config().max_pixels if self.exists(self.CONFIG) else TrainConfig.max_pixels

    @staticmethod
    def best_weights_name(stage: str, epoch: int) -> str:
        """``checkpoints/<stage>-best-epoch<NNN>.weights.h5``: a stage's best weights, named by their (1-based) epoch
        so a kill before ``state.json`` is saved leaves the recorded file as it was."""
        return f"{RunDir.CHECKPOINTS}/{stage}-best-epoch{epoch:03d}.weights.h5"

    @staticmethod
    def best_epoch(name: str | None) -> int | None:
        """The epoch a :meth:`best_weights_name` names (None: no such name)."""
        found = re.fullmatch(rf"{RunDir.CHECKPOINTS}/.+-best-epoch(\d+)\.weights\.h5", name or "")
        return int(found.group(1)) if found else None

    def saved_settings(self) -> dict[str, Any]:
        """``config.yaml`` as saved, without resolving presets (for --resume comparisons)."""
        return load_file(self.path / self.CONFIG)

    def split(self, class_names: list[str] | tuple[str, ...] | None = None) -> Split:
        from floranet.data.split import Split

        return Split.from_csv(self.path / self.SPLIT, class_names=class_names)

    def temperature(self) -> float:
        """The fitted temperature of ``calibration.json``; 1.0 when the run has none."""
        calib = self.read_json(self.CALIBRATION)
        if calib is None:
            return 1.0
        t = calib.get("temperature") if isinstance(calib, dict) else None
        # A hand-edited -1 flipped every answer's top class; text or NaN was a traceback or a misleading error.
        if not is_finite_number(t) or t <= 0:
            raise ModelError(
                f"{self.path / self.CALIBRATION} is damaged: temperature must be a number > 0. "
                f"Received: temperature={str(t)[:40]}; `floranet evaluate {self.path}` writes it again"
            )
        return float(t)

    def metrics(self) -> dict[str, Any]:
        """``metrics.json`` ({} when absent).

        Raises:
            ModelError: It is damaged (not JSON, or not an object).
        """
        metrics = self.read_json(self.METRICS, {})
        if not isinstance(metrics, dict):
            raise ModelError(f"{self / self.METRICS} is damaged (not a JSON object); {self.written_by(self.METRICS)}")
        return metrics

    def is_finished(self) -> bool:
        """Whether the whole ``train`` command completed: training (``state.json``) and everything after it, as
        ``metrics.json``'s command timings (``training`` among them) are written last. A run killed in its
        report, audit or model card is not finished: ``--resume`` (or ``compare``) completes it."""
        try:
            state = self.read_json(self.STATE) or {}
            timings = self.metrics().get("timings_s")
        except ModelError:
            return False
        complete = isinstance(state, dict) and bool(state.get("complete"))
        return complete and isinstance(timings, dict) and "training" in timings and self.exists(self.MODEL)

    def config_text(self) -> str:
        path = self.path / self.CONFIG
        return path.read_text(encoding="utf-8") if path.exists() else ""

    def history(self) -> list[dict[str, Any]]:
        """The rows of ``history.csv`` (:func:`~floranet.rundir.history.parse_history`); none when it is absent."""
        path = self.path / self.HISTORY
        fix = f"Put it back from a copy of the run; {self.written_by(self.HISTORY)}."
        try:
            return parse_history(path.read_text(encoding="utf-8"), path, fix) if path.exists() else []
        except UnicodeDecodeError as e:
            raise ModelError(f"{path} is damaged and cannot be read ({e}). {fix}") from None

    def load_model(self, *, safe_mode: bool = True) -> keras.Model:
        """``model.keras`` in Keras safe mode (unless told otherwise).

        Raises:
            ModelError: The file cannot be loaded, e.g. it contains code and ``safe_mode`` is on.
        """
        import keras

        if files.is_cut_keras(self.model_file):
            raise ModelError(
                f"Cannot load {self.model_file}: {files.DAMAGED_KERAS}. Copy it again, or train the run again."
            )
        try:
            return keras.saving.load_model(self.model_file, safe_mode=safe_mode)
        except Exception as e:  # Keras raises ValueError for unsafe content, others for corrupt files
            hint = (
                " It contains code (e.g. a Lambda layer); load it only if you trust it: `floranet predict` and "
                "`serve` take --unsafe (safe_mode=False in Python); the other commands never run a model's code."
                if "safe_mode" in str(e) or "Lambda" in str(e)
                else ""
            )
            raise ModelError(f"Cannot load {self.model_file}: {str(e).rstrip('.')}.{hint}") from e

    def model_version(self) -> str:
        """``<first 12 hex digits of sha256(model.keras)>-<run folder name>``, the name made URL-safe
        (:func:`~floranet.config.as_name`): KServe clients send the version in a URL path unquoted."""
        return f"{file_digest(self.model_file)[:12]}-{as_name(self.path.resolve().name)}"

    # -- writing (atomic) -----------------------------------------------------------------------------------------
    def write_json(self, name: str, obj: Any) -> Path:
        write_json(self.path / name, obj)
        return self.path / name

    def write_text(self, name: str, text: str) -> Path:
        atomic_write_text(self.path / name, text)
        return self.path / name

    def write_npz(self, name: str, arrays: dict[str, Any]) -> Path:
        """Saves numpy arrays as ``name`` (an ``.npz``), atomically; never pickled objects."""
        import numpy as np

        with atomic_path(self.path / name, suffix=".npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
        return self.path / name

    def read_npz(self, name: str) -> dict[str, Any]:
        """The arrays of an ``.npz`` of the run (``allow_pickle=False``: data only)."""
        import numpy as np

        path = self.path / name
        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise ModelError(f"{path} cannot be read ({type(e).__name__}: {e}); {self.written_by(name)}") from None

    def write_config(self, config: TrainConfig) -> None:
        config.save(self.path / self.CONFIG)

    def write_class_names(self, names: list[str] | tuple[str, ...]) -> None:
        self.write_json(self.CLASS_NAMES, list(names))

    def save_model(self, model: keras.Model, name: str = MODEL) -> Path:
        """Saves a Keras model atomically under ``name`` (relative to the run)."""
        with atomic_path(self.path / name, suffix=".keras") as tmp:
            model.save(tmp)
        return self.path / name


# What a run or audit writes right after its config.yaml: with it, a folder is floranet's (see RunDir.is_run).
_RUN_MARKS = (RunDir.DOCTOR, RunDir.SPLIT, RunDir.STATE)


def _ours(path: Path) -> bool:
    """Whether ``path`` is floranet's in a folder not yet a run: a non-chief worker's ``backup/worker-<i>/``, or what
    a run (audit) killed in its first writes left: a fresh state.json (doctor.json), written first, or a temp file."""
    if path.name == RunDir.BACKUP:
        return path.is_dir() and all(p.name.startswith("worker-") for p in path.iterdir())
    if path.name.startswith(tuple(f".{n}." for n in (RunDir.STATE, RunDir.CONFIG, RunDir.DOCTOR))):
        return True
    with contextlib.suppress(OSError, ValueError):
        state = json.loads(path.read_text()) if path.name in (RunDir.STATE, RunDir.DOCTOR) else None
        return isinstance(state, dict) and not state.get("stages") and state.get("complete") is False
    return False
