"""Near-duplicates from embeddings: whitened cosine similarity, and a threshold that is the set's own.

Whitening (centred, the Ledoit-Wolf covariance, L2-normalised) makes directions in which every image varies
little, what all photos of the set share, stop making two distinct photos look alike. The scale of whitened
similarities shrinks with the set (with fewer images than dimensions, whitening spreads every image apart), so the
threshold is measured on the set: :data:`DUPLICATE_Z` robust deviations above its median pair.
"""

from __future__ import annotations

import numpy as np

from floranet.inference.unknown import normalize

# Robust z-score of a pair's whitened similarity among all pairs of the set (median, 1.4826 MAD) at or above
# which two images are called near-duplicates: on flower_photos (3,169 images with 50 planted copies) it gives a
# similarity of 0.383, where bench_audit finds all 50 planted resized/re-encoded/cropped copies (0.42: 48); on 65
# and 205 photos every planted copy (z 20 to 78), where the fixed 0.42 found none.
DUPLICATE_Z = 18.0
# The highest threshold used (the set's own is lower on real photos; features with a wide spread, as a random-init
# backbone's, would put that above 1), and the one used where the pairs have no spread to measure.
DUPLICATE_SIMILARITY = 0.42
_THRESHOLD_ROWS = 512  # rows of the similarity matrix sampled for its median and MAD (all of a smaller set)
_BLOCK = 1024


def whitened(features: np.ndarray, fit_rows: np.ndarray | None = None) -> np.ndarray:
    """Features centred and whitened with their Ledoit-Wolf shrunk covariance, then L2-normalised.

    Cosine similarity there is a Mahalanobis-style similarity: directions in which every image of the set
    varies little (what all flower photos share) no longer make two distinct photos look alike. The shrinkage
    adapts to the set: small sets (fewer images than dimensions) stay close to plain centred cosine.

    Args:
        features: ``[n, d]`` embeddings.
        fit_rows: The rows the mean and covariance are measured on (None: all), e.g. one per distinct file.
    """
    from sklearn.covariance import LedoitWolf

    x = np.asarray(features, np.float64)
    basis = x if fit_rows is None else x[fit_rows]
    mean = basis.mean(axis=0)
    x, basis = x - mean, basis - mean
    if len(basis) < 3:
        return normalize(x)
    # store_precision=False: the inverse is never used, and computing it took 8 of 10 s for 2,048 features.
    fitted = LedoitWolf(assume_centered=True, store_precision=False).fit(basis)
    values, vectors = np.linalg.eigh(fitted.covariance_)
    keep = values > values.max() * 1e-9
    return normalize((x @ vectors[:, keep] / np.sqrt(values[keep])).astype(np.float32))


def duplicate_threshold(z: np.ndarray, seed: int = 0) -> float:
    """The similarity :data:`DUPLICATE_Z` robust deviations above the median pair of whitened features ``z``
    (estimated on up to :data:`_THRESHOLD_ROWS` seeded rows against every other image), or
    :data:`DUPLICATE_SIMILARITY` where that is lower or the pairs have no spread."""
    n = len(z)
    if n < 3:
        return DUPLICATE_SIMILARITY
    rows = np.sort(np.random.default_rng(seed).choice(n, min(n, _THRESHOLD_ROWS), replace=False))
    sims = (z[rows] @ z.T).astype(np.float64)
    sims[np.arange(len(rows)), rows] = np.nan  # an image with itself is no pair
    values = sims[~np.isnan(sims)]
    median = float(np.median(values))
    mad = 1.4826 * float(np.median(np.abs(values - median)))
    return DUPLICATE_SIMILARITY if mad == 0 else min(median + DUPLICATE_Z * mad, DUPLICATE_SIMILARITY)


def similar_pairs(
    features: np.ndarray, threshold: float | None = None, groups: np.ndarray | None = None
) -> tuple[list[tuple[int, int, float]], float]:
    """Pairs ``(i, j, similarity)`` with ``i < j`` at or above ``threshold`` (None: :func:`duplicate_threshold`
    of this set), most similar first, and the threshold used; the similarity is the cosine of :func:`whitened`
    features.

    Args:
        features: ``[n, d]`` embeddings.
        threshold: The similarity that makes a pair; None: the set's own.
        groups: An id per row, the same for byte-identical files: the whitening and the threshold are measured
            on one row of each (five copies of one photo raised the threshold past a resized copy elsewhere),
            and copies are not paired with each other (a group of n would give n(n-1)/2 pairs:
            :func:`floranet.evaluation.audit.pair_findings` lists them, one row per copy).

    Blockwise (``1024 x n`` similarities at a time), so memory stays bounded; time is O(n^2 d).
    """
    distinct = None if groups is None else np.sort(np.unique(np.asarray(groups), return_index=True)[1])
    z = whitened(features, distinct)
    if threshold is None:
        threshold = duplicate_threshold(z if distinct is None else z[distinct])
    ids = np.arange(len(z)) if groups is None else np.asarray(groups)
    pairs: list[tuple[int, int, float]] = []
    for s in range(0, len(z), _BLOCK):
        sims = z[s : s + _BLOCK] @ z.T
        rows, cols = np.nonzero(sims >= threshold)
        keep = (cols > rows + s) & (ids[rows + s] != ids[cols])
        pairs += [(int(r + s), int(c), float(sims[r, c])) for r, c in zip(rows[keep], cols[keep], strict=True)]
    return sorted(pairs, key=lambda p: (-p[2], p[0], p[1])), threshold
