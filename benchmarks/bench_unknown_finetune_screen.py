"""Screen: does fine-tuning the backbone with a supervised contrastive loss make a better unknown answer?

bench_unknown_screens.py found a supervised contrastive head (SupCon, Khosla et al. 2020) the best idea on
frozen features; this screen lets the loss reach the backbone. Each flower_photos class is held out in turn
(as in bench_unknown.py); the last stage of floranet's MobileNetV2 (``block_13_`` up, the layers the
``recommended`` preset fine-tunes, with BatchNorm frozen as floranet does) trains on the cached outputs of the
frozen layers below it, for several augmented views of every image (floranet's Augment: flip, rotation,
zoom, contrast), computed once. Two recipes from the same start, the same views and the same epochs:

- **cross-entropy** (floranet's recipe): the Dense(512) head trained on the frozen features, then the last
  stage and the head fine-tuned with cross-entropy (label smoothing 0.1), one view per image per epoch;
- **supcon**: a projection (Dense(512, relu) → Dense(128)) trained on the frozen features with the supervised
  contrastive loss, then the last stage and the projection fine-tuned with it, two views per image per step;
- **supcon + cross-entropy**: both losses summed, a classification head beside the projection.

Scores: centred cosine 1-NN on the fine-tuned backbone's pooled features (and on the Dense(512) layer), the
cross-entropy run's energy, and ``combined``-like sums z-scored on a calibration slice. Split as in
bench_unknown_screens.py (seeded: 20% of known images validation = the negatives, 10% of the rest calibration).

    python benchmarks/bench_unknown_finetune_screen.py [--classes roses,...] [--epochs 6] [--views 4]

Result: results/unknown_finetune_screen.json.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_unknown_screens import _auroc, _images, _subsets, centred_knn
from common import FLOWERS, table, write_result

SIZE = 225
CUT = "block_13_expand"
BATCH = 64


def _split_backbone() -> tuple[Any, Any]:
    """floranet's ImageNet MobileNetV2 cut before ``CUT``: (pixels → cut map, cut map → pooled features)."""
    import keras

    from floranet.models import backbones, classifier

    spec = backbones.get("mobilenet_v2")
    base = spec.build(input_shape=(SIZE, SIZE, 3), weights="imagenet")
    cut = base.get_layer(CUT).input
    below, above = keras.Model(base.inputs, cut), keras.Model(cut, base.outputs[0])
    image = keras.Input((SIZE, SIZE, 3))
    x = image
    for layer in classifier.preprocessing_layers(spec.preprocessing):
        x = layer(x)
    prefix = keras.Model(image, below(x, training=False))
    for layer in above.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    return prefix, above


def _views(prefix: Any, files: list[Path], views: int, seed: int) -> np.ndarray:
    """float16 ``[views + 1, N, h, w, c]``: the cut's output for each image as it is (view 0) and ``views``
    augmented copies."""
    import tensorflow as tf

    from floranet.data.augment import Augment
    from floranet.data.decode import decode_and_resize

    aug = Augment()
    out = None
    for s in range(0, len(files), 64):
        x = tf.constant(np.stack([decode_and_resize(f, (SIZE, SIZE)) for f in files[s : s + 64]]), tf.float32)
        for v in range(views + 1):
            xv = x if v == 0 else aug.apply(x, tf.constant([seed, s * 16 + v], tf.int64))
            maps = prefix.predict_on_batch(xv)
            if out is None:
                out = np.zeros((views + 1, len(files), *maps.shape[1:]), np.float16)
            out[v, s : s + len(maps)] = maps
        print(f"  views of {min(s + 64, len(files))}/{len(files)} images", end="\r", flush=True)
    print()
    assert out is not None
    return out


def _supcon_loss(z: Any, y: Any, temperature: float = 0.1) -> Any:
    import tensorflow as tf

    z = tf.math.l2_normalize(z, 1)
    off = 1.0 - tf.eye(tf.shape(z)[0])
    sim = (z @ tf.transpose(z)) / temperature - 1e9 * (1.0 - off)
    pos = tf.cast(tf.equal(y[:, None], y[None, :]), tf.float32) * off
    log_p = sim - tf.reduce_logsumexp(sim, 1, keepdims=True)
    return -tf.reduce_mean(tf.reduce_sum(pos * log_p, 1) / tf.maximum(tf.reduce_sum(pos, 1), 1.0))


def _heads(n: int, seed: int) -> Any:
    """Pooled features → [Dense(512) activations, class logits, 128-d projection]; each recipe's loss reads the
    outputs it trains (the others get no gradient)."""
    import keras

    keras.utils.set_random_seed(seed)
    f = keras.Input((1280,))
    hidden = keras.layers.Dense(512, "relu")(keras.layers.Dropout(0.3)(f))
    logits = keras.layers.Dense(n)(hidden)
    projection = keras.layers.Dense(128)(hidden)
    return keras.Model(f, [hidden, logits, projection])


def _loss_fn(recipe: str, n: int) -> Any:
    import tensorflow as tf

    def loss(outs: list[Any], y: Any) -> Any:
        _, logits, proj = outs
        y2 = tf.concat([y, y], 0)
        ce = tf.reduce_mean(
            tf.keras.losses.categorical_crossentropy(tf.one_hot(y2, n), logits, from_logits=True, label_smoothing=0.1)
        )
        if recipe == "cross-entropy":
            return ce
        sc = _supcon_loss(proj, y2)
        return sc if recipe == "supcon" else sc + ce

    return loss


def _train(recipe: str, maps: np.ndarray, above: Any, idx: np.ndarray, y: np.ndarray, epochs: int, seed: int) -> Any:
    """Head warm-up on the frozen features (20 epochs, 1e-3), then the last stage and head at 1e-4 (cosine)."""
    import keras
    import tensorflow as tf

    n = int(y.max()) + 1
    heads = _heads(n, seed)
    loss = _loss_fn(recipe, n)
    rng = np.random.default_rng(seed)
    pooled = above.predict(maps[0, idx].astype(np.float32), batch_size=128, verbose=0)

    warm = keras.optimizers.Adam(1e-3)

    @tf.function
    def warm_step(f: Any, yb: Any) -> None:
        with tf.GradientTape() as tape:
            outs = [tf.concat([heads(f, training=True)[i], heads(f, training=True)[i]], 0) for i in range(3)]
            value = loss(outs, yb)
        variables = heads.trainable_variables
        warm.apply_gradients(zip(tape.gradient(value, variables), variables, strict=True))

    for _ in range(20):
        order = rng.permutation(len(idx))
        for s in range(0, len(idx), 256):
            b = order[s : s + 256]
            warm_step(pooled[b], tf.constant(y[b], tf.int32))

    steps = epochs * math.ceil(len(idx) / BATCH)
    schedule = keras.optimizers.schedules.CosineDecay(1e-4, steps)
    opt = keras.optimizers.Adam(schedule)
    weights = above.trainable_variables + heads.trainable_variables

    @tf.function
    def step(a: Any, b: Any, yb: Any) -> None:
        with tf.GradientTape() as tape:
            f = above(tf.concat([a, b], 0), training=False)
            value = loss(heads(f, training=True), yb)
        opt.apply_gradients(zip(tape.gradient(value, weights), weights, strict=True))

    views = maps.shape[0]
    for e in range(epochs):
        t = time.perf_counter()
        order = rng.permutation(len(idx))
        for s in range(0, len(idx), BATCH):
            b = order[s : s + BATCH]
            if recipe == "cross-entropy":  # one view per image, the batch's halves as two images each
                v1 = rng.integers(1, views, len(b))
                v2 = rng.integers(1, views, len(b))
            else:  # two different views of each image
                v1 = rng.integers(0, views, len(b))
                v2 = (v1 + rng.integers(1, views, len(b))) % views
            a = maps[v1, idx[b]].astype(np.float32)
            c = maps[v2, idx[b]].astype(np.float32)
            step(tf.constant(a), tf.constant(c), tf.constant(y[b], tf.int32))
        print(f"    {recipe} epoch {e + 1}/{epochs}: {time.perf_counter() - t:.0f} s", flush=True)
    return heads


def _scores(recipe: str, maps: np.ndarray, above: Any, heads: Any, train: np.ndarray, ask: np.ndarray) -> dict:
    def embed(i: np.ndarray) -> tuple[np.ndarray, ...]:
        pooled = above.predict(maps[0, i].astype(np.float32), batch_size=128, verbose=0)
        hidden, logits, _ = heads.predict(pooled, batch_size=512, verbose=0)
        return pooled, hidden, logits

    (p_ref, h_ref, _), (p, h, z) = embed(train), embed(ask)
    m = z.max(1)
    out = {f"{recipe}: knn pooled": centred_knn(p_ref, p), f"{recipe}: knn dense512": centred_knn(h_ref, h)}
    if recipe != "supcon":
        out[f"{recipe}: energy"] = -(m + np.log(np.exp(z - m[:, None]).sum(1)))
    return out


def held_out(maps: np.ndarray, labels: np.ndarray, role: np.ndarray, h: int, recipes: list[str], args: Any) -> dict:
    import keras

    train = np.flatnonzero((labels != h) & (role == 0))
    calib = np.flatnonzero((labels != h) & (role == 1))
    neg = np.flatnonzero((labels != h) & (role == 2))
    ask = np.r_[calib, neg, np.flatnonzero(labels == h)]
    y = np.searchsorted(np.unique(labels[train]), labels[train])
    scores: dict[str, np.ndarray] = {}
    seconds = {}
    for recipe in recipes:
        keras.backend.clear_session()
        _, above = _split_backbone()
        t = time.perf_counter()
        heads = _train(recipe, maps, above, train, y, args.epochs, args.seed)
        seconds[recipe] = round(time.perf_counter() - t, 1)
        scores |= _scores(recipe, maps, above, heads, train, ask)
    n_cal, n_neg = len(calib), len(neg)
    z = {k: (v - v[:n_cal].mean()) / v[:n_cal].std() for k, v in scores.items()}
    if "cross-entropy" in recipes:
        parts = ["cross-entropy: knn dense512", "cross-entropy: knn pooled", "cross-entropy: energy"]
        scores["cross-entropy: combined"] = sum(z[k] for k in parts)
        for r in recipes[1:]:
            scores[f"combined + {r} knn pooled"] = scores["cross-entropy: combined"] / 3 + z[f"{r}: knn pooled"]
    aurocs = {k: _auroc(v[n_cal : n_cal + n_neg], v[n_cal + n_neg :]) for k, v in scores.items()}
    return {"auroc": aurocs, "train_seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--classes", default="", help="held-out classes, comma-separated (default: all)")
    ap.add_argument("--cache", default="", help="folder to keep the views in between runs")
    ap.add_argument("--recipes", default="cross-entropy,supcon,supcon + cross-entropy")
    args = ap.parse_args()
    if not FLOWERS.is_dir():
        sys.exit(f"needs {FLOWERS} (../shared)")
    files, labels, classes = _images()
    wanted = args.classes.split(",") if args.classes else classes
    recipes = args.recipes.split(",")
    prefix, _ = _split_backbone()
    t = time.perf_counter()
    cached = Path(args.cache) / f"views-{args.views}-{args.seed}.npy" if args.cache else None
    from_cache = cached is not None and cached.is_file()
    if from_cache:
        maps = np.load(cached, mmap_mode="r")
    else:
        maps = _views(prefix, files, args.views, args.seed)
        if cached is not None:
            np.save(cached, maps)
    view_seconds = None if from_cache else round(time.perf_counter() - t, 1)  # None: read from --cache
    role = _subsets(labels, args.seed)
    per_class = {}
    for name in wanted:
        per_class[name] = held_out(maps, labels, role, classes.index(name), recipes, args)
        print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in per_class[name]["auroc"].items()), flush=True)
    methods = list(per_class[wanted[0]]["auroc"])
    rows = [
        {"method": m, "mean_auroc": round(float(np.mean([per_class[c]["auroc"][m] for c in wanted])), 4)}
        | {c: round(per_class[c]["auroc"][m], 3) for c in wanted}
        for m in methods
    ]
    rows.sort(key=lambda r: -r["mean_auroc"])
    print(table(rows, ["method", "mean_auroc", *wanted]))
    payload = {"rows": rows, "per_class": per_class, "images": len(files), "image_size": SIZE, "seed": args.seed}
    payload |= {"epochs": args.epochs, "views": args.views, "view_seconds": view_seconds}
    command = "python benchmarks/bench_unknown_finetune_screen.py " + " ".join(sys.argv[1:])
    print(f"wrote {write_result('unknown_finetune_screen', payload, command.strip())}")


if __name__ == "__main__":
    main()
