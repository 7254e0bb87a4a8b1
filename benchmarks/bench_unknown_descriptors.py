"""Screens of other descriptors and density models for the unknown answer, and a supervised upper bound.

As in bench_unknown_screens.py: each flower_photos class is held out in turn; one ImageNet MobileNetV2 pass
(../shared's Keras-layout file, 225 px) over every image, here at four rotations; the same seeded split
(known validation images are the negatives, every held-out image a positive). The reference row is the
centred cosine 1-NN on the average-pooled features, the part of bench_unknown's ``combined`` score that sees
the backbone. A screen is worth a training run only where it clearly beats that row.

- **Pooling**: GeM (p=3) and max pooling of the last feature map, and the square root of the average
  (power normalisation), each with the same 1-NN.
- **Rotations** (Hendrycks et al. 2019, Tack et al. 2020): the four rotated views' features side by side;
  a head on (class, rotation) pairs, scored by the joint log-probability of the best class over the views,
  by the class log-probability summed over views, and by the rotation's log-probability alone.
- **Whitening**: 1-NN after PCA whitening (64 dimensions, variance floor 10% of the mean) and after a
  Ledoit-Wolf whitening; one Ledoit-Wolf Gaussian's Mahalanobis distance.
- **Density models** on PCA-128: local outlier factor (cosine, k=20), per-class 4-component diagonal Gaussian
  mixtures (the nearest class's negative log-likelihood), a one-class SVM (RBF, nu=0.1).
- **Which channels**: 1-NN on the square-rooted features with each channel weighted by the square root of its
  Fisher ratio over the known classes (between-class over within-class variance), so that channels that tell
  flowers apart count more than those that vary within a class; a channel-exceedance score (how far any
  channel passes its 99th percentile over the known images, in standard deviations).
- **A learned metric for new classes** (episodic, leave one class out): a linear map to 128 dimensions trained
  on the known images only, each step holding one known class out of the reference and ranking its images
  farther (soft nearest-neighbour distance) than held-aside images of the others; 1-NN in that space.
- **Earlier depths and colour**: the average pool of ``block_6``/``block_10``/``block_13``/``block_16``'s
  expanded maps (square-rooted), each with the same 1-NN, and the sum of all five depths' 1-NN distances,
  each z-scored on the calibration images; a 12×4×4 HSV colour histogram (square-rooted) with the same 1-NN.
  Later layers forget what telling four known classes apart does not need; these keep texture and colour.
- **Sub-classes**: k-means splits each known class into 3 or 8 clusters; the cross-entropy head of
  bench_unknown_screens.py is trained on the clusters instead of the classes (so that its hidden layer keeps
  within-class structure that an unseen class may need), then 1-NN on its hidden layer.
- **Supervised upper bound**: a logistic regression told which images are the held-out class (5-fold
  cross-validated predictions over the same negatives and positives). No unknown score may use those labels;
  the row says how separable the held-out class is in these features at all.

    python benchmarks/bench_unknown_descriptors.py [--seed 0]

Result: results/unknown_descriptors.json.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_unknown_screens import SHARED_MOBILENET_TOP, SIZE, _auroc, _head, _softmax, centred_knn, run_screen
from common import write_result

DEPTHS = ("block_6_expand_relu", "block_10_expand_relu", "block_13_expand_relu", "block_16_expand_relu")


def _embed(files: list[Path]) -> dict[str, np.ndarray]:
    """Per image: avg/GeM/max pooled last feature map upright, the average pool of each rotation, the average
    pool of each earlier depth and an HSV colour histogram."""
    import keras
    import tensorflow as tf

    from floranet.data.decode import decode_and_resize

    net = keras.applications.MobileNetV2(
        weights=str(SHARED_MOBILENET_TOP), include_top=True, input_shape=(SIZE, SIZE, 3), classifier_activation=None
    )
    model = keras.Model(net.input, [net.get_layer(name).output for name in ("out_relu", *DEPTHS)])
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("gem", "max", "avg0", "avg1", "avg2", "avg3", "hsv", *DEPTHS)}
    for s in range(0, len(files), 64):
        pixels = np.stack([decode_and_resize(f, (SIZE, SIZE)) for f in files[s : s + 64]])
        x = keras.applications.mobilenet_v2.preprocess_input(pixels.copy())
        for r in range(4):
            maps, *earlier = model.predict(np.rot90(x, r, axes=(1, 2)), verbose=0)
            maps = maps.astype(np.float64)
            out[f"avg{r}"].append(maps.mean((1, 2)))
            if r == 0:
                out["gem"].append((np.maximum(maps, 1e-6) ** 3).mean((1, 2)) ** (1 / 3))
                out["max"].append(maps.max((1, 2)))
                for name, m in zip(DEPTHS, earlier, strict=True):
                    out[name].append(m.astype(np.float64).mean((1, 2)))
        hsv = tf.image.rgb_to_hsv(pixels / 255.0).numpy().reshape(len(pixels), -1, 3)
        bins = [np.histogramdd(im, bins=(12, 4, 4), range=((0, 1),) * 3)[0].ravel() for im in hsv]
        out["hsv"].append(np.sqrt(np.asarray(bins) / hsv.shape[1]))
    return {k: np.concatenate(v) for k, v in out.items()}


def _rotation_scores(feats: dict[str, np.ndarray], y: np.ndarray, train: np.ndarray, ask: np.ndarray) -> dict:
    """A head on (class, rotation) pairs; three scores from its answers on the four rotated views."""
    n = int(y.max()) + 1
    x = np.concatenate([feats[f"avg{r}"][train] for r in range(4)]).astype(np.float32)
    head = _head(x, np.concatenate([y * 4 + r for r in range(4)]), n * 4, seed=0)
    # log p(class c, rotation r' | view r), as (view, image, class, rotation)
    logp = np.stack(
        [np.log(_softmax(head.predict(feats[f"avg{r}"][ask].astype(np.float32), verbose=0)) + 1e-12) for r in range(4)]
    ).reshape(4, len(ask), n, 4)
    views = np.arange(4)
    joint = logp[views, :, :, views].sum(0)  # the right rotation in each view
    return {
        "rotations: joint, best class": -joint.max(1),
        "rotations: class summed over views": -np.logaddexp.reduce(logp, axis=3).sum(0).max(1),
        "rotations: rotation alone": -np.logaddexp.reduce(logp[views, :, :, views], axis=2).sum(0),
    }


def _whitened(x: np.ndarray, q: np.ndarray) -> dict[str, np.ndarray]:
    from sklearn.covariance import LedoitWolf
    from sklearn.decomposition import PCA

    pca = PCA(64, random_state=0).fit(x)
    scale = np.sqrt(pca.explained_variance_ + 0.1 * pca.explained_variance_.mean())
    white: Callable[[np.ndarray], np.ndarray] = lambda a: pca.transform(a) / scale  # noqa: E731
    lw = LedoitWolf().fit(x)
    root = np.linalg.cholesky(np.linalg.inv(lw.covariance_))
    return {
        "knn, pca-64 whitened": centred_knn(white(x), white(q)),
        "knn, ledoit-wolf whitened": centred_knn((x - lw.location_) @ root, (q - lw.location_) @ root),
        "mahalanobis, one ledoit-wolf gaussian": lw.mahalanobis(q),
    }


def _densities(x: np.ndarray, y: np.ndarray, q: np.ndarray) -> dict[str, np.ndarray]:
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture
    from sklearn.neighbors import LocalOutlierFactor
    from sklearn.svm import OneClassSVM

    pca = PCA(128, random_state=0).fit(x)
    xp, qp = pca.transform(x), pca.transform(q)
    lof = LocalOutlierFactor(n_neighbors=20, novelty=True, metric="cosine").fit(xp)
    gmm = [GaussianMixture(4, covariance_type="diag", random_state=0).fit(xp[y == c]) for c in np.unique(y)]
    unit: Callable[[np.ndarray], np.ndarray] = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    svm = OneClassSVM(gamma="scale", nu=0.1).fit(unit(xp))
    return {
        "local outlier factor (k=20)": -lof.score_samples(qp),
        "per-class gaussian mixtures": np.min([-g.score_samples(qp) for g in gmm], 0),
        "one-class svm": -svm.score_samples(unit(qp)),
    }


def _channel_scores(x: np.ndarray, y: np.ndarray, q: np.ndarray) -> dict[str, np.ndarray]:
    rx, rq = np.sqrt(x), np.sqrt(q)
    means = np.stack([rx[y == c].mean(0) for c in np.unique(y)])
    within = np.stack([rx[y == c].var(0) for c in np.unique(y)]).mean(0) + 1e-6
    w = (means.var(0) / within) ** 0.25
    high, spread = np.percentile(x, 99, axis=0), x.std(0) + 1e-6
    return {
        "knn, fisher-weighted channels (square root)": centred_knn(rx * w, rq * w),
        "channel exceedance over the 99th percentile": ((q - high) / spread).max(1),
    }


def _episodic_metric(x: np.ndarray, y: np.ndarray, q: np.ndarray, steps: int = 100, tau: float = 0.05) -> np.ndarray:
    """1-NN distance after a linear map trained to push a held-out known class away from the other classes."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x, q = np.sqrt(x).astype(np.float32), np.sqrt(q).astype(np.float32)
    mu = x.mean(0)
    xc = x - mu
    w = tf.Variable(tf.random.normal([x.shape[1], 128], stddev=x.shape[1] ** -0.5, seed=1))
    opt = tf.keras.optimizers.Adam(1e-3)
    embed: Callable[[Any], Any] = lambda a: tf.math.l2_normalize(tf.matmul(a, w), 1)  # noqa: E731
    for _ in range(steps):
        h = rng.choice(np.unique(y))
        others = rng.permutation(np.flatnonzero(y != h))
        held = rng.choice(np.flatnonzero(y == h), 64, replace=False)
        with tf.GradientTape() as tape:
            ref = embed(xc[others[64:]])
            known, novel = (
                -tau * tf.reduce_logsumexp(tf.matmul(embed(xc[i]), ref, transpose_b=True) / tau, 1)
                for i in (others[:64], held)
            )
            loss = tf.reduce_mean(tf.nn.softplus(10.0 * (known[:, None] - novel[None, :])))
        opt.apply_gradients([(tape.gradient(loss, w), w)])
    ex, eq = embed(xc).numpy(), embed(q - mu).numpy()
    return 1.0 - (eq @ ex.T).max(1)


def _subclass_knn(x: np.ndarray, y: np.ndarray, q: np.ndarray, per_class: int) -> np.ndarray:
    """1-NN on the hidden layer of a cross-entropy head trained on k-means clusters of each known class."""
    import keras
    from sklearn.cluster import KMeans

    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sub = np.zeros(len(y), np.int64)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        sub[idx] = c * per_class + KMeans(per_class, n_init=4, random_state=0).fit_predict(unit[idx])
    head = _head(x.astype(np.float32), sub, int(sub.max()) + 1, seed=0)
    hidden = keras.Model(head.inputs, head.layers[1].output)
    return centred_knn(hidden.predict(x.astype(np.float32), verbose=0), hidden.predict(q.astype(np.float32), verbose=0))


def _depth_scores(feats: dict[str, np.ndarray], train: np.ndarray, ask: np.ndarray, n_cal: int) -> dict:
    """1-NN per earlier depth and on colour; the z-scored sum over depths (z on the first ``n_cal`` rows)."""
    roots = {name: np.sqrt(feats[name]) for name in (*DEPTHS, "avg0", "hsv")}
    per_depth = {name: centred_knn(roots[name][train], roots[name][ask]) for name in (*DEPTHS, "avg0")}
    z = [(v - v[:n_cal].mean()) / v[:n_cal].std() for v in per_depth.values()]
    return {
        **{f"knn, {name.removesuffix('_expand_relu')} average pool (square root)": per_depth[name] for name in DEPTHS},
        "knn, five depths z-summed": np.sum(z, 0),
        "knn, hsv colour histogram": centred_knn(roots["hsv"][train], roots["hsv"][ask]),
    }


def _upper_bound(x: np.ndarray, is_held_out: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=2000))
    return cross_val_predict(probe, x, is_held_out, cv=5, method="predict_proba")[:, 1]


def _held_out(feats: dict[str, np.ndarray], labels: np.ndarray, role: np.ndarray, h: int) -> dict[str, float]:
    train = (labels != h) & (role == 0)
    negatives = np.flatnonzero((labels != h) & (role == 2))
    # Calibration rows first: they set the z-statistics of the sum over depths, then are dropped.
    calib = np.flatnonzero((labels != h) & (role == 1))
    ask = np.r_[calib, negatives, np.flatnonzero(labels == h)]
    y = np.searchsorted(np.unique(labels[train]), labels[train])
    avg = feats["avg0"]
    side_by_side: Callable[[np.ndarray], np.ndarray] = lambda idx: np.concatenate(  # noqa: E731
        [feats[f"avg{r}"][idx] for r in range(4)], 1
    )
    scores = {
        "knn, average pool (reference)": centred_knn(avg[train], avg[ask]),
        "knn, square root of average pool": centred_knn(np.sqrt(avg[train]), np.sqrt(avg[ask])),
        "knn, gem pool": centred_knn(feats["gem"][train], feats["gem"][ask]),
        "knn, max pool": centred_knn(feats["max"][train], feats["max"][ask]),
        "knn, four rotations side by side": centred_knn(side_by_side(train), side_by_side(ask)),
        **_rotation_scores(feats, y, train, ask),
        **_whitened(avg[train], avg[ask]),
        **_densities(avg[train], y, avg[ask]),
        **_channel_scores(avg[train], y, avg[ask]),
        "knn, episodic leave-one-class-out metric": _episodic_metric(avg[train], y, avg[ask]),
        **_depth_scores(feats, train, ask, len(calib)),
        **{f"knn on a sub-class head ({k} per class)": _subclass_knn(avg[train], y, avg[ask], k) for k in (3, 8)},
        # Over the same negatives and positives as before the calibration rows joined (they get a 0 and are dropped).
        "supervised upper bound (uses held-out labels)": np.r_[
            np.zeros(len(calib)), _upper_bound(avg[ask[len(calib) :]], (labels[ask[len(calib) :]] == h).astype(int))
        ],
    }
    c, n = len(calib), len(calib) + len(negatives)
    return {k: _auroc(v[c:n], v[n:]) for k, v in scores.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    payload = run_screen(_embed, _held_out, args.seed)
    cmd = f"python benchmarks/bench_unknown_descriptors.py --seed {args.seed}"
    print(f"wrote {write_result('unknown_descriptors', payload, cmd)}")


if __name__ == "__main__":
    main()
