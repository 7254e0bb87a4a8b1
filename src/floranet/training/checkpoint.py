"""Resumable training state: per-epoch checkpoints that survive ``kill -9``.

After every epoch the callback writes, in this order and each atomically:
the model checkpoint for that epoch, the best weights (when improved),
``history.csv``, and last ``state.json``, which names the checkpoint. A kill
at any moment leaves ``state.json`` pointing at a complete checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import PurePosixPath
from typing import Any

import keras

from floranet.config import is_finite_number
from floranet.errors import ConfigError, DatasetError, ModelError, WeightsError
from floranet.rundir import RunDir
from floranet.rundir.history import history_text
from floranet.utils import system
from floranet.utils.files import atomic_path

# state.json's layout; a file without "format" is of this one (written before the key was).
STATE_FORMAT = 1


MACHINE_KEYS = ("cpu", "cpu model", "cores", "native bf16")


def this_machine() -> dict[str, str]:
    """What a training time depends on of this machine (:func:`floranet.utils.system.environment`)."""
    env = system.environment()
    return {k: env[k] for k in MACHINE_KEYS}


@dataclass
class StageState:
    epochs_done: int = 0
    checkpoint: str | None = None  # relative to the run dir
    best_val_loss: float | None = None
    best_weights: str | None = None
    wait: int = 0
    complete: bool = False
    path: str | None = None  # how stage 2 trains: "prefix-cache" or "full" (kept so --resume takes the same)
    features: str | None = None  # stage 1's feature runtime and precision (metrics.json says it after a resume too)
    # Stage 2's Keras policy in the epochs trained so far ("float32"; "float32, then mixed_bfloat16" when a resume on
    # a CPU of another kind changed it): metrics.json and the card say what the model was trained in.
    policy: str | None = None


@dataclass
class RunState:
    stages: dict[str, StageState] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    complete: bool = False
    # Training seconds of the processes before this one (up to each one's last checkpoint; the final evaluation
    # left out, as a resume does it again), so that a resumed run's training time counts them too; this process's
    # time is added at each save.
    earlier_seconds: float = 0.0
    # Each earlier process's machine and training seconds (a time holds for one CPU kind only): a run resumed on
    # another machine says each one's share. A state.json from before it was recorded gives one unnamed machine.
    earlier_machines: list[dict[str, Any]] = field(default_factory=list)
    # The sha256 of the --weights file the run began with (None: no file, or a run from before it was recorded):
    # a resume with another file at the same path is refused (opening.check_resume_settings).
    weights_sha256: str | None = None
    # How the run trains across devices and machines (strategy, replicas, workers): the global batch and the
    # learning rates depend on it, so a resume with another is refused (opening.check_same_distribution). None:
    # a run from before it was recorded.
    distribute: dict[str, Any] | None = None
    started: float = field(default_factory=time.perf_counter, repr=False, compare=False)
    machine: dict[str, str] = field(default_factory=this_machine, repr=False, compare=False)

    def seconds(self) -> float:
        """Training seconds of every process so far, this one included."""
        return self.earlier_seconds + time.perf_counter() - self.started

    def machines(self, seconds: float | None = None) -> list[dict[str, Any]]:
        """Each process's machine and training seconds, this one's last (``seconds``: the total, if not now)."""
        total = self.seconds() if seconds is None else seconds
        return [*self.earlier_machines, {**self.machine, "seconds": round(total - self.earlier_seconds, 2)}]

    def stage(self, name: str) -> StageState:
        return self.stages.setdefault(name, StageState())

    def save(self, run: RunDir, *, seconds: float | None = None) -> None:
        """Writes ``state.json``; ``seconds``: the training seconds to record, if not :meth:`seconds` now."""
        run.write_json(
            RunDir.STATE,
            {
                "format": STATE_FORMAT,
                "stages": {k: asdict(v) for k, v in self.stages.items()},
                "history": self.history,
                "complete": self.complete,
                "seconds": round(self.seconds() if seconds is None else seconds, 2),
                "machines": self.machines(seconds),
                "weights_sha256": self.weights_sha256,
                "distribute": self.distribute,
            },
        )

    @classmethod
    def load(cls, run: RunDir) -> RunState:
        """The run's ``state.json`` (a fresh state when absent), with every checkpoint it names on disk.

        Raises:
            ModelError: It is damaged or hand-edited out of shape, was written by another floranet version, or
                names a checkpoint that is gone (resuming from a fresh model would train the remaining epochs only,
                and say nothing) or lies outside ``checkpoints/``.
        """
        raw = run.read_json(RunDir.STATE)
        if raw is None:
            return cls()
        fmt = raw.get("format", STATE_FORMAT) if isinstance(raw, dict) else STATE_FORMAT  # older files: none
        if fmt != STATE_FORMAT:
            raise ModelError(
                f"{run / RunDir.STATE} was written by another floranet version (format {fmt!r}; this one reads "
                f"{STATE_FORMAT}): resume the run with that version, or start a new run with another --out"
            )
        try:
            stages = raw.get("stages", {})
            if not isinstance(stages, dict):
                raise TypeError(f"stages must be an object of stage name -> stage, not {stages!r}")
            state = cls(
                stages={str(k): _stage(v, f"stages.{k}") for k, v in stages.items()},
                history=[dict(row) for row in raw.get("history", [])],
                complete=_boolean(raw.get("complete", False)),
                earlier_seconds=_seconds(raw.get("seconds", 0.0)),
                earlier_machines=_machines(raw.get("machines"), _seconds(raw.get("seconds", 0.0))),
                weights_sha256=recorded_weights(raw),
                distribute=_distribution(raw.get("distribute")),
            )
        except (AttributeError, TypeError, ValueError) as e:
            raise ModelError(
                f"{run / RunDir.STATE} is damaged ({e}); the run cannot be resumed: start a new run with another --out"
            ) from None
        for name, st in state.stages.items():
            for kept in (st.checkpoint, st.best_weights):
                if kept and not (run / kept).is_file():
                    raise ModelError(
                        f"{run / kept} is gone, and {RunDir.STATE} names it for {name}: the run cannot be resumed "
                        "from it (checkpoints/ may be deleted only once a run is finished); start a new run with "
                        "another --out"
                    )
        return state

    def check_epochs(self, run: RunDir, epochs: dict[str, int]) -> None:
        """Refuses a stage that has done more epochs than the run's settings give it.

        Args:
            run: The run (named in the message).
            epochs: Stage name -> its epochs in the run's settings.

        Raises:
            ModelError: ``state.json`` says otherwise (a hand edit: the stage would count as finished early).
        """
        for name, st in self.stages.items():
            if name in epochs and st.epochs_done > epochs[name]:
                raise ModelError(
                    f"{run / RunDir.STATE} is damaged (stages.{name}.epochs_done is {st.epochs_done}, over the "
                    f"{epochs[name]} epochs of {name} in {RunDir.CONFIG}); the run cannot be resumed: start a new "
                    "run with another --out"
                )


def _stage(value: Any, where: str) -> StageState:
    """A stage of ``state.json`` (at ``where``), its fields of the types :class:`StageState` holds."""
    if not isinstance(value, dict):
        raise TypeError(f"{where} must be an object, not {value!r}")
    unknown = sorted(set(value) - {f.name for f in fields(StageState)})
    if unknown:
        raise TypeError(f"{where} has unknown fields: {', '.join(map(repr, unknown))}")
    st = StageState(**value)
    ints, optional_text = ("epochs_done", "wait"), ("checkpoint", "best_weights", "path", "features", "policy")
    if not all(isinstance(getattr(st, f), int) and not isinstance(getattr(st, f), bool) for f in ints):
        raise TypeError(f"epochs_done and wait must be ints, not {st.epochs_done!r} and {st.wait!r}")
    if st.epochs_done < 0 or st.wait < 0:
        raise ValueError(f"{where}: epochs_done and wait must be 0 or more, not {st.epochs_done} and {st.wait}")
    if not all(getattr(st, f) is None or isinstance(getattr(st, f), str) for f in optional_text):
        raise TypeError("checkpoint, best_weights, path, features and policy must be text or null")
    for f in ("checkpoint", "best_weights"):
        name = getattr(st, f)
        parts = PurePosixPath(name).parts if name else ()
        if name and (len(parts) < 2 or parts[0] != RunDir.CHECKPOINTS or ".." in parts or "\\" in name):
            raise ValueError(f"{where}.{f} must name a file in the run's {RunDir.CHECKPOINTS}/, not {name!r}")
    if st.best_val_loss is not None and not isinstance(st.best_val_loss, (int, float)):
        raise TypeError(f"best_val_loss must be a number or null, not {st.best_val_loss!r}")
    st.complete = _boolean(st.complete)
    return st


def _machines(raw: Any, seconds: float) -> list[dict[str, Any]]:
    """state.json's ``machines``; for a file from before them, one unnamed machine with all its seconds."""
    if raw is None:
        return [{"seconds": seconds}] if seconds else []
    if not isinstance(raw, list) or not all(isinstance(m, dict) for m in raw):
        raise TypeError(f"machines must be a list of objects, not {str(raw)[:60]}")
    for m in raw:
        if not is_finite_number(m.get("seconds")) or not all(isinstance(m.get(k, ""), str) for k in MACHINE_KEYS):
            raise TypeError(f"each of machines must have seconds and text {', '.join(MACHINE_KEYS)}, not {m!r:.80}")
    return [{k: m[k] for k in (*MACHINE_KEYS, "seconds") if k in m} for m in raw]


def _distribution(raw: Any) -> dict[str, Any] | None:
    """state.json's ``distribute``: null, or the strategy's name with its replica and worker counts."""
    if raw is None:
        return None
    if (
        not isinstance(raw, dict)
        or set(raw) != {"strategy", "replicas", "workers"}
        or not isinstance(raw["strategy"], str)
    ):
        raise TypeError(f"distribute must be null or an object of strategy, replicas and workers, not {raw!r}")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in (raw["replicas"], raw["workers"])):
        raise ValueError(f"distribute's replicas and workers must be ints of 1 or more, not {raw!r}")
    return dict(raw)


def _seconds(value: Any) -> float:
    if not is_finite_number(value) or value < 0:
        raise TypeError(f"seconds must be a number of seconds, not {value!r}")
    return float(value)


def recorded_weights(raw: Any) -> str | None:
    """The sha256 of the weights file a ``state.json``'s content records (None: none recorded)."""
    value = raw.get("weights_sha256") if isinstance(raw, dict) else None
    return value if isinstance(value, str) else None


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"complete must be true or false, not {value!r}")
    return value


def load_checkpoint(run: RunDir, name: str) -> keras.Model:
    """The checkpointed model ``name`` (relative to the run), compiled, with its optimizer state.

    Raises:
        ModelError: The file is damaged (Keras said "File not found" for a file cut short).
    """
    path = run / name
    if not zipfile.is_zipfile(path):
        raise _damaged(path, "not a .keras zip archive")
    try:
        return keras.saving.load_model(path)
    except Exception as e:  # Keras raises ValueError, KeyError, OSError, ... for a corrupt file
        raise _damaged(path, str(e).rstrip(".")) from e


def load_weights(target: keras.Model, run: RunDir, name: str) -> None:
    """Loads the saved weights ``name`` (relative to the run; a ``.weights.h5`` or ``.keras``) into ``target``.

    Raises:
        ModelError: The file is damaged (h5py's "truncated file", ...).
    """
    path = run / name
    try:
        # A stage's start (its "epoch 0" best) is saved before its optimizer is built: Keras then says it skips the
        # optimizer's variables, and only the model's weights are wanted here.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            target.load_weights(path)
    except Exception as e:  # h5py's OSError, Keras's ValueError, ...
        raise _damaged(path, str(e).rstrip(".")) from e


def _damaged(path: Any, why: str) -> ModelError:
    return ModelError(
        f"{path} is damaged ({why}; cut short by a copy or a full disk?), and {RunDir.STATE} names it: the run "
        "cannot be resumed from it. Put back an intact copy of the file, or start a new run with another --out"
    )


def write_history_csv(run: RunDir, history: list[dict[str, Any]]) -> None:
    run.write_text(RunDir.HISTORY, history_text(history))


def record_best(run: RunDir, st: StageState, stage: str, epoch: int, target: keras.Model, val_loss: float) -> None:
    """Saves ``target``'s weights as the stage's best so far, at ``epoch`` (1-based; 0: the stage's start)."""
    # Named by its epoch: a kill before state.json is saved leaves the recorded best file as it was.
    st.best_weights = RunDir.best_weights_name(stage, epoch)
    with atomic_path(run / st.best_weights, suffix=".weights.h5") as tmp:
        target.save_weights(tmp)
    st.best_val_loss, st.wait = val_loss, 0


class EpochCheckpoint(keras.callbacks.Callback):
    """Checkpoints ``target`` after each epoch, tracks the best val_loss, stops early.

    Args:
        run: The run directory.
        stage: Stage name ("stage1" or "stage2"), used in file names and history.
        state: The run's state, updated in place and saved.
        target: The model to checkpoint (the head alone in cached-feature training).
        patience: Epochs without val_loss improvement before stopping; 0 disables.
    """

    def __init__(self, run: RunDir, stage: str, state: RunState, target: keras.Model, patience: int) -> None:
        super().__init__()
        self.run, self.stage, self.state, self.target, self.patience = run, stage, state, target, patience
        (run / RunDir.CHECKPOINTS).mkdir(parents=True, exist_ok=True)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = dict(logs or {})
        st = self.state.stage(self.stage)
        ckpt = f"{RunDir.CHECKPOINTS}/{self.stage}-epoch{epoch + 1:03d}.keras"
        self.run.save_model(self.target, ckpt)
        val_loss = logs.get("val_loss")
        improved = (
            val_loss is not None
            and math.isfinite(val_loss)
            and (st.best_val_loss is None or val_loss < st.best_val_loss)
        )
        if improved:
            record_best(self.run, st, self.stage, epoch + 1, self.target, float(val_loss or 0.0))
        elif val_loss is not None:  # no validation images: nothing to wait on, every epoch trains
            st.wait += 1
        row = {"stage": self.stage, "epoch": len(self.state.history) + 1, "stage_epoch": epoch + 1}
        row.update({k: float(v) for k, v in logs.items() if isinstance(v, (int, float))})
        self.state.history.append(row)
        st.epochs_done, st.checkpoint = epoch + 1, ckpt
        write_history_csv(self.run, self.state.history)
        self.state.save(self.run)
        # Our own files of this stage that the state no longer names (superseded, or left by a killed attempt).
        keep = {self.run / name for name in (st.checkpoint, st.best_weights) if name}
        for path in (self.run / RunDir.CHECKPOINTS).glob(f"{self.stage}-*"):
            if path not in keep and not path.name.startswith("."):
                path.unlink(missing_ok=True)
        if self.patience and st.wait >= self.patience:
            self.model.stop_training = True


@contextlib.contextmanager
def withdrawn_if_refused(run: RunDir, *, fresh: bool) -> Iterator[None]:
    """Removes what a new run wrote when its data, settings or weights file are refused before it trains.

    A start refused for its data (an unusable folder, class names that look alike), its settings (a bad
    ``--exclude`` file) or its ``--weights`` file (not HDF5, another architecture's) left ``config.yaml`` and
    ``state.json`` behind: the corrected command was then told the
    folder "already holds a run", and ``--resume`` that its settings differ. Only entries this start created go
    (a folder the lock created goes with the lock); a resumed run, and any other error or an interrupt, keep all.

    Args:
        run: The run directory being started.
        fresh: A new run (not a resume).
    """
    before = set(os.listdir(run.path)) if run.path.is_dir() else set()
    try:
        yield
    except (ConfigError, DatasetError, WeightsError):
        if fresh and run.path.is_dir():
            for name in sorted(set(os.listdir(run.path)) - before - {RunDir.LOCK}):
                path = run.path / name
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        raise
