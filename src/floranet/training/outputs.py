"""The final model's outputs on the run's split: its compiled inference model, its validation predictions and, when
they cost no pass of their own, its outputs on the training images.

They are computed once, at the end of :func:`floranet.training.fit`, and read by everything after it: the
evaluation (validation probabilities), the unknown answer (both subsets' pooled features). A fine-tuned model
whose stage 1 wrote the frozen prefix's outputs gets both subsets' from them through its top
(:func:`prefix_outputs`); otherwise the validation images are predicted from the stage-1 feature cache (backbone
unchanged) or in one pass of the compiled model (:func:`validation_predictions`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from floranet.inference import batch, compiled, runtime
from floranet.models import backbones, classifier
from floranet.rundir import RunDir
from floranet.training import data as run_data
from floranet.training import prefix
from floranet.training.stages import FeatureCache, StageContext


@dataclass(frozen=True)
class Predictions:
    """The final model's predictions on a subset of the split, aligned with ``split.csv``'s rows.

    Attributes:
        paths: Image paths relative to the data folder.
        labels: True label indices.
        probs: Probabilities, ``[n, classes]``.
        evaluated_on: How they were computed (runtime, or the cached features through the head).
        features: The pooled backbone features of the same pass, ``[n, F]`` (what the unknown answer reads).
    """

    paths: tuple[str, ...]
    labels: np.ndarray
    probs: np.ndarray
    evaluated_on: str
    features: np.ndarray | None = None


def prefix_outputs(
    model: keras.Model, prepared: run_data.Prepared, ctx: StageContext
) -> tuple[Predictions, Predictions] | None:
    """The final model's probabilities and features of the training and the validation images, from stage 1's
    unaugmented prefix outputs through the fine-tuned top: the layers below the cut are frozen, so this is the
    model's own output on them, for the cost of the top alone (no image decoded, no frozen layer run again).

    Returns:
        (training, validation), or None when stage 1 did not write the prefix outputs of every image of both.
    """
    config = ctx.config
    cut = prefix.split_model(model, backbones.get(config.backbone)) if config.fine_tune_epochs else None
    if cut is None:
        return None
    choice = runtime.choose(config.runtime, config.precision)
    found = [prefix.stage1_outputs(cut, prepared, ctx.run, choice, subset) for subset in ("train", "validation")]
    if found[0] is None or found[1] is None:
        return None
    source, train_rows = found[0]
    file_rows = np.concatenate([train_rows, found[1][1]])  # one pass over both subsets (the same file)
    fn = runtime.compile_inference(
        cut.probabilities_and_features(), runtime.RuntimeChoice("tensorflow", "fp32", "the saved model")
    )
    step = 4 * config.batch_size
    out = np.concatenate([fn(source.take(file_rows[i : i + step])) for i in range(0, len(file_rows), step)])
    n = len(prepared.split.class_names)
    how = (
        f"stage 1's cached prefix outputs ({choice.runtime} {choice.precision}) through the saved model's top "
        "(tensorflow fp32)"
    )

    def subset(rows: list[Any], part: np.ndarray) -> Predictions:
        return Predictions(tuple(r.path for r in rows), prepared.labels(rows), part[:, :n], how, part[:, n:])

    return subset(prepared.split.train(), out[: len(train_rows)]), subset(
        prepared.split.validation(), out[len(train_rows) :]
    )


def compile_model_ir(
    model: keras.Model, prepared: run_data.Prepared, run: RunDir, backbone: Any = None
) -> dict[str, Any] | None:
    """Leaves the compiled inference model (OpenVINO IR) beside model.keras, checked on validation images, or
    training images where the split has none (``backbone``: stage 1's converted backbone, when the final model's
    is still that one)."""
    rows = prepared.split.validation() or prepared.split.train()
    files = [prepared.abs_path(row.path) for row in rows]
    pixels = compiled.check_pixels(files, prepared.config.image_size, prepared.config.max_pixels)
    return compiled.compile_run(run, model, pixels, backbone=backbone)


def validation_predictions(
    model: keras.Model, prepared: run_data.Prepared, cached: FeatureCache | None, run: RunDir
) -> Predictions:
    """The final model's probabilities and pooled features of the validation images, in one pass."""
    rows = prepared.split.validation()
    n = len(prepared.split.class_names)
    tf_fp32 = runtime.RuntimeChoice("tensorflow", "fp32", "the saved model, exactly")
    if cached is not None and all(r.sha256 in cached.features for r in rows):
        head = runtime.compile_inference(classifier.head_of(model), tf_fp32)
        feats = np.stack([cached.features[r.sha256] for r in rows]) if rows else np.zeros((0, 0), np.float32)
        return Predictions(
            tuple(r.path for r in rows),
            prepared.labels(rows),
            head(feats) if rows else np.zeros((0, n), np.float32),
            f"cached backbone features ({cached.key}) through the saved head",
            feats,
        )
    # The compiled model where it agrees with model.keras (fp32, faster); else one trace of model.keras (eager
    # calls of a large model grow memory by gigabytes through per-call op caches).
    xml = compiled.usable(run, features=True)
    fn = runtime.OpenVINOInference.from_ir(xml, "fp32", streaming=True, joined=True) if xml else None
    out = batch.run_on_files(
        fn or runtime.compile_inference(classifier.with_features(model), tf_fp32),
        prepared.paths(rows),
        image_size=prepared.config.image_size,
        batch_size=prepared.config.batch_size,
        max_pixels=prepared.config.max_pixels,
        tf_decodable=[prepared.tf_decodable.get(r.path, False) for r in rows],
    )
    kept = [i for i in range(len(rows)) if i not in out.errors]
    return Predictions(
        tuple(rows[i].path for i in kept),
        prepared.labels([rows[i] for i in kept]),
        out.outputs[kept, :n],
        "the compiled model (OpenVINO fp32, checked against model.keras)" if fn else "model.keras (tensorflow fp32)",
        out.outputs[kept, n:],
    )
