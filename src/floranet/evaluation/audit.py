"""The label audit: wrong labels, near-duplicates and outliers, found from backbone embeddings.

Everything works on the stage-1 feature cache (pooled features of the frozen, pretrained backbone, one row
per image), so an audit costs seconds once the features exist:

* **Label issues.** Out-of-fold class probabilities for every labelled image, judged by cleanlab's confident
  learning (:mod:`floranet.evaluation.labels`); a class of fewer than two distinct images is left out of this
  check. Score in ``audit.csv``: 1 - label quality.
* **Near-duplicates.** Cosine similarity of the whitened features, every pair above the set's own threshold
  (:mod:`floranet.evaluation.duplicates`): resized, re-encoded and cropped copies; byte-identical files score 1.0,
  one row per copy against the copy of its group to keep (not one per pair of copies).
  A pair in two classes is a ``duplicate_conflict``; one on both sides of the train/validation split a
  ``duplicate_leak``; one in the same class and side a plain ``duplicate``.
* **Outliers.** cleanlab's ``OutOfDistribution`` on the features: mean cosine distance to the k nearest
  other images, scored ``s`` in (0, 1] (lower: less typical). Score in ``audit.csv``: ``-ln s`` (the distance
  on cleanlab's scale); an image is flagged when that score's robust z-score (median and MAD of all images)
  is above :data:`OUTLIER_Z`.

Nothing here touches an image file: the results are data (:class:`AuditResult`), written by
:mod:`floranet.evaluation.audit_report`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from floranet.config import TrainConfig
from floranet.evaluation.duplicates import DUPLICATE_Z, similar_pairs
from floranet.evaluation.labels import (
    DEFAULT_FOLDS,
    checkable,
    group_ids,
    label_folds,
    label_issues,
    oof_schedule,
    out_of_fold_probabilities,
)
from floranet.inference.unknown import normalize

# Robust z-score (Iglewicz and Hoaglin's 3.5) above which an image's outlier score is flagged.
OUTLIER_Z = 3.5
OUTLIER_NEIGHBOURS = 10
KINDS = ("label_issue", "duplicate_conflict", "duplicate_leak", "duplicate", "outlier")
CSV_COLUMNS = ("file", "kind", "score", "given_label", "suggested_label", "other_file", "split")


@dataclass(frozen=True)
class Finding:
    """One row of ``audit.csv``: a file and what is suspect about it.

    Attributes:
        file: Path relative to the data folder.
        kind: One of :data:`KINDS`.
        score: Higher is more suspect (label: 1 - label quality; duplicate: cosine similarity;
            outlier: -ln of cleanlab's outlier score).
        given_label: The folder it is in (or its relabel).
        suggested_label: For a label issue the class the out-of-fold head prefers; for a duplicate
            conflict the label of the other copy; else empty.
        other_file: The other image of a duplicate pair.
        split: ``train`` or ``validation`` in the run's split.
    """

    file: str
    kind: str
    score: float
    given_label: str
    suggested_label: str = ""
    other_file: str = ""
    split: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "kind": self.kind,
            "score": round(float(self.score), 6),
            "given_label": self.given_label,
            "suggested_label": self.suggested_label,
            "other_file": self.other_file,
            "split": self.split,
        }


@dataclass(frozen=True)
class AuditData:
    """The labelled images an audit looks at, aligned with their features.

    Attributes:
        paths: Relative paths.
        labels: Label indices.
        splits: ``train``/``validation`` per image.
        sha256: File hashes (byte-identical files share one).
        features: ``[n, d]`` pooled backbone features.
        class_names: Label index → name.
    """

    paths: tuple[str, ...]
    labels: np.ndarray
    splits: tuple[str, ...]
    sha256: tuple[str, ...]
    features: np.ndarray
    class_names: tuple[str, ...]


@dataclass
class AuditResult:
    """What an audit found, ranked (most suspect first within each kind).

    Attributes:
        data: What was audited.
        findings: Every flagged file.
        out_of_fold: ``[n, classes]`` out-of-fold probabilities.
        label_quality: cleanlab's label quality per image (lower: more likely wrong).
        outlier_scores: 1 - cleanlab's outlier score per image.
        facts: Settings, counts and timings (``audit.json``).
    """

    data: AuditData
    findings: list[Finding]
    out_of_fold: np.ndarray
    label_quality: np.ndarray
    outlier_scores: np.ndarray
    facts: dict[str, Any] = field(default_factory=dict)

    def of_kind(self, *kinds: str) -> list[Finding]:
        return [f for f in self.findings if f.kind in kinds]

    def label_ranking(self) -> list[str]:
        """Every path, least trustworthy label first (the order ``label_issue`` rows are a prefix of)."""
        return [self.data.paths[i] for i in np.argsort(self.label_quality, kind="stable")]

    def counts(self) -> dict[str, int]:
        return {k: len(self.of_kind(k)) for k in KINDS}


def outlier_scores(features: np.ndarray) -> np.ndarray:
    """``-ln s`` of cleanlab's ``OutOfDistribution`` score ``s`` in (0, 1] of each image: its mean cosine
    distance to its k nearest other images, on cleanlab's scale (``s = exp(-t d)``)."""
    from cleanlab.outlier import OutOfDistribution

    k = max(1, min(OUTLIER_NEIGHBOURS, len(features) - 1))
    scores = OutOfDistribution(params={"k": k}).fit_score(features=normalize(features), verbose=False)
    return (-np.log(np.clip(np.asarray(scores, np.float64), 1e-12, 1.0))).astype(np.float32)


def robust_z(values: np.ndarray) -> np.ndarray:
    """(x - median) / (1.4826 MAD); zeros when the spread is zero."""
    med = float(np.median(values))
    mad = 1.4826 * float(np.median(np.abs(values - med)))
    return np.zeros_like(values) if mad == 0 else (values - med) / mad


@dataclass(frozen=True)
class _LabelCheck:
    findings: list[Finding]
    oof: np.ndarray
    quality: np.ndarray
    folds: int
    skipped: str
    left_out: list[int]
    checked: np.ndarray  # which images the check judged: the others' quality of 1 is no verdict


def _check_labels(
    data: AuditData,
    config: TrainConfig,
    folds: int,
    groups: np.ndarray,
    timings: dict[str, float],
    say: Callable[[str], None],
) -> _LabelCheck:
    """The label check of :func:`run_audit`, on the classes that can be cross-validated (see :func:`checkable`);
    ``groups``: :func:`group_ids` of the images."""
    n, names = len(data.paths), data.class_names
    t = time.perf_counter()
    keep, left_out = checkable(data.labels, groups)
    if left_out:
        say(
            f"Audit: {', '.join(repr(names[c]) for c in left_out)} left out of the label check: a class needs at "
            "least two distinct images to be checked."
        )
    k, skipped = label_folds(data.labels[keep], groups[keep], folds)
    findings: list[Finding] = []
    oof, quality = np.zeros((n, len(names)), np.float32), np.ones(n, np.float32)
    if skipped:
        say(f"Audit: label issues not checked: {skipped}.")
        return _LabelCheck(findings, oof, quality, k, skipped, left_out, np.zeros(n, bool))
    if k < folds:  # each head then learns from fewer images: said, not only recorded in audit.json
        fewest = min(np.unique(data.labels[keep]), key=lambda c: len(np.unique(groups[keep][data.labels[keep] == c])))
        say(f"Audit: {k} folds, not {folds}: class {names[fewest]!r} has only {k} distinct images.")
    rows = np.flatnonzero(keep)
    classes, local = np.unique(data.labels[rows], return_inverse=True)  # the checked classes, renumbered
    sub = out_of_fold_probabilities(
        data.features[rows], local, len(classes), config, folds=k, groups=[data.sha256[i] for i in rows]
    )
    oof[np.ix_(rows, classes)] = sub
    timings["out_of_fold_s"] = time.perf_counter() - t
    t = time.perf_counter()
    flagged, quality[rows] = label_issues(local, sub)
    findings += [_label_finding(data, int(rows[i]), oof, quality) for i in flagged]
    timings["cleanlab_s"] = time.perf_counter() - t
    return _LabelCheck(findings, oof, quality, k, skipped, left_out, keep)


def run_audit(
    data: AuditData,
    config: TrainConfig,
    *,
    folds: int = DEFAULT_FOLDS,
    duplicate_similarity: float | None = None,
    left_out_copies: Sequence[Sequence[tuple[str, str]]] = (),
    say: Callable[[str], None] = print,
) -> AuditResult:
    """Audits labelled images from their features (see the module docstring); ``left_out_copies``: the doctor's
    groups of byte-identical files in different classes, as (path, label), which no split holds
    (:func:`conflict_findings`)."""
    n, names = len(data.paths), data.class_names
    if config.weights is None:
        say("Audit: the backbone has random weights, so its embeddings say little: expect many false duplicates.")
    timings: dict[str, float] = {}
    groups = group_ids(data.sha256, n)  # byte-identical files share one: for the folds and the pairs alike
    labels = _check_labels(data, config, folds, groups, timings, say)
    findings = list(labels.findings)
    t = time.perf_counter()
    pairs, duplicate_similarity = similar_pairs(data.features, duplicate_similarity, groups)
    findings += conflict_findings(left_out_copies)
    findings += pair_findings(data, pairs, labels.quality, groups, labels.checked)
    timings["duplicates_s"] = time.perf_counter() - t
    t = time.perf_counter()
    outliers = outlier_scores(data.features) if n > 2 else np.zeros(n, np.float32)
    z = robust_z(outliers)
    order = np.argsort(-outliers, kind="stable")
    findings += [
        Finding(data.paths[i], "outlier", float(outliers[i]), names[data.labels[i]], split=data.splits[i])
        for i in order
        if z[i] > OUTLIER_Z
    ]
    timings["outliers_s"] = time.perf_counter() - t
    facts = {
        "images": n,
        "classes": list(names),
        "folds": labels.folds or None,  # as used: the smallest class or the distinct files may allow fewer
        "label_issues_skipped": labels.skipped or None,
        "label_check_left_out": [names[c] for c in labels.left_out] or None,  # their images have no label quality
        "head": dict(
            zip(("epochs", "batch_size"), oof_schedule(config, n), strict=True),
            units=config.head_units,
            dropout=config.dropout,
            label_smoothing=config.label_smoothing,
        ),
        "duplicate_similarity": round(duplicate_similarity, 4),  # as used: this set's, unless one was given
        "duplicate_z": DUPLICATE_Z,
        "outlier_z": OUTLIER_Z,
        "similar_pairs": len(pairs),  # of distinct files; byte-identical copies are counted apart
        "byte_identical_copies": int(n - len(np.unique(groups))),  # a row each, against the copy kept
        "left_out_conflict_copies": sum(len(g) - 1 for g in left_out_copies),  # the doctor's, outside the split
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }
    result = AuditResult(data, findings, labels.oof, labels.quality, outliers, facts)
    result.facts["counts"] = result.counts()
    return result


def _label_finding(data: AuditData, i: int, oof: np.ndarray, quality: np.ndarray) -> Finding:
    names = data.class_names
    return Finding(
        data.paths[i],
        "label_issue",
        1.0 - float(quality[i]),
        names[data.labels[i]],
        names[int(np.argmax(oof[i]))],
        split=data.splits[i],
    )


def conflict_findings(groups: Sequence[Sequence[tuple[str, str]]]) -> list[Finding]:
    """A row per copy of each group of byte-identical files in different classes (``(path, label)`` each), against
    the group's first path, at similarity 1. The doctor leaves every copy of such a group out of the split (which
    label is right is unknown), so the audit's embeddings never see them: ``--exclude`` of these rows keeps the first
    copy alone, which settles the conflict (as a ``path,new_label`` relabel of the copies does); ``split`` is empty."""
    rows = []
    for members in groups:
        (kept, kept_label), *rest = sorted(members)
        for path, label in rest:
            other = label != kept_label
            kind, suggested = ("duplicate_conflict", kept_label) if other else ("duplicate", "")
            rows.append(Finding(path, kind, 1.0, label, suggested, other_file=kept))
    return rows


def pair_findings(
    data: AuditData,
    pairs: Sequence[tuple[int, int, float]],
    quality: np.ndarray,
    groups: np.ndarray,
    checked: np.ndarray | None = None,
) -> list[Finding]:
    """A row per near-duplicate pair, and per byte-identical copy (same sha256) against the one of its group to
    keep, at similarity 1 (a row per pair of copies made 500,000 rows of 1,000 copies); each row's ``file`` is the
    copy to leave out (:func:`_keep_order`).

    Args:
        data: The audited images.
        pairs: ``(i, j, similarity)`` of :func:`floranet.evaluation.duplicates.similar_pairs`, byte-identical
            files not paired with each other.
        quality: Label quality per image (the more trustworthy label is kept).
        groups: :func:`group_ids` of the images' sha256 (byte-identical files share one).
        checked: Which images the label check judged (default: all); the others' ``quality`` is no verdict.
    """
    rank = _keep_order(data, quality, np.ones(len(quality), bool) if checked is None else checked)
    keeper: dict[int, int] = {}  # group -> its member to keep: the first in the order
    for i in np.argsort(rank, kind="stable"):
        keeper.setdefault(int(groups[i]), int(i))
    copies = [(keeper[int(groups[i])], i, 1.0) for i in range(len(groups)) if keeper[int(groups[i])] != i]
    ordered = [*copies, *pairs]  # copies first: the most similar
    return [_pair_finding(data, *((i, j) if rank[i] > rank[j] else (j, i)), sim) for i, j, sim in ordered]


def _keep_order(data: AuditData, quality: np.ndarray, checked: np.ndarray) -> np.ndarray:
    """Each image's place in one order of which copy to keep: the training side first, then the more
    trustworthy label (an image the label check left out, its class of one image, after every checked one: its
    quality of 1 is no verdict, and the copy in a checked class was left out for it), then the path. Every pair's
    ``file`` (the copy to leave out) is its later member, so in a group of copies linked pair by pair the first
    one is never left out: ``--exclude audit.csv`` keeps one copy of each group (pair-by-pair rules could chain
    into a cycle and leave out all of them)."""
    keys = sorted(
        range(len(data.paths)),
        key=lambda i: (data.splits[i] == "validation", not checked[i], -quality[i], data.paths[i]),
    )
    rank = np.empty(len(keys), np.int64)
    rank[keys] = np.arange(len(keys))
    return rank


def _pair_finding(data: AuditData, first: int, second: int, sim: float) -> Finding:
    """A near-duplicate pair as one row: ``file`` is ``first``, the copy to leave out (:func:`_keep_order`: the
    validation side of a leak, the less trustworthy label of a conflict within one side, else the later path)."""
    names, labels, splits = data.class_names, data.labels, data.splits
    if labels[first] != labels[second]:
        kind = "duplicate_conflict"
    elif splits[first] != splits[second]:
        kind = "duplicate_leak"
    else:
        kind = "duplicate"
    suggested = names[labels[second]] if kind == "duplicate_conflict" else ""
    return Finding(
        data.paths[first],
        kind,
        sim,
        names[labels[first]],
        suggested,
        data.paths[second],
        splits[first],
    )
