"""Fitting a run's "unknown" answer at the end of training, and comparing out-of-distribution scores.

:func:`fit_unknown` takes the final model's embeddings of the training images (statistics) and of the
validation images (threshold) and stores a :class:`floranet.inference.unknown.UnknownDetector` as
``ood.json`` + ``ood.npz``. Without fine-tuning the final backbone is stage 1's, so the cached features are
its embeddings and nothing runs again; after fine-tuning the final model computes them once
(probabilities and features in one call, :func:`floranet.models.classifier.with_features`).

:func:`compare` scores known and unknown images with every candidate (and max logit) for
benchmarks/bench_unknown.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from floranet.config import UNKNOWN_METHODS, TrainConfig
from floranet.data.split import SplitRow
from floranet.errors import ModelError
from floranet.inference import batch, runtime
from floranet.inference import unknown as unknown_lib
from floranet.models import classifier
from floranet.rundir import RunDir
from floranet.training.embeddings import stage1_features
from floranet.utils.text import figure_text, html_text

KNN_METHODS = ("knn", "knn_head", "combined")


@dataclass(frozen=True)
class Embeddings:
    """The final model's view of a set of images: pooled backbone features and probabilities."""

    paths: tuple[str, ...]
    labels: np.ndarray
    features: np.ndarray
    probs: np.ndarray


def embed(
    run: RunDir,
    model: keras.Model,
    config: TrainConfig,
    rows: list[SplitRow],
    class_names: tuple[str, ...] | list[str],
    *,
    tf_decodable: Mapping[str, bool] | None = None,
    say: Callable[[str], None] = print,
) -> Embeddings:
    """Features and probabilities of ``rows`` from the final ``model`` (cached features when its backbone is
    stage 1's, else one pass of the model); ``class_names`` index the rows' labels (it may name classes the
    model does not have, e.g. a held-out one); ``tf_decodable`` is the doctor's verdict per row path, as
    training decodes them (a path it lacks: Pillow's path; None: guessed per file)."""
    index = {n: i for i, n in enumerate(class_names)}
    root = Path(config.data_dir)
    files = [str(root / r.path) for r in rows]
    # As training passes them: the pixels the model was trained and evaluated on, not the guess's.
    flags = [tf_decodable.get(r.path, False) for r in rows] if tf_decodable is not None else None
    head = classifier.head_of(model)
    if not config.fine_tune_epochs:  # the frozen backbone made stage 1's cache
        feats = stage1_features(run, config, files, [r.sha256 for r in rows], tf_decodable=flags, say=say)
        kept = [i for i, r in enumerate(rows) if r.sha256 in feats]
        x = np.stack([feats[rows[i].sha256] for i in kept]).astype(np.float32)
        probs = np.asarray(head.predict(x, batch_size=256, verbose=0), np.float32)
    else:
        choice = runtime.choose_inference(config.runtime, config.precision, images=len(files))
        say(
            f"Unknown answer: embedding {len(files)} images with the final model "
            f"on {choice.runtime} {choice.precision}."
        )
        out = batch.run_on_files(
            runtime.compile_inference(classifier.with_features(model), choice, streaming=True),
            files,
            image_size=config.image_size,
            batch_size=config.batch_size,
            max_pixels=config.max_pixels,
            tf_decodable=flags,
        )
        kept = [i for i in range(len(rows)) if i not in out.errors]
        n = int(model.output_shape[-1])  # the model's classes: ``class_names`` may name more (held-out ones)
        probs, x = out.outputs[kept, :n], out.outputs[kept, n:]
    labels = np.asarray([index[rows[i].label] for i in kept], np.int64)
    return Embeddings(tuple(rows[i].path for i in kept), labels, x, probs)


def fit_unknown(
    run: RunDir,
    model: keras.Model,
    config: TrainConfig,
    *,
    train: Embeddings | None = None,
    validation: Embeddings | None = None,
    tf_decodable: Mapping[str, bool] | None = None,
    say: Callable[[str], None] = print,
) -> unknown_lib.UnknownDetector:
    """Fits the run's "unknown" answer (``config.unknown_method``, keeping ``config.unknown_keep`` of known
    validation images) and saves it as ``ood.json`` + ``ood.npz``.

    Args:
        run: The run.
        model: Its final model.
        config: Its settings.
        train: The final model's embeddings of the training images, when training has them; else computed.
        validation: The same of the validation images (the evaluation's pass); else computed.
        tf_decodable: The doctor's verdict on TensorFlow's fast decoder per image (relative path), as training
            decoded them; None: guessed per file.
        say: Where one-line status messages go.

    Raises:
        ModelError: The run has no validation image.
    """
    names = run.class_names()
    split = run.split(names)
    if validation is None and not split.validation():  # embed's np.stack said "need at least one array to stack"
        raise ModelError(unknown_lib.NO_VALIDATION)
    train = train or embed(run, model, config, split.train(), names, tf_decodable=tf_decodable, say=say)
    val = validation or embed(run, model, config, split.validation(), names, tf_decodable=tf_decodable, say=say)
    detector = unknown_lib.fit(
        config.unknown_method,
        train.features,
        train.labels,
        val.features,
        val.probs,
        num_classes=len(names),
        keep=config.unknown_keep,
        temperature=run.temperature(),
        head=head_weights(model),
    )
    scores = detector.score(val.features, val.probs)
    order = np.argsort(-scores, kind="stable")[:10]
    detector.info["most_unknown_validation"] = [
        {"file": val.paths[i], "ood_score": round(float(scores[i]), 6), "unknown": bool(scores[i] > detector.threshold)}
        for i in order
    ]
    detector.save(run.path)
    say(
        f"Unknown answer: {detector.method} score, threshold {detector.threshold:.4g} keeps "
        f"{figure_text(detector.info['validation_kept'], '.1%')} of known validation images ({RunDir.OOD})."
    )
    return detector


def head_weights(model: keras.Model) -> list[np.ndarray]:
    """The head's Dense weights, in order (``[hidden kernel, hidden bias,] output kernel, output bias``)."""
    head = classifier.head_of(model)
    return [
        np.asarray(w) for layer in head.layers if isinstance(layer, keras.layers.Dense) for w in layer.get_weights()
    ]


def compare(
    model: keras.Model,
    train: Embeddings,
    known: Embeddings,
    other: Embeddings,
    *,
    num_classes: int,
    temperature: float = 1.0,
    ks: tuple[int, ...] = (1, 10),
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{candidate: (scores of known images, scores of other images)}``, higher = more unknown; every method
    of :data:`floranet.config.UNKNOWN_METHODS` (the kNN ones at each of ``ks``), fitted as training fits them,
    and max logit."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    head = head_weights(model)
    for method in UNKNOWN_METHODS:
        for k in ks if method in KNN_METHODS else (unknown_lib.DEFAULT_K,):
            det = unknown_lib.fit(
                method,
                train.features,
                train.labels,
                known.features,
                known.probs,
                num_classes=num_classes,
                temperature=temperature,
                k=k,
                head=head,
            )
            name = f"{method} (k={k})" if method in KNN_METHODS else method
            out[name] = (det.score(known.features, known.probs), det.score(other.features, other.probs))
    stats = unknown_lib.head_stats(head)
    out["max_logit"] = (
        -unknown_lib.logits(stats, known.features).max(axis=1),
        -unknown_lib.logits(stats, other.features).max(axis=1),
    )
    return out


def unknown_section(meta: dict[str, Any] | None) -> str:
    """The report's "Unknown answer" section from ``ood.json`` as read (``meta``; "" when the run has none)."""
    if not meta:
        return ""
    fitted = meta.get("fitted_on", {})
    names = meta.get("parts")
    parts = f", the mean of z-scored {html_text(', '.join(map(str, names)))}" if isinstance(names, list) else ""
    return (
        "<h2>Unknown answer</h2>"
        f"<p><code>predict</code>, <code>serve</code> and the web page answer <b>unknown</b> when an image's "
        f"out-of-distribution score is above {meta['threshold']:.4g}: method <code>{html_text(meta['method'])}</code>"
        f"{' (k = ' + str(meta.get('k')) + ')' if meta['method'] in KNN_METHODS else ''}"
        f"{parts}, statistics from "
        f"{fitted.get('train_images', '?')} training images, threshold chosen to keep {meta['keep']:.0%} of the "
        f"{fitted.get('validation_images', '?')} known validation images (kept: "
        f"{figure_text(meta.get('validation_kept', 0), '.1%')}). Every answer carries <code>unknown</code> and "
        "<code>ood_score</code>; <code>--unknown off</code> turns it off.</p>"
        + _most_unknown(meta.get("most_unknown_validation", []))
    )


def _most_unknown(rows: list[dict[str, object]]) -> str:
    if not rows:
        return ""
    body = "".join(
        f"<tr><td>{html_text(r['file'])}</td><td>{r['ood_score']}</td><td>{'unknown' if r['unknown'] else ''}</td></tr>"
        for r in rows
    )
    return (
        "<p>The validation images that look least like the training classes (the answer for each):</p>"
        f"<table><tr><th>file</th><th>ood_score</th><th>answer</th></tr>{body}</table>"
    )
