"""Training a classifier: data check, split, the two stages, the final model and its validation predictions.

:func:`fit` writes the training side of the run directory (config, doctor report, split, class names,
checkpoints, history, ``model.keras``) and returns the final model's validation predictions;
:func:`floranet.workflows.train` turns those into metrics, plots and the report.
"""

from __future__ import annotations

import dataclasses
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from floranet.config import TrainConfig
from floranet.config.choices import check
from floranet.errors import ConfigError
from floranet.inference import runtime
from floranet.models import backbones, classifier
from floranet.models import weights as weights_lib
from floranet.rundir import RunDir
from floranet.training import data as run_data
from floranet.training import distribute, outputs, prefix
from floranet.training.checkpoint import withdrawn_if_refused
from floranet.training.opening import open_run_dir
from floranet.training.outputs import Predictions
from floranet.training.stages import (
    FeatureCache,
    StageContext,
    cached_head_stage1,
    full_model_stage,
    prefix_cache_stage2,
    run_stage,
)
from floranet.utils import system

Say = Callable[[str], None]


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        run: The run directory.
        class_names: Label index → name.
        timings: Seconds per phase (data, stage1, stage2, evaluate, total).
        notes: Things the user should know (files skipped, ...).
        facts: What ``metrics.json`` records of the training (timings, weights, precision, ...).
        validation: The final model's validation predictions (None on non-chief workers).
        training: The final model's outputs on the training images when they cost no pass of their own (stage 1's
            cached prefix outputs through the fine-tuned top, as ``validation`` then), else None.
        data_dir: The data folder.
        model: The saved model, for reuse in this process.
        compiled: What ``inference/compiled.json`` records of the compiled inference model (None: OpenVINO
            is not installed).
        metrics: Filled in by :func:`floranet.workflows.train` once the evaluation is written.
        chief: False on a multi-worker job's other workers: their ``run`` was a scratch folder beside their
            backups, removed at the end; the chief's is the run directory.
        tracking_error: Why logging the finished run to MLflow failed (None: it did not, or was not asked).
        tf_decodable: The doctor's verdict on TensorFlow's fast decoder per usable file (relative path), for what
            decodes the images again after training (the unknown answer's embeddings): the same pixels.
    """

    run: RunDir
    class_names: list[str]
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    validation: Predictions | None = None
    training: Predictions | None = None
    data_dir: Path | None = None
    model: keras.Model | None = field(default=None, repr=False)
    compiled: dict[str, Any] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    chief: bool = True
    tracking_error: str | None = None
    tf_decodable: dict[str, bool] = field(default_factory=dict, repr=False)

    @property
    def run_dir(self) -> Path:
        return self.run.path


def fit(config: TrainConfig, *, resume: bool = False, progress: bool = True, say: Say = print) -> TrainResult:
    """Trains as ``config`` says and saves ``model.keras``; see the module docstring.

    Args:
        config: The resolved configuration (see :func:`floranet.config.resolve`).
        resume: Continue the run in ``config.out`` from its last completed epoch.
        progress: Show progress bars.
        say: Where one-line status messages go.

    Raises:
        DatasetError: The data cannot be trained on (the doctor's reason).
        ConfigError: Invalid settings, or a resume that does not match the run.
        WeightsError: The backbone's weights cannot be had (offline: the message names the bundled ones).
    """
    check_arguments(config, resume, say)  # before distribute.setup, the weights and the run folder
    out = Path(config.out)
    dist = distribute.setup(config)  # first: a multi-worker strategy must exist before other TensorFlow work
    weights_lib.ensure_available(config.backbone, config.weights)  # offline: fail in seconds, before any data
    run = RunDir(dist.work_dir(out))  # non-chief workers write only into a scratch run beside their backups
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    resume = _distributed_resume(dist, out, resume, say)
    # Before config.yaml is written: what the run uses (multi-worker: no early stopping) is what it records.
    config = _announce_distribution(dist, config, say)
    with withdrawn_if_refused(run, fresh=not resume):  # a refused start leaves no run to block its retry
        state = open_run_dir(run, config, resume, dist.identity())
        keras.utils.set_random_seed(config.seed)
        # --precision bf16 trains every stage in mixed bf16; "auto" builds in fp32 and switches stage 2
        # only (runtime.training_precision), so stage 1's features stay the extraction runtime's.
        keras.mixed_precision.set_global_policy("mixed_bfloat16" if config.precision == "bf16" else "float32")
        prepared = run_data.prepare(config, run, resume=resume, progress=progress, say=say)
        timings["data"] = time.perf_counter() - t0
        names = prepared.split.class_names
        with dist.scope():  # reads a --weights file: one that does not fit is refused here
            model = classifier.build_classifier(
                config.backbone,
                len(names),
                image_size=config.image_size,
                weights=config.weights,
                head_units=config.head_units,
                dropout=config.dropout,
            )
    ctx = StageContext(run, config, state, dist, run_data.class_weights(prepared, config, run), progress, say)
    precisions: dict[str, str] = {}
    t = time.perf_counter()
    cached = _stage1(model, prepared, ctx, precisions)
    timings["stage1"] = time.perf_counter() - t
    t = time.perf_counter()
    model = _stage2(model, prepared, ctx, precisions)
    timings["stage2"] = time.perf_counter() - t
    result = TrainResult(
        run, list(names), timings, prepared.notes, data_dir=prepared.data_dir, tf_decodable=prepared.tf_decodable
    )
    if not dist.is_chief:  # the chief saves, evaluates and writes the run directory
        result.chief = False
        dist.finish(out)
        timings["total"] = time.perf_counter() - t0
        return result

    _finish(result, model, prepared, ctx, precisions, cached, t0)
    return result


def check_arguments(config: Any, resume: Any, say: Any) -> None:
    """:func:`fit`'s and :func:`floranet.workflows.train`'s arguments, checked before anything is written: a dict
    as ``config`` was an AttributeError, ``say=None`` a TypeError after the run folder was made, ``resume="no"``
    resumed, and the default ``data_dir=""`` read the current folder (a failure left a run folder behind).

    Raises:
        ConfigError: ``config`` is no TrainConfig or has no data_dir, ``resume`` no bool or ``say`` not callable.
    """
    check(
        isinstance(config, TrainConfig), "config must be a TrainConfig (floranet.config.resolve(...))", "config", config
    )
    check(isinstance(resume, bool), "resume must be True or False", "resume", resume)
    check(callable(say), "say must be a callable taking one line of text (print, a logger's info)", "say", say)
    check(bool(config.data_dir), "data_dir is required (a folder of class sub-folders)", "data_dir", config.data_dir)


def _finish(
    result: TrainResult,
    model: keras.Model,
    prepared: run_data.Prepared,
    ctx: StageContext,
    precisions: dict[str, str],
    cached: FeatureCache | None,
    t0: float,
) -> None:
    """Saves the final model, predicts the validation split with it, and marks the run complete."""
    config, run, timings, split = ctx.config, ctx.run, result.timings, prepared.split
    trained = ctx.state.seconds()  # what state.json keeps: a resume evaluates again, so this part is not counted
    t = time.perf_counter()
    result.model = _save_final_model(model, config, len(result.class_names), run)
    del model  # the training copy (and its optimizer state) is no longer needed
    gc.collect()
    from_prefix = outputs.prefix_outputs(result.model, prepared, ctx)
    prefix.remove_caches(run)  # they only serve training (and take space)
    # Without fine-tuning the backbone stage 1 converted is the final one.
    backbone = cached.backbone_ir if cached is not None and not config.fine_tune_epochs else None
    result.compiled = outputs.compile_model_ir(result.model, prepared, run, backbone)
    if from_prefix is not None:
        result.training, result.validation = from_prefix
    else:  # without fine-tuning the backbone is the one that made the cached features: they are reused
        result.validation = outputs.validation_predictions(
            result.model, prepared, None if config.fine_tune_epochs else cached, run
        )
    timings["evaluate"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    if ctx.state.earlier_seconds:  # a resumed run: its training time counts the processes before this one
        timings["earlier_processes"] = ctx.state.earlier_seconds
        timings["total"] += ctx.state.earlier_seconds
    result.facts = {
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "weights": config.weights or "none",
        "backbone": config.backbone,
        "notes": prepared.notes,
        # Per class too: a resume leaves out files gone since and keeps split.csv as it was (the card reads these).
        "split": {"train": len(split.train()), "validation": len(split.validation()), "classes": split.counts()},
        "distribute": ctx.dist.describe(config.batch_size),
        "precision": precisions,
        "trained_on": system.environment(),  # the report, built later or elsewhere, shows this machine's
        "machines": ctx.state.machines(trained),  # and, for a run resumed elsewhere, each machine's share
    }
    ctx.state.complete = True
    ctx.state.save(run, seconds=trained)
    if ctx.dist.multi_worker:
        ctx.dist.finish(Path(config.out))


def _stage1(
    model: keras.Model, prepared: run_data.Prepared, ctx: StageContext, precisions: dict[str, str]
) -> FeatureCache | None:
    config = ctx.config
    if not config.epochs:
        return None
    if config.augment == "all":
        ctx.say("Stage 1: augmentation is on, so the frozen backbone runs on every epoch (no feature cache).")
        run_stage(
            full_model_stage(
                "stage1", model, prepared, ctx, epochs=config.epochs, learning_rate=config.learning_rate, augment=True
            ),
            ctx,
        )
        return None
    cached = cached_head_stage1(model, prepared, ctx)
    st = ctx.state.stage("stage1")
    if cached is not None and st.features != cached.key:
        st.features = cached.key
        ctx.state.save(ctx.run)
    if st.features:  # also when a resumed run restored stage 1 without computing its features
        precisions["features"] = st.features
    return cached


def _stage2_policy(ctx: StageContext, policy: str) -> str:
    """Records ``policy`` for stage 2's epochs from now on, and returns what its epochs were trained in: a resume
    on a CPU of another kind changes the policy (auto picks bf16 only where it is native), which is said."""
    st = ctx.state.stage("stage2")
    before = st.policy.rsplit(", then ", 1)[-1] if st.policy and st.epochs_done else None
    if before is not None and before != policy:
        ctx.say(
            f"Stage 2 trained {st.epochs_done} epoch(s) in {before} before this resume; this CPU continues it in "
            f"{policy} (recorded as {st.policy}, then {policy})."
        )
        st.policy = f"{st.policy}, then {policy}"
    elif before is None:
        st.policy = policy
    return st.policy or policy


def _stage2(
    model: keras.Model, prepared: run_data.Prepared, ctx: StageContext, precisions: dict[str, str]
) -> keras.Model:
    config = ctx.config
    if not config.fine_tune_epochs:
        return model
    spec = backbones.get(config.backbone)
    policy, why = runtime.training_precision(config.precision)
    source = model  # float32 (unless --precision bf16): the frozen prefix is computed from it
    if policy != model.dtype_policy.name:  # auto on a bf16 CPU: a mixed copy for stage 2 only
        model = _with_policy(model, policy, config, len(prepared.split.class_names), ctx.dist)
    precisions["fine_tune"] = _stage2_policy(ctx, policy)
    n = classifier.unfreeze_top(model, spec)
    ctx.say(f"Stage 2 computes in {policy}: {why}.")
    ctx.say(
        f"Stage 2: fine-tuning {n} backbone layers from {spec.fine_tune_prefix or 'the last quarter'} "
        f"(BatchNorm frozen), lr {config.fine_tune_learning_rate:g}, {config.schedule} schedule."
    )
    stage = prefix_cache_stage2(source, model, prepared, ctx) or full_model_stage(
        "stage2",
        model,
        prepared,
        ctx,
        epochs=config.fine_tune_epochs,
        learning_rate=config.fine_tune_learning_rate,
        augment=config.augment != "off",
        continues=True,
    )
    run_stage(stage, ctx)
    return model


def _distributed_resume(dist: distribute.Distribution, out: Path, resume: bool, say: Say) -> bool:
    """Multi-worker: restarting the job with the same command continues it (BackupAndRestore semantics)."""
    if not dist.multi_worker:
        return resume
    if not dist.is_chief:
        return False  # a fresh scratch run; the progress is in this worker's backup
    state = RunDir(out).read_json(RunDir.STATE)
    if state is None:
        return resume
    if resume and state.get("complete", False):  # its backups are gone: every stage would train from scratch
        raise ConfigError(
            f"Nothing to resume: the multi-worker run in {out} is complete. Evaluate it again with `floranet "
            "evaluate`, or start a new run with another --out. Received: resume=True"
        )
    incomplete = not state.get("complete", False)
    if incomplete and not resume:
        say(f"Multi-worker restart: continuing the incomplete run in {out} from its backups.")
    return resume or incomplete


def _announce_distribution(dist: distribute.Distribution, config: TrainConfig, say: Say) -> TrainConfig:
    if not dist.distributed:
        return config
    n = dist.num_replicas
    say(
        f"Distributed training ({dist.kind}): {n} replica{'s' if n != 1 else ''} on {dist.num_workers} worker(s), "
        f"{'chief' if dist.is_chief else f'worker {dist.task_index}'}; batch_size {config.batch_size} per replica "
        f"-> global batch {dist.global_batch(config.batch_size)}; learning rates scaled x{n} (linear scaling)."
    )
    if dist.multi_worker and config.early_stopping_patience:
        say("Multi-worker: early stopping is off (every worker must run the same epochs after a restart).")
        config = dataclasses.replace(config, early_stopping_patience=0)
    return config


def _with_policy(
    model: keras.Model, policy: str, config: TrainConfig, n: int, dist: distribute.Distribution | None = None
) -> keras.Model:
    """A copy of ``model`` built under ``policy`` (in ``dist``'s scope) with the same float32 weights;
    the global policy is float32 afterwards."""
    keras.mixed_precision.set_global_policy(policy)
    try:
        with (dist or distribute.LOCAL).scope():
            copy = classifier.build_classifier(
                config.backbone,
                n,
                image_size=config.image_size,
                weights=None,
                head_units=config.head_units,
                dropout=config.dropout,
            )
    finally:
        keras.mixed_precision.set_global_policy("float32")
    copy.set_weights([np.asarray(w, dtype=np.float32) for w in model.get_weights()])
    return copy


def _save_final_model(model: keras.Model, config: TrainConfig, n: int, run: RunDir) -> keras.Model:
    """Saves an uncompiled float32 copy: raw RGB in, probabilities out, no optimizer state."""
    final = _with_policy(model, "float32", config, n)
    run.save_model(final)
    return final
