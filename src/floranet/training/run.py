"""``floranet train``: data check, split, two-stage training, run directory.

Run directory contract (other commands rely on it)::

    config.yaml  split.csv  class_names.json  doctor.json  model.keras
    history.csv  metrics.json  plots/{samples,history,confusion_matrix}.png
    logs/ (TensorBoard)  state.json  checkpoints/  features/
"""

from __future__ import annotations

import gc
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from floranet import plots, runtime
from floranet.config import TrainConfig
from floranet.errors import ConfigError, DatasetError
from floranet.io import atomic_path, write_json
from floranet.metrics import classification_metrics
from floranet.models import backbones, classifier
from floranet.training import data as run_data
from floranet.training import distribute
from floranet.training import features as feature_cache
from floranet.training.checkpoint import EpochCheckpoint, RunState

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a finished run produced."""

    run_dir: Path
    metrics: dict[str, Any]
    class_names: list[str]
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # Validation predictions of the final model, aligned with split.csv rows: (paths, labels, probs).
    validation: tuple[list[str], np.ndarray, np.ndarray] | None = None
    data_dir: Path | None = None
    model: keras.Model | None = field(default=None, repr=False)  # the saved model, for reuse in-process


def train(config: TrainConfig, *, resume: bool = False, progress: bool = True, say=print) -> TrainResult:
    """Runs a whole training job as described by ``config``.

    Args:
        config: The resolved configuration (see :func:`floranet.config.resolve`).
        resume: Continue the run in ``config.out`` from its last completed epoch.
        progress: Show progress bars.
        say: Where one-line status messages go.

    Raises:
        DatasetError: The data cannot be trained on (the doctor's reason).
        ConfigError: Invalid settings, or a resume that does not match the run.
    """
    out = Path(config.out)
    dist = distribute.setup(config)  # first: a multi-worker strategy must exist before other TensorFlow work
    run_dir = dist.work_dir(out)  # non-chief workers write only into a temporary directory
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    resume = _distributed_resume(dist, out, resume, say)
    state = _prepare_run_dir(run_dir, config, resume)
    config = _announce_distribution(dist, config, say)
    keras.utils.set_random_seed(config.seed)
    _set_precision(config.precision)

    prepared = run_data.prepare(config, run_dir, resume=resume, progress=progress, say=say)
    timings["data"] = time.perf_counter() - t0
    names = prepared.split.class_names
    spec = backbones.get(config.backbone)

    with dist.strategy.scope():
        model = classifier.build_classifier(
            config.backbone, len(names), image_size=config.image_size, weights=config.weights,
            head_units=config.head_units, dropout=config.dropout,
        )
    class_weight = run_data.class_weights(prepared, config)

    t = time.perf_counter()
    cached: tuple[dict[str, np.ndarray], str] | None = None
    precisions: dict[str, str] = {}
    if config.epochs:
        if config.augment == "all":
            say("Stage 1: augmentation is on, so the frozen backbone runs on every epoch (no feature cache).")
            _fit_full(model, prepared, config, state, run_dir, "stage1", config.epochs, config.learning_rate,
                      augment=True, class_weight=class_weight, progress=progress, dist=dist)
        else:
            cached = _stage1_cached(model, spec, prepared, config, state, run_dir, class_weight, progress, say,
                                    dist=dist)
            if cached is not None:
                precisions["features"] = cached[1]
    timings["stage1"] = time.perf_counter() - t

    t = time.perf_counter()
    if config.fine_tune_epochs:
        policy, why = runtime.training_precision(config.precision)
        if policy != model.dtype_policy.name:  # auto on a bf16 CPU: a mixed copy for stage 2 only
            model = _with_policy(model, policy, config, len(names), dist)
        precisions["fine_tune"] = policy
        n = classifier.unfreeze_top(model, spec)
        say(f"Stage 2 computes in {policy}: {why}.")
        say(f"Stage 2: fine-tuning {n} backbone layers from {spec.fine_tune_prefix or 'the last quarter'} "
            f"(BatchNorm frozen), lr {config.fine_tune_learning_rate:g}, {config.schedule} schedule.")
        _fit_full(model, prepared, config, state, run_dir, "stage2", config.fine_tune_epochs,
                  config.fine_tune_learning_rate, augment=config.augment != "off", class_weight=class_weight,
                  progress=progress, dist=dist)
    timings["stage2"] = time.perf_counter() - t
    if not dist.is_chief:  # the chief saves, evaluates and writes the run directory
        dist.finish(out)
        timings["total"] = time.perf_counter() - t0
        return TrainResult(out, {}, list(names), timings, prepared.notes)

    t = time.perf_counter()
    final = _save_final_model(model, config, len(names), run_dir)
    del model  # the training copy (and its optimizer state) is no longer needed
    gc.collect()
    # Without fine-tuning the backbone is the one that made the cached features: reuse them.
    metrics, validation = _evaluate_and_plot(final, prepared, config, state, run_dir,
                                             cached=None if config.fine_tune_epochs else cached)
    timings["evaluate"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    metrics.update({"timings_s": {k: round(v, 2) for k, v in timings.items()},
                    "weights": config.weights or "none", "backbone": config.backbone,
                    "notes": prepared.notes, "distribute": dist.describe(config.batch_size),
                    "precision": precisions})
    write_json(run_dir / "metrics.json", metrics)
    state.complete = True
    state.save(run_dir)
    if dist.multi_worker:
        dist.finish(out)
    return TrainResult(run_dir, metrics, list(names), timings, prepared.notes, validation, prepared.data_dir, final)


_LOCAL = distribute.Distribution(None, True, 1)  # no strategy: the single-process path, unchanged


def _distributed_resume(dist: distribute.Distribution, out: Path, resume: bool, say) -> bool:
    """Multi-worker: restarting the job with the same command continues it (BackupAndRestore semantics)."""
    if not dist.multi_worker:
        return resume
    if not dist.is_chief:
        return False  # a fresh temporary directory; the progress is in this worker's backup
    try:
        incomplete = not json.loads((out / "state.json").read_text(encoding="utf-8")).get("complete", False)
    except (FileNotFoundError, json.JSONDecodeError):
        return resume
    if incomplete and not resume:
        say(f"Multi-worker restart: continuing the incomplete run in {out} from its backups.")
    return resume or incomplete


def _announce_distribution(dist: distribute.Distribution, config: TrainConfig, say) -> TrainConfig:
    if not dist.distributed:
        return config
    n = dist.num_replicas
    say(f"Distributed training ({dist.kind}): {n} replicas on {dist.num_workers} worker(s), "
        f"{'chief' if dist.is_chief else f'worker {dist.task_index}'}; batch_size {config.batch_size} per replica "
        f"-> global batch {dist.global_batch(config.batch_size)}; learning rates scaled x{n} (linear scaling).")
    if dist.multi_worker and config.early_stopping_patience:
        say("Multi-worker: early stopping is off (every worker must run the same epochs after a restart).")
        import dataclasses

        config = dataclasses.replace(config, early_stopping_patience=0)
    return config


def _prepare_run_dir(run_dir: Path, config: TrainConfig, resume: bool) -> RunState:
    config_path = run_dir / "config.yaml"
    if resume:
        if not config_path.exists():
            raise ConfigError(f"Nothing to resume: {run_dir} has no config.yaml. Received: resume=True")
        from floranet.config import load_file

        saved = load_file(config_path)
        current = {k: v for k, v in config.to_dict().items() if k not in ("out", "workers", "worker_index")}
        changed = sorted(k for k, v in current.items() if _norm(saved.get(k)) != _norm(v))
        if changed:
            raise ConfigError(f"--resume needs the settings of the run in {run_dir}; these differ: "
                              f"{', '.join(changed)}. Run without --resume to start a new run.")
        return RunState.load(run_dir)
    if (run_dir / "state.json").exists():
        raise ConfigError(f"{run_dir} already holds a run. Use --resume to continue it, or choose another --out. "
                          f"Received: out={str(run_dir)!r}")
    run_dir.mkdir(parents=True, exist_ok=True)
    config.save(config_path)
    return RunState()


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _set_precision(precision: str) -> None:
    # --precision bf16 trains every stage in mixed bf16; "auto" builds in fp32 and switches
    # stage 2 only (see runtime.training_precision), so stage 1's features stay the runtime's.
    policy = "mixed_bfloat16" if precision == "bf16" else "float32"
    keras.mixed_precision.set_global_policy(policy)


def _with_policy(model: keras.Model, policy: str, config: TrainConfig, n: int, dist=_LOCAL) -> keras.Model:
    """A copy of ``model`` built under ``policy`` (in ``dist``'s scope) with the same float32 weights;
    the global policy is float32 afterwards."""
    keras.mixed_precision.set_global_policy(policy)
    try:
        with _scope(dist):
            copy = classifier.build_classifier(config.backbone, n, image_size=config.image_size, weights=None,
                                               head_units=config.head_units, dropout=config.dropout)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    copy.set_weights([np.asarray(w, dtype=np.float32) for w in model.get_weights()])
    return copy


def _compile(model: keras.Model, lr: Any, config: TrainConfig) -> None:
    # Sparse labels; label smoothing needs one-hot, so it is applied via the loss on int labels.
    loss = keras.losses.SparseCategoricalCrossentropy()
    if config.label_smoothing:
        loss = _SmoothedSparseCE(config.label_smoothing)
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=loss, metrics=["accuracy"])


class _SmoothedSparseCE(keras.losses.Loss):
    # Registered so checkpoints of a compiled model reload without custom_objects.
    def __init__(self, smoothing: float = 0.0, name: str = "smoothed_sparse_ce", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.smoothing = smoothing

    def call(self, y_true: Any, y_pred: Any) -> Any:
        n = keras.ops.shape(y_pred)[-1]
        one_hot = keras.ops.one_hot(keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32"), n)
        return keras.losses.categorical_crossentropy(one_hot, y_pred, label_smoothing=self.smoothing)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "smoothing": self.smoothing}


keras.saving.register_keras_serializable("floranet")(_SmoothedSparseCE)


def _stage1_cached(model, spec, prepared, config, state, run_dir, class_weight, progress, say, *, dist=_LOCAL
                   ) -> tuple[dict[str, np.ndarray], str] | None:
    """Trains the head on cached features; returns them (sha256 → vector) and the runtime key."""
    st = state.stage("stage1")
    if st.complete and not dist.multi_worker:
        classifier.head_of(model).load_weights(run_dir / (st.best_weights or st.checkpoint))
        return
    choice = runtime.choose(config.runtime, config.precision)
    fingerprint = feature_cache.weights_fingerprint(classifier.backbone_of(model))
    key = feature_cache.cache_key(spec.name, fingerprint, config.image_size, choice.key)
    cache = run_dir / "features" / key
    say(f"Stage 1: backbone frozen and no augmentation, so its features are computed once "
        f"(cache {cache.relative_to(run_dir)}) and the head trains on them for {config.epochs} epochs.")
    say(f"Feature extraction runs on {choice.runtime} in {choice.precision}: {choice.reason}.")
    extractor = runtime.compile_inference(classifier.feature_extractor(model), choice, streaming=True)
    rows = prepared.split.rows
    feats = feature_cache.extract(
        extractor, [str(prepared.abs_path(r.path)) for r in rows], [r.sha256 for r in rows], cache_dir=cache,
        image_size=config.image_size, batch_size=config.batch_size,
        tf_decodable=[prepared.tf_decodable.get(r.path, False) for r in rows], progress=progress,
    )
    feature_cache.describe(cache, {"backbone": spec.name, "weights": config.weights or "none",
                                   "weights_sha256": fingerprint, "image_size": list(config.image_size),
                                   "runtime": choice.runtime, "precision": choice.precision})

    def arrays(subset: list) -> tuple[np.ndarray, np.ndarray]:
        kept = [r for r in subset if r.sha256 in feats]
        x = np.stack([feats[r.sha256] for r in kept]) if kept else np.zeros((0, 1), np.float32)
        return x, np.asarray([prepared.split.label_index(r.label) for r in kept], dtype=np.int32)

    x_train, y_train = arrays(prepared.split.train())
    x_val, y_val = arrays(prepared.split.validation())
    head = classifier.head_of(model)
    with _scope(dist):
        head_model = head if dist.multi_worker else _resume_or(head, st, run_dir)
        if head_model is head:
            _compile(head, dist.scale_lr(config.learning_rate), config)
    callbacks = [EpochCheckpoint(run_dir, "stage1", state, head_model, _patience(config)),
                 keras.callbacks.TensorBoard(log_dir=str(run_dir / "logs" / "stage1"))]
    if dist.multi_worker:
        callbacks.append(_backup(dist, Path(config.out), state, "stage1", say))
    if dist.distributed:  # tf.data of global batches, auto-sharded by DATA
        if dist.multi_worker or (st.epochs_done < config.epochs and not _stopped(st, config)):
            train_ds = dist.arrays_dataset(x_train, y_train, config.batch_size, shuffle=True, seed=config.seed)
            val_ds = dist.arrays_dataset(x_val, y_val, config.batch_size, shuffle=False, seed=config.seed)
            distribute.prebuild(dist, head_model, train_ds)
            head_model.fit(train_ds, validation_data=val_ds if len(x_val) else None, epochs=config.epochs,
                           initial_epoch=0 if dist.multi_worker else st.epochs_done, class_weight=class_weight,
                           callbacks=callbacks, verbose=1 if progress else 0)
    elif st.epochs_done < config.epochs and not _stopped(st, config):
        head_model.fit(x_train, y_train, validation_data=(x_val, y_val) if len(x_val) else None,
                       epochs=config.epochs, initial_epoch=st.epochs_done, batch_size=config.batch_size,
                       shuffle=True, class_weight=class_weight, callbacks=callbacks, verbose=1 if progress else 0)
    _finish_stage(head, head_model, st, state, run_dir, config)
    return feats, choice.key


def _fit_full(model, prepared, config, state, run_dir, stage, epochs, lr, *, augment, class_weight, progress,
              dist=_LOCAL):
    st = state.stage(stage)
    if st.complete and not dist.multi_worker:
        model.load_weights(run_dir / (st.best_weights or st.checkpoint))
        return
    if dist.distributed:  # batches of batch_size x replicas, auto-sharded by DATA
        import dataclasses

        batch = dist.global_batch(config.batch_size)
        prepared = dataclasses.replace(prepared, config=dataclasses.replace(prepared.config, batch_size=batch))
    train_ds = prepared.dataset("train", shuffle=True, augment=augment)
    val_ds = prepared.dataset("validation")
    if dist.distributed:
        train_ds, val_ds = dist.prepare_dataset(train_ds), dist.prepare_dataset(val_ds)
    steps = max(1, -(-len(prepared.split.train()) // prepared.config.batch_size))
    lr = dist.scale_lr(lr)
    schedule: Any = lr
    if config.schedule == "cosine":
        schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=steps * epochs, alpha=0.01)
    with _scope(dist):
        fit_model = model if dist.multi_worker else _resume_or(model, st, run_dir)
        if fit_model is model:
            _compile(model, schedule, config)
    callbacks: list[keras.callbacks.Callback] = [
        EpochCheckpoint(run_dir, stage, state, fit_model, _patience(config)),
        keras.callbacks.TensorBoard(log_dir=str(run_dir / "logs" / stage)),
    ]
    if config.schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.3, patience=1))
    if dist.multi_worker:
        callbacks.append(_backup(dist, Path(config.out), state, stage, print))
    if dist.multi_worker or (st.epochs_done < epochs and not _stopped(st, config)):
        distribute.prebuild(dist, fit_model, train_ds)
        fit_model.fit(train_ds, validation_data=val_ds, epochs=epochs,
                      initial_epoch=0 if dist.multi_worker else st.epochs_done,
                      class_weight=class_weight, shuffle=False, callbacks=callbacks, verbose=1 if progress else 0)
    _finish_stage(model, fit_model, st, state, run_dir, config)


def _finish_stage(target: keras.Model, trained: keras.Model, st, state: RunState, run_dir: Path,
                  config: TrainConfig) -> None:
    """Brings ``target`` up to date with ``trained`` (a resumed checkpoint or itself), keeps the best epoch,
    and marks the stage complete."""
    if trained is not target:
        target.set_weights(trained.get_weights())
    _restore_best(target, st, run_dir, config)
    st.complete = True
    state.save(run_dir)


def _scope(dist: distribute.Distribution):
    import contextlib

    return dist.strategy.scope() if dist.strategy is not None else contextlib.nullcontext()


def _backup(dist: distribute.Distribution, out: Path, state: RunState, stage: str, say) -> keras.callbacks.Callback:
    """This worker's BackupAndRestore; the chief's state.json is brought to the backup's epoch (all workers agree)."""
    epoch = dist.backup_epoch(out, stage)
    if epoch:
        say(f"{stage}: restoring the backup after epoch {epoch} ({dist.backup_dir(out, stage)}).")
    distribute.trim_history(state, stage, epoch)
    return dist.backup(out, stage)


def _patience(config: TrainConfig) -> int:
    return config.early_stopping_patience


def _stopped(st, config: TrainConfig) -> bool:
    p = _patience(config)
    return bool(p and st.wait >= p)


def _resume_or(model: keras.Model, st, run_dir: Path) -> keras.Model:
    """The checkpointed (compiled, with optimizer state) model when resuming, else ``model``."""
    if st.checkpoint and (run_dir / st.checkpoint).exists():
        return keras.saving.load_model(run_dir / st.checkpoint)
    return model


def _restore_best(model: keras.Model, st, run_dir: Path, config: TrainConfig) -> None:
    # With early stopping on, the epoch of lowest validation loss wins; off (the tutorial), the last.
    if config.early_stopping_patience and st.best_weights and (run_dir / st.best_weights).exists():
        model.load_weights(run_dir / st.best_weights)


def _save_final_model(model: keras.Model, config: TrainConfig, n: int, run_dir: Path) -> keras.Model:
    """Saves an uncompiled float32 copy: raw RGB in, probabilities out, no optimizer state."""
    final = _with_policy(model, "float32", config, n)
    with atomic_path(run_dir / "model.keras", suffix=".keras") as tmp:
        final.save(tmp)
    return final


def _evaluate_and_plot(model, prepared, config, state: RunState, run_dir: Path, *,
                       cached: tuple[dict[str, np.ndarray], str] | None = None) -> tuple[dict[str, Any], Any]:
    names = list(prepared.split.class_names)
    val = prepared.split.validation()
    if cached is not None and all(r.sha256 in cached[0] for r in val):
        feats, key = cached
        head = runtime.compile_inference(classifier.head_of(model), runtime.RuntimeChoice("tensorflow", "fp32", ""))
        rows = val
        probs = head(np.stack([feats[r.sha256] for r in rows])) if rows else np.zeros((0, len(names)))
        labels = np.asarray([prepared.split.label_index(r.label) for r in rows], dtype=np.int64)
        evaluated_on = f"cached backbone features ({key}) through the saved head"
    else:
        probs, labels, rows = prepared.predict(model, "validation")
        evaluated_on = "model.keras (tensorflow fp32)"
    metrics = classification_metrics(labels, probs, names)
    metrics["evaluated_on"] = evaluated_on
    metrics["split"] = {"train": len(prepared.split.train()), "validation": len(prepared.split.validation())}
    plots_dir = run_dir / "plots"
    if state.history:
        plots.history_plot(state.history, plots_dir / "history.png")
    if "confusion_matrix" in metrics:
        plots.confusion_matrix_plot(np.asarray(metrics["confusion_matrix"]), names,
                                    plots_dir / "confusion_matrix.png")
    return metrics, ([r.path for r in rows], labels, probs)


def load_class_names(run_dir: str | os.PathLike[str]) -> list[str]:
    path = Path(run_dir) / "class_names.json"
    if not path.exists():
        raise DatasetError(f"{run_dir} is not a floranet run directory: class_names.json is missing.")
    return json.loads(path.read_text(encoding="utf-8"))
