"""The two training stages, run by one stage runner.

Stage 1 trains the head on the frozen backbone: on cached pooled features by default (the backbone
runs once per image), or through the whole model when augmentation is on in every stage. Stage 2
fine-tunes the top of the backbone. Every stage checkpoints each epoch, resumes from its last
checkpoint, stops early on validation loss, and ends with its best epoch's weights; stage 2's start
(what stage 1 left) competes as its epoch 0.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from floranet.config import TrainConfig
from floranet.inference import runtime
from floranet.models import backbones, classifier
from floranet.rundir import RunDir
from floranet.training import distribute, prefix
from floranet.training import features as feature_cache
from floranet.training.checkpoint import (
    EpochCheckpoint,
    RunState,
    StageState,
    load_checkpoint,
    load_weights,
    record_best,
)
from floranet.training.data import Prepared, unknown_length
from floranet.training.losses import compile_model
from floranet.training.views import ViewSequence

# Stage 2 on the prefix cache: one augmented view per epoch, up to this many (then they repeat). Two views
# train as well as five (benchmarks/bench_time_to_accuracy.py) at 40% of the caching time.
AUTO_VIEWS = 2
# Stage 1's head on cached features runs up to this many batches per call of its compiled step (steps_per_call):
# the same updates, and flower_photos' 10 epochs of a 512-unit head took 4.3 s at 16 instead of 6.5 s at 1 (the
# per-call overhead outweighs a batch's compute).
HEAD_STEPS_PER_CALL = 16
# (training data, validation data or None, extra keyword arguments of fit), built only when a stage runs.
StageData = tuple[Any, Any, dict[str, Any]]


@dataclass
class StageContext:
    """What every stage of one run shares."""

    run: RunDir
    config: TrainConfig
    state: RunState
    dist: distribute.Distribution
    class_weight: dict[int, float] | None
    progress: bool
    say: Callable[[str], None]


@dataclass
class Stage:
    """One stage: which model trains, on what, for how long.

    Attributes:
        name: ``"stage1"`` or ``"stage2"`` (file names, history, TensorBoard).
        target: The model whose weights train (the head alone on cached features, else the classifier).
        epochs: Epochs of this stage.
        learning_rate: Before scaling by the number of replicas.
        data: Builds the stage's data when it has epochs left to run.
        steps_per_epoch: Batches per epoch (the cosine schedule's length).
        scheduled: Whether ``config.schedule`` applies (cosine decay or plateau); stage 1 on cached
            features trains at a constant rate.
        steps_per_execution: Batches per call of the compiled training step.
        continues: The stage starts from a trained model (fine-tuning after stage 1): with early stopping, that
            start competes for the best as epoch 0, so a stage that never improves on it leaves it as it was.
    """

    name: str
    target: keras.Model
    epochs: int
    learning_rate: float
    data: Callable[[], StageData]
    steps_per_epoch: int
    scheduled: bool = True
    steps_per_execution: int = 1
    continues: bool = False


@dataclass(frozen=True)
class FeatureCache:
    """Stage 1's features: ``{sha256: pooled backbone features}``, the runtime key that computed them and, where
    OpenVINO computed them in fp32 or bf16, the converted backbone (an ``openvino.Model``, else None)."""

    features: dict[str, np.ndarray]
    key: str
    backbone_ir: Any = None


def run_stage(stage: Stage, ctx: StageContext) -> None:
    """Trains ``stage.target`` (resuming where the run left off) and leaves it at the stage's best epoch."""
    st = ctx.state.stage(stage.name)
    if _restore_if_complete(stage.target, st, ctx):
        return
    config, dist = ctx.config, ctx.dist
    lr = dist.scale_lr(stage.learning_rate)
    schedule: Any = lr
    if stage.scheduled and config.schedule == "cosine":
        schedule = keras.optimizers.schedules.CosineDecay(
            lr, decay_steps=stage.steps_per_epoch * stage.epochs, alpha=0.01
        )
    with dist.scope():
        fit_model = stage.target if dist.multi_worker else _resume_or(stage.target, st, ctx.run)
        if fit_model is stage.target:
            compile_model(stage.target, schedule, config, steps_per_execution=stage.steps_per_execution)
    callbacks: list[keras.callbacks.Callback] = [
        EpochCheckpoint(ctx.run, stage.name, ctx.state, fit_model, config.early_stopping_patience),
        keras.callbacks.TensorBoard(log_dir=str(ctx.run / RunDir.LOGS / stage.name)),
    ]
    if stage.scheduled and config.schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.3, patience=1))
    if dist.multi_worker:
        callbacks.append(_backup(dist, Path(config.out), ctx.state, stage.name, ctx.say))
    if dist.multi_worker or (st.epochs_done < stage.epochs and not _stopped(st, config)):
        train, validation, kwargs = stage.data()
        distribute.prebuild(dist, fit_model, train)
        if stage.continues:
            _score_start(fit_model, validation, st, ctx, stage.name)
        with unknown_length():
            fit_model.fit(
                train,
                validation_data=validation,
                epochs=stage.epochs,
                initial_epoch=0 if dist.multi_worker else st.epochs_done,
                callbacks=callbacks,
                verbose=1 if ctx.progress else 0,
                **{"class_weight": ctx.class_weight, **kwargs},
            )
    if fit_model is not stage.target:  # a resumed checkpoint trained: bring the target up to date
        stage.target.set_weights(fit_model.get_weights())
    if config.early_stopping_patience and st.best_weights and (ctx.run / st.best_weights).exists():
        load_weights(stage.target, ctx.run, st.best_weights)  # with early stopping the best epoch wins
    st.complete = True
    ctx.state.save(ctx.run)


def _score_start(model: keras.Model, validation: Any, st: StageState, ctx: StageContext, name: str) -> None:
    """Records a continuing stage's starting weights as its best so far ("epoch 0", by its own validation loss).

    Without it a fine-tuning whose every epoch is worse than what stage 1 left (a learning rate too high)
    ended with the least bad of those epochs. Multi-worker jobs skip it: their workers save no best weights.
    """
    if not ctx.config.early_stopping_patience or validation is None or ctx.dist.multi_worker:
        return
    if st.epochs_done or st.best_val_loss is not None:  # resumed: scored before, or trained already
        return
    x, y = validation if isinstance(validation, tuple) else (validation, None)
    with unknown_length():
        loss = model.evaluate(x, y, verbose=0, return_dict=True)["loss"]
    if not math.isfinite(loss):
        return
    record_best(ctx.run, st, name, 0, model, float(loss))
    ctx.state.save(ctx.run)


def full_model_stage(
    name: str,
    model: keras.Model,
    prepared: Prepared,
    ctx: StageContext,
    *,
    epochs: int,
    learning_rate: float,
    augment: bool,
    continues: bool = False,
) -> Stage:
    """A stage that trains through the whole classifier on decoded images (see :class:`Stage` for ``continues``)."""
    batch = ctx.dist.global_batch(ctx.config.batch_size)  # batch_size x replicas, auto-sharded by DATA

    def data() -> StageData:
        train = prepared.dataset("train", shuffle=True, augment=augment, batch_size=batch)
        validation = prepared.dataset("validation", batch_size=batch)
        if ctx.dist.distributed:
            train, validation = ctx.dist.prepare_dataset(train), ctx.dist.prepare_dataset(validation)
        return train, validation, {"shuffle": False}

    steps = max(1, math.ceil(len(prepared.split.train()) / batch))
    return Stage(name, model, epochs, learning_rate, data, steps, continues=continues)


def cached_head_stage1(model: keras.Model, prepared: Prepared, ctx: StageContext) -> FeatureCache | None:
    """Stage 1 on cached features: the backbone runs once per image, the head trains on its outputs.

    Returns:
        The features (for the final evaluation), or None when a resumed run had finished this stage.
    """
    config, run = ctx.config, ctx.run
    head = classifier.head_of(model)
    if _restore_if_complete(head, ctx.state.stage("stage1"), ctx):
        return None
    cache = feature_cache.stage1_cache(run, model, config)
    choice = cache.choice
    ctx.say(
        f"Stage 1: backbone frozen and no augmentation, so its features are computed once "
        f"(cache {cache.path.relative_to(run.path)}) and the head trains on them for "
        f"{config.epochs} epoch{'s' if config.epochs != 1 else ''}."
    )
    ctx.say(f"Feature extraction runs on {choice.runtime} in {choice.precision}: {choice.reason}.")
    rows = prepared.split.rows
    hashes = [r.sha256 for r in rows]
    with _prefix_outputs(model, prepared, ctx, cache, hashes) as also:
        calibration = prepared.calibration_images(choice.precision)
        extractor = feature_cache.stage1_extractor(cache, model, calibration=calibration, also=also)
        feats = feature_cache.fill_with(
            extractor,
            cache,
            config,
            prepared.paths(list(rows)),
            hashes,
            tf_decodable=[prepared.tf_decodable.get(r.path, False) for r in rows],
            progress=ctx.progress,
            also=also,
        )
    x_train, y_train = _arrays(prepared, prepared.split.train(), feats)
    x_val, y_val = _arrays(prepared, prepared.split.validation(), feats)

    def data() -> StageData:
        if ctx.dist.distributed:  # tf.data of global batches, auto-sharded by DATA
            return (
                ctx.dist.arrays_dataset(x_train, y_train, config.batch_size, shuffle=True, seed=config.seed),
                ctx.dist.arrays_dataset(x_val, y_val, config.batch_size, shuffle=False, seed=config.seed),
                {},
            )
        return (
            x_train,
            (x_val, y_val) if len(x_val) else None,
            {"y": y_train, "batch_size": config.batch_size, "shuffle": True},
        )

    steps = max(1, math.ceil(len(x_train) / ctx.dist.global_batch(config.batch_size)))
    stage = Stage(
        "stage1",
        head,
        config.epochs,
        config.learning_rate,
        data,
        steps,
        scheduled=False,
        # Several batches per call fail under MultiWorkerMirroredStrategy ("You must feed a value for placeholder
        # tensor" in Keras's multi-step loop): one a call there.
        steps_per_execution=1 if ctx.dist.multi_worker else steps_per_call(steps),
    )
    run_stage(stage, ctx)
    # The converted backbone (pixels → features; not with ``also``'s extra outputs): the run's compiled model
    # reuses it when the backbone stays frozen.
    return FeatureCache(feats, choice.key, None if also is not None else getattr(extractor, "ov_model", None))


@contextlib.contextmanager
def _prefix_outputs(
    model: keras.Model, prepared: Prepared, ctx: StageContext, cache: feature_cache.Stage1Cache, hashes: list[str]
) -> Iterator[feature_cache.AlsoWrite | None]:
    """What stage 1's pass also writes: the frozen prefix's outputs of every image it computes, when stage 2 will
    train on the prefix cache (its validation set and unaugmented views then cost no pass of their own)."""
    config = ctx.config
    cut = prefix.split_model(model, backbones.get(config.backbone)) if config.fine_tune_epochs else None
    todo = feature_cache.missing(cache.path, hashes) if cut is not None else 0
    if (
        cut is None
        or not todo
        or _prefix_refusal(config, ctx.state.stage("stage2").path, ctx.dist, cut, cut) is not None
        or todo * math.prod(cut.cut_shape) * 2 > prefix.cache_budget(ctx.run / RunDir.FEATURES)
    ):
        yield None
        return
    with prefix.stage1_writer(cut, prepared, ctx.run, cache.choice, todo) as sink:
        yield feature_cache.AlsoWrite(cut.features_and_prefix(), int(cut.rest.outputs[0].shape[-1]), sink)


def steps_per_call(steps: int, most: int = HEAD_STEPS_PER_CALL) -> int:
    """The largest divisor of an epoch's ``steps`` up to ``most``: Keras's progress bar counts whole calls, so a
    call that ran past the epoch's end would show "80/78"."""
    return max(d for d in range(1, min(most, steps) + 1) if steps % d == 0)


def prefix_cache_stage2(source: keras.Model, model: keras.Model, prepared: Prepared, ctx: StageContext) -> Stage | None:
    """Stage 2 on the cached outputs of the frozen prefix (:mod:`floranet.training.prefix`).

    Args:
        source: The float32 classifier whose frozen prefix computes the cache.
        model: The classifier that fine-tunes (``source`` or its mixed-precision copy), top unfrozen.

    Returns:
        The stage, or None (the reason said) where the whole model must train instead.
    """
    config, st = ctx.config, ctx.state.stage("stage2")
    spec = backbones.get(config.backbone)
    augment = config.augment != "off"
    views = config.fine_tune_views or (min(config.fine_tune_epochs, AUTO_VIEWS) if augment else 1)
    cut, trained = prefix.split_model(source, spec), prefix.split_model(model, spec)
    refusal = _prefix_refusal(config, st.path, ctx.dist, cut, trained)
    # A resumed run keeps its path: its cache is on disk already (counting it against the free space would turn
    # the run to the whole model, which its checkpoint of the top alone cannot continue).
    need = prefix.cache_bytes(cut, prepared, views) if cut is not None else 0
    if refusal is None and cut is not None and st.path != "prefix-cache":
        budget = prefix.cache_budget(ctx.run / RunDir.FEATURES)
        if need > budget:
            refusal = f"its cache would take {need / 2**30:.1f} GiB, over the budget of {budget / 2**30:.1f} GiB"
    if refusal is not None or cut is None or trained is None:
        ctx.say(f"Stage 2 trains through the whole model every epoch: {refusal}.")
        st.path = "full"
        return None
    choice = runtime.choose(config.runtime, config.precision)
    origin = (
        f"{views} augmented view(s) computed once each"
        if augment
        else "the images as they are: stage 1's pass wrote them where it ran"
    )
    ctx.say(
        f"Stage 2: the backbone below {cut.cut} is frozen, so the top trains on its cached outputs ({origin}; "
        f"{need / 2**20:.1f} MiB float16, {choice.runtime} {choice.precision})."
    )
    st.path = "prefix-cache"
    ctx.state.save(ctx.run)

    def data() -> StageData:
        cache = prefix.build_cache(
            cut, prepared, ctx.run, views=views, augment=augment, choice=choice, progress=ctx.progress
        )
        labels = prepared.labels(prepared.split.train())[cache.train_rows].astype(np.int32)
        val_labels = prepared.labels(prepared.split.validation())[cache.validation_rows].astype(np.int32)
        train = ViewSequence(cache.train, labels, config.batch_size, config.seed, st.epochs_done, ctx.class_weight)
        validation = ViewSequence([cache.validation], val_labels, config.batch_size, config.seed)
        return train, validation if len(val_labels) else None, {"class_weight": None}  # weights: in the batches

    steps = max(1, math.ceil(len(prepared.split.train()) / config.batch_size))
    return Stage(
        "stage2", trained.top, config.fine_tune_epochs, config.fine_tune_learning_rate, data, steps, continues=True
    )


def _prefix_refusal(
    config: TrainConfig, path: str | None, dist: distribute.Distribution, cut: Any, trained: Any
) -> str | None:
    """Why stage 2 cannot train on the prefix cache, or None."""
    if config.fine_tune_cache == "off":
        return "fine_tune_cache is off"
    if path == "full":
        return "the run being resumed began it that way"
    if dist.distributed:
        return "distributed training shards images, not cached views"
    if cut is None or trained is None:
        return f"no single tensor separates {config.backbone}'s frozen layers from the fine-tuned ones"
    return None


def _arrays(prepared: Prepared, rows: list[Any], feats: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    kept = [r for r in rows if r.sha256 in feats]
    x = np.stack([feats[r.sha256] for r in kept]) if kept else np.zeros((0, 1), np.float32)
    return x, prepared.labels(kept).astype(np.int32)


def _restore_if_complete(target: keras.Model, st: StageState, ctx: StageContext) -> bool:
    """A finished stage of a resumed run: its final weights are loaded instead of training again."""
    if not st.complete or ctx.dist.multi_worker:
        return False
    # As the stage ended: its best epoch with early stopping, else its last (as run_stage leaves it).
    best = ctx.config.early_stopping_patience and st.best_weights and (ctx.run / st.best_weights).exists()
    load_weights(target, ctx.run, str(st.best_weights if best else st.checkpoint))
    return True


def _backup(
    dist: distribute.Distribution, out: Path, state: RunState, stage: str, say: Callable[[str], None]
) -> keras.callbacks.Callback:
    """This worker's BackupAndRestore; the chief's state.json is brought to the backup's epoch (all workers agree)."""
    epoch = dist.backup_epoch(out, stage)
    if epoch:
        say(f"{stage}: restoring the backup after epoch {epoch} ({dist.backup_dir(out, stage)}).")
    distribute.trim_history(state, stage, epoch)
    return dist.backup(out, stage)


def _stopped(st: StageState, config: TrainConfig) -> bool:
    p = config.early_stopping_patience
    return bool(p and st.wait >= p)


def _resume_or(model: keras.Model, st: StageState, run: RunDir) -> keras.Model:
    """The checkpointed (compiled, with optimizer state) model when resuming, else ``model``."""
    if st.checkpoint and (run / st.checkpoint).exists():
        return load_checkpoint(run, st.checkpoint)
    return model
