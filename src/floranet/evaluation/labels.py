"""The label check of the audit: out-of-fold class probabilities from the run's head, judged by cleanlab.

The head (:func:`floranet.models.classifier.build_head`, compiled by :func:`floranet.training.losses.compile_model`)
trains k times on the cached features, each image predicted by the head that did not see it (folds stratified by
class, byte-identical files kept in one fold). cleanlab's confident learning then flags the likely label errors
(``find_label_issues``) and scores every label (``get_label_quality_scores``, self-confidence: the out-of-fold
probability of the given label). :mod:`floranet.evaluation.audit` turns them into findings.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from floranet.config import TrainConfig

DEFAULT_FOLDS = 5
# Out-of-fold heads train on batches of at least 128 for 5 epochs (smaller sets: at least 5): on flower_photos
# with 5% planted noise that ranks the wrong labels as well as the run's 32 x 20 (fewer epochs memorise fewer
# wrong labels).
# 5 epochs instead of 10: the same top-N share (0.732 vs 0.729, five planted seeds) in 5.4 s instead of 9.1 s;
# 3 epochs fell to 0.706. See benchmarks/bench_audit.py.
OOF_MIN_BATCH = 128
OOF_EPOCHS = 5
OOF_STEPS_PER_CALL = 16  # batches per call of the compiled step: 9.4 s instead of 12.4 s for flower_photos' 5 folds


def out_of_fold_probabilities(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    config: TrainConfig,
    *,
    folds: int = DEFAULT_FOLDS,
    groups: Sequence[str] | None = None,
) -> np.ndarray:
    """Each image's probabilities from a head trained k times without it (on cached features).

    The head is the run's (``head_units``, ``dropout``, ``learning_rate``, ``label_smoothing``), trained for
    the epochs :func:`oof_schedule` gives, in batches of up to ``OOF_MIN_BATCH``, on k - 1 folds
    and asked about the last; folds are stratified by class and byte-identical files
    (same ``groups`` value) share a fold, so a copy never answers for itself.
    """
    import keras
    from sklearn.model_selection import StratifiedGroupKFold

    from floranet.models.classifier import build_head
    from floranet.training.losses import compile_model

    x = np.asarray(features, np.float32)
    y = np.asarray(labels, np.int64)
    ids = group_ids(groups, len(y))
    k, why = label_folds(y, ids, folds)
    if why:
        raise ValueError(f"out-of-fold probabilities cannot be computed: {why}")
    oof = np.zeros((len(y), num_classes), np.float32)
    epochs, batch = oof_schedule(config, len(y))
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=config.seed)
    keras.utils.set_random_seed(config.seed)
    # One head, compiled and traced once; each fold starts it again from the same initial weights and a
    # fresh optimizer state (a new model per fold would trace its training step again: seconds per fold).
    head = build_head(x.shape[1], num_classes, units=config.head_units, dropout=config.dropout)
    compile_model(head, config.learning_rate, config, steps_per_execution=OOF_STEPS_PER_CALL)
    head.optimizer.build(head.trainable_variables)
    start = head.get_weights(), [np.array(v) for v in head.optimizer.variables]
    for train, test in splitter.split(x, y, ids):
        head.set_weights(start[0])
        for var, value in zip(head.optimizer.variables, start[1], strict=True):
            var.assign(value)
        head.fit(x[train], y[train], epochs=epochs, batch_size=batch, verbose=0, shuffle=True)
        oof[test] = np.asarray(head(x[test], training=False), np.float32)  # one eager call: no retracing
    return oof


def group_ids(groups: Sequence[str] | None, n: int) -> np.ndarray:
    """An int per image; byte-identical files (same ``groups`` value) share one."""
    return np.unique(np.asarray(groups if groups is not None else np.arange(n).astype(str)), return_inverse=True)[1]


def checkable(labels: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Which images a label check can judge: (a mask of those whose class has at least two distinct files, the
    classes left out). A class of one image (or of copies of one) cannot be cross-validated: no fold could learn
    it. Left out, it no longer stops the check of every other class."""
    present = np.unique(labels)
    left_out = [int(c) for c in present if len(np.unique(ids[labels == c])) < 2]
    return ~np.isin(labels, left_out), left_out


def label_folds(labels: np.ndarray, ids: np.ndarray, folds: int) -> tuple[int, str]:
    """The k the out-of-fold heads can use (``folds`` at most, and no more than any class's distinct files: a
    fold must leave each class something to learn from), or 0 and why label issues cannot be checked."""
    present = np.unique(labels)
    if len(present) < 2:  # of those that can be checked (a class of one image is left out first)
        return 0, "they need at least two classes with two distinct images or more"
    fewest = min(len(np.unique(ids[labels == c])) for c in present)
    if fewest < 2:
        return 0, "they need at least two distinct images of every class (byte-identical copies count once)"
    return min(folds, fewest), ""


def oof_schedule(config: TrainConfig, images: int) -> tuple[int, int]:
    """(epochs, batch size) of the out-of-fold heads for ``images`` labelled images.

    Sets large enough for batches bigger than the run's (20 or more per epoch) use batches of up to
    :data:`OOF_MIN_BATCH` for :data:`OOF_EPOCHS` epochs; small sets train as the run does, for at least as many.
    """
    batch = max(config.batch_size, min(OOF_MIN_BATCH, images // 20))
    # Small sets: the run's epochs, at least OOF_EPOCHS (a run of 1 or 2 epochs, as compare or a quick train,
    # left the heads undertrained: a quarter of a 300-photo set came out "likely mislabelled" where 20 found 26)
    return (max(config.epochs, OOF_EPOCHS) if batch == config.batch_size else OOF_EPOCHS), batch


def label_issues(labels: np.ndarray, out_of_fold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab's verdict: (indices of likely label errors, most likely first; label quality of every image)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    quality = get_label_quality_scores(labels, out_of_fold, method="self_confidence")
    flagged = find_label_issues(  # n_jobs=1: cleanlab's pool forks, and a fork of a process running TensorFlow's
        # (or a multi-worker job's gRPC) threads can deadlock: a two-worker chief hung here for good
        labels,
        out_of_fold,
        filter_by="prune_by_noise_rate",
        return_indices_ranked_by="self_confidence",
        n_jobs=1,
    )
    return np.asarray(flagged, np.int64), np.asarray(quality, np.float32)
