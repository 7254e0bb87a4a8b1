"""Screens of five further ideas for the unknown answer, on the pretrained backbone alone (no training run).

Each flower_photos class is held out in turn, as in bench_unknown.py; every score here is computed on one
ImageNet MobileNetV2 pass (../shared's Keras-layout file *with* its 1000-class top, 225 px), so a screen
costs minutes, not five training runs. The reference row is the centred cosine 1-NN distance on the pooled
features, which bench_unknown's ``combined`` score builds on; a screen is worth a training run only where it
beats that row here.

- **ImageNet logits**: 1-NN in the 1000-class logit space instead of the pooled features, and the share of
  probability an image puts on the ImageNet classes the known training images are most often given.
- **Patch kNN** (PatchCore-like): ``block_13_expand_relu`` maps (15×15×576, averaged 2×2 to 7×7 patches);
  distance of each patch to the nearest training patch (PCA-128, a 20,000-patch bank), pooled per image by
  max, mean and the mean of the top quarter.
- **Leave-one-class-out heads** (ELOC, Vyas et al. 2018): for each known class, a head trained on the other
  known classes with the left-out class's images pushed to a uniform answer; score = max over heads of
  (max probability − entropy). Against the energy of one ordinary head, and each added to the kNN row.
- **Placeholders** (PROSER-like, Zhou et al. 2021): a head with one extra output, trained on mixes of two known
  classes' features as that output and with it as every image's runner-up; alone and added to the kNN row.
- **Supervised contrastive head** (SupCon, Khosla et al. 2020; kNN on it as Sun et al. 2022): the same
  Dense(512) head trained with a supervised contrastive loss (128-d projection, temperature 0.1, 40 epochs,
  dropout as the view noise) instead of cross-entropy; centred cosine 1-NN on its hidden layer, against
  the same on the cross-entropy head's hidden layer.

Split: per class, a seeded 20% of the known images is validation (the negatives), 10% of the rest is a
calibration slice that sets the z-statistics of the two-part sums (so no evaluated image sets them), and the
remaining training images are the reference set and the heads' training data. Positives: every image of
the held-out class.

    python benchmarks/bench_unknown_screens.py [--seed 0]

Result: results/unknown_screens.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FLOWERS, SHARED, table, write_result

SHARED_MOBILENET_TOP = SHARED / "weights" / "mobilenet_v2_imagenet_tv.weights.h5"
SIZE = 225
PATCH_LAYER = "block_13_expand_relu"


def _images() -> tuple[list[Path], np.ndarray, list[str]]:
    from floranet.data.scan import IMAGE_EXTENSIONS

    classes = sorted(p.name for p in FLOWERS.iterdir() if p.is_dir())
    files, labels = [], []
    for i, c in enumerate(classes):
        for f in sorted((FLOWERS / c).iterdir()):
            if f.suffix.lower() in IMAGE_EXTENSIONS:
                files.append(f)
                labels.append(i)
    return files, np.asarray(labels), classes


def _embed(files: list[Path]) -> dict[str, np.ndarray]:
    """Pooled features, ImageNet logits and 7×7 patch features of every image (floranet's decode path)."""
    import keras

    from floranet.data.decode import decode_and_resize

    net = keras.applications.MobileNetV2(
        weights=str(SHARED_MOBILENET_TOP), include_top=True, input_shape=(SIZE, SIZE, 3), classifier_activation=None
    )
    model = keras.Model(net.input, [net.layers[-2].output, net.output, net.get_layer(PATCH_LAYER).output])
    out: dict[str, list[np.ndarray]] = {"pooled": [], "logits": [], "patches": []}
    for s in range(0, len(files), 64):
        x = np.stack([decode_and_resize(f, (SIZE, SIZE)) for f in files[s : s + 64]])
        pooled, logits, maps = model.predict(keras.applications.mobilenet_v2.preprocess_input(x), verbose=0)
        n, h, w, c = maps.shape
        maps = maps[:, : h // 2 * 2, : w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c).mean((2, 4))
        out["pooled"].append(pooled)
        out["logits"].append(logits)
        out["patches"].append(maps.reshape(n, -1, c).astype(np.float32))
    return {k: np.concatenate(v) for k, v in out.items()}


def _subsets(labels: np.ndarray, seed: int) -> np.ndarray:
    """Per image: 0 training, 1 calibration, 2 validation (seeded, per class)."""
    rng = np.random.default_rng(seed)
    role = np.zeros(len(labels), np.int64)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = len(idx) // 5
        role[idx[:n_val]] = 2
        role[idx[n_val : n_val + (len(idx) - n_val) // 10]] = 1
    return role


def _centred(ref: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mu = ref.mean(0)
    return [(a - mu) / np.linalg.norm(a - mu, axis=1, keepdims=True) for a in (ref, *others)]


def centred_knn(ref: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Centred cosine distance to the nearest reference row."""
    r, q = _centred(ref, query)
    return 1.0 - (q @ r.T).max(1)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _known_mass(ref_logits: np.ndarray, query_logits: np.ndarray) -> np.ndarray:
    """Minus the probability a query puts on ImageNet classes, weighted by how often known images get them."""
    top = np.bincount(ref_logits.argmax(1), minlength=ref_logits.shape[1]) / len(ref_logits)
    return -(_softmax(query_logits) @ top)


def _patch_scores(ref: np.ndarray, query: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(seed)
    bank = ref.reshape(-1, ref.shape[2])
    bank = bank[rng.choice(len(bank), min(20000, len(bank)), replace=False)]
    pca = PCA(128, random_state=seed).fit(bank)
    unit = lambda a: (lambda z: z / np.linalg.norm(z, axis=1, keepdims=True))(pca.transform(a))  # noqa: E731
    b = unit(bank)
    q = unit(query.reshape(-1, query.shape[2]))
    near = np.concatenate([(q[s : s + 8192] @ b.T).max(1) for s in range(0, len(q), 8192)])
    dist = (1.0 - near).reshape(query.shape[0], query.shape[1])
    quarter = max(1, dist.shape[1] // 4)
    return {"max": dist.max(1), "mean": dist.mean(1), "top 25%": np.sort(dist, 1)[:, -quarter:].mean(1)}


def _head(x: np.ndarray, y: np.ndarray, n: int, seed: int, outliers: np.ndarray | None = None) -> Any:
    """Dropout 0.3 → Dense(512, relu) → Dense(n) logits, 15 epochs of Adam 1e-3; outliers (if any) are pushed
    towards a uniform answer (cross-entropy to uniform, weight 0.5)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    model = keras.Sequential(
        [keras.Input((x.shape[1],)), keras.layers.Dropout(0.3), keras.layers.Dense(512, "relu"), keras.layers.Dense(n)]
    )
    opt = keras.optimizers.Adam(1e-3)

    @tf.function
    def step(xb: Any, yb: Any, ob: Any) -> None:
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(yb, model(xb, training=True)))
            if outliers is not None:
                loss += 0.5 * tf.reduce_mean(-tf.reduce_mean(tf.nn.log_softmax(model(ob, training=True)), 1))
        opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables, strict=True))

    pool = outliers if outliers is not None else x[:1]
    for _ in range(15):
        order = rng.permutation(len(y))
        for s in range(0, len(y), 64):
            b = order[s : s + 64]
            step(x[b], y[b], pool[rng.integers(0, len(pool), 64)])
    return model


def _eloc(x: np.ndarray, y: np.ndarray, query: np.ndarray, seed: int) -> np.ndarray:
    """Leave-one-class-out heads: minus the best (max probability − entropy) over the heads."""
    best = np.full(len(query), -np.inf)
    for left_out in np.unique(y):
        keep = y != left_out
        inside = np.searchsorted(np.unique(y[keep]), y[keep])
        head = _head(x[keep], inside, int(inside.max()) + 1, seed, outliers=x[~keep])
        p = _softmax(head.predict(query, verbose=0))
        best = np.maximum(best, p.max(1) + (p * np.log(p + 1e-12)).sum(1))
    return -best


def _placeholders(x: np.ndarray, y: np.ndarray, query: np.ndarray, seed: int) -> np.ndarray:
    """PROSER-like head: one extra "unknown" output, trained on mixes of two known classes' features (data
    placeholders) and as every image's runner-up (classifier placeholder); score = its logit − the best known."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    n = int(y.max()) + 1
    layers = [keras.layers.Dropout(0.3), keras.layers.Dense(512, "relu"), keras.layers.Dense(n + 1)]
    model = keras.Sequential([keras.Input((x.shape[1],)), *layers])
    opt = keras.optimizers.Adam(1e-3)
    xent = tf.nn.sparse_softmax_cross_entropy_with_logits

    @tf.function
    def step(xb: Any, yb: Any, mixed: Any) -> None:
        with tf.GradientTape() as tape:
            z = model(xb, training=True)
            runner_up = z - 1e9 * tf.one_hot(yb, n + 1)  # the true class masked: the extra output should come next
            extra = tf.fill(tf.shape(yb), n)
            loss = tf.reduce_mean(xent(yb, z)) + tf.reduce_mean(xent(extra, runner_up))
            loss += tf.reduce_mean(xent(tf.fill([tf.shape(mixed)[0]], n), model(mixed, training=True)))
        opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables, strict=True))

    for _ in range(15):
        order = rng.permutation(len(y))
        for s in range(0, len(y), 64):
            b = order[s : s + 64]
            partner = rng.permutation(b)
            lam = rng.uniform(0.3, 0.7, (len(b), 1)).astype(np.float32)
            mixed = (lam * x[b] + (1 - lam) * x[partner])[y[b] != y[partner]]
            step(x[b], y[b].astype(np.int32), mixed if len(mixed) else x[b][:1])
    z = model.predict(query, verbose=0)
    return z[:, n] - z[:, :n].max(1)


def supcon_head(x: np.ndarray, y: np.ndarray, seed: int, temperature: float = 0.1) -> Any:
    """Dropout 0.3 → Dense(512, relu) (returned) → Dense(128) projection, trained with the supervised
    contrastive loss: each image's positives are the batch's other images of its class, in two dropout views."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    inputs = keras.Input((x.shape[1],))
    hidden = keras.layers.Dense(512, "relu")(keras.layers.Dropout(0.3)(inputs))
    model = keras.Model(inputs, [hidden, keras.layers.Dense(128)(hidden)])
    opt = keras.optimizers.Adam(1e-3)

    @tf.function
    def step(xb: Any, yb: Any) -> None:
        with tf.GradientTape() as tape:
            z = tf.math.l2_normalize(tf.concat([model(xb, training=True)[1], model(xb, training=True)[1]], 0), 1)
            yy = tf.concat([yb, yb], 0)
            off_diagonal = 1.0 - tf.eye(tf.shape(z)[0])
            sim = (z @ tf.transpose(z)) / temperature - 1e9 * (1.0 - off_diagonal)
            positive = tf.cast(tf.equal(yy[:, None], yy[None, :]), tf.float32) * off_diagonal
            log_p = sim - tf.reduce_logsumexp(sim, 1, keepdims=True)
            loss = -tf.reduce_mean(tf.reduce_sum(positive * log_p, 1) / tf.reduce_sum(positive, 1))
        opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables, strict=True))

    for _ in range(40):
        order = rng.permutation(len(y))
        for s in range(0, len(y), 256):
            b = order[s : s + 256]
            step(x[b], y[b].astype(np.int32))
    return keras.Model(inputs, hidden)


def _hidden_knn(hidden: Any, ref: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Centred cosine 1-NN on a head's Dense(512) layer (``hidden`` maps features to it)."""
    return centred_knn(hidden.predict(ref, verbose=0), hidden.predict(query, verbose=0))


def _ce_hidden(x: np.ndarray, y: np.ndarray, seed: int) -> Any:
    """The cross-entropy head of ``_head`` cut at its Dense(512) layer."""
    import keras

    head = _head(x, y, int(y.max()) + 1, seed)
    return keras.Model(head.inputs, head.layers[1].output)


def _energy(x: np.ndarray, y: np.ndarray, query: np.ndarray, seed: int) -> np.ndarray:
    z = _head(x, y, int(y.max()) + 1, seed).predict(query, verbose=0)
    m = z.max(1)
    return -(m + np.log(np.exp(z - m[:, None]).sum(1)))


def _auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    labels = np.r_[np.zeros(len(negatives)), np.ones(len(positives))]
    return float(roc_auc_score(labels, np.r_[negatives, positives]))


def _held_out(feats: dict[str, np.ndarray], labels: np.ndarray, role: np.ndarray, h: int, seed: int) -> dict:
    """Every candidate's AUROC with class ``h`` held out."""
    train, calib = (labels != h) & (role == 0), (labels != h) & (role == 1)
    # Calibration rows first (they set the z-statistics of the sums), then known validation, then the held-out class.
    query = np.r_[np.flatnonzero((labels != h) & (role == 2)), np.flatnonzero(labels == h)]
    n_neg = int(((labels != h) & (role == 2)).sum())
    ask = np.r_[np.flatnonzero(calib), query]
    n_cal = int(calib.sum())
    pooled, logits = feats["pooled"], feats["logits"]
    y = np.searchsorted(np.unique(labels[train]), labels[train])
    scores = {
        "knn pooled (reference)": centred_knn(pooled[train], pooled[ask]),
        "knn imagenet logits": centred_knn(logits[train], logits[ask]),
        "imagenet known mass": _known_mass(logits[train], logits[ask]),
        **{f"patch knn {k}": v for k, v in _patch_scores(feats["patches"][train], feats["patches"][ask], seed).items()},
        "energy (one head)": _energy(pooled[train], y, pooled[ask], seed),
        "eloc": _eloc(pooled[train], y, pooled[ask], seed),
        "placeholders": _placeholders(pooled[train], y, pooled[ask], seed),
        "knn on cross-entropy head": _hidden_knn(_ce_hidden(pooled[train], y, seed), pooled[train], pooled[ask]),
        "knn on supcon head": _hidden_knn(supcon_head(pooled[train], y, seed), pooled[train], pooled[ask]),
    }
    z = {k: (v - v[:n_cal].mean()) / v[:n_cal].std() for k, v in scores.items()}
    scores["knn + energy"] = z["knn pooled (reference)"] + z["energy (one head)"]
    scores["knn + eloc"] = z["knn pooled (reference)"] + z["eloc"]
    scores["knn + placeholders"] = z["knn pooled (reference)"] + z["placeholders"]
    return {k: _auroc(v[n_cal : n_cal + n_neg], v[n_cal + n_neg :]) for k, v in scores.items()}


HeldOut = Callable[[dict[str, np.ndarray], np.ndarray, np.ndarray, int], dict[str, float]]


def run_screen(embed: Callable[[list[Path]], dict[str, np.ndarray]], held_out: HeldOut, seed: int) -> dict[str, Any]:
    """One screen: ``embed`` every flower photo once, hold each class out in turn (``held_out(features, labels,
    roles, class)`` gives each method's AUROC), print the table; the result's payload (rows best first)."""
    if not FLOWERS.is_dir() or not SHARED_MOBILENET_TOP.is_file():
        sys.exit(f"needs {FLOWERS} and {SHARED_MOBILENET_TOP} (../shared)")
    files, labels, classes = _images()
    t = time.perf_counter()
    feats = embed(files)
    embed_seconds = time.perf_counter() - t
    role = _subsets(labels, seed)
    per_class = {}
    for h, name in enumerate(classes):
        per_class[name] = held_out(feats, labels, role, h)
        print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in per_class[name].items()), flush=True)
    rows = [
        {"method": m, "mean_auroc": round(float(np.mean([per_class[c][m] for c in classes])), 4)}
        | {c: round(per_class[c][m], 3) for c in classes}
        for m in per_class[classes[0]]
    ]
    rows.sort(key=lambda r: -r["mean_auroc"])
    print(table(rows, ["method", "mean_auroc", *classes]))
    return {
        "rows": rows,
        "images": len(files),
        "image_size": SIZE,
        "seed": seed,
        "embed_seconds": round(embed_seconds, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    payload = run_screen(_embed, lambda f, y, r, h: _held_out(f, y, r, h, args.seed), args.seed)
    path = write_result("unknown_screens", payload, f"python benchmarks/bench_unknown_screens.py --seed {args.seed}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
