"""The "unknown" answer on flower_photos: each class held out in turn, plus a handful of non-flower photos.

For each of the 5 classes, ``floranet train`` (the real training path, in this process) runs on the other 4 classes
(MobileNetV2 with the ImageNet weights bundled in floranet, 225 px, ``--preset tutorial``: stage 1 on cached
features only, so the final backbone is the pretrained one; every image's features are computed once into a cache
that scoring the candidates reads, while each run's training extracts its own, and its ``train_seconds`` include
that; ``--preset recommended`` fine-tunes as ``floranet train`` does by default, and the candidates are then scored
on the fine-tuned model's embeddings, one pass over the images per run). Then the held-out class's images and the
run's known validation images go
through ``floranet.load(run).predict_files`` (the predictor's own two-output call and the run's
``ood.json``): AUROC of the score (held-out = positive) and the false-"known" rate at the run's threshold
(chosen on validation to keep 95% of known images). The same images' cached embeddings then score every
candidate (kNN at several k, Mahalanobis, class mean, max calibrated probability, energy, max logit, ``combined``
without its class-mean part as it was before, published post-hoc scores, and kNN on a supervised contrastive
head, bench_unknown_screens.py's best screen).

A sixth run on all 5 classes answers non-flower photos that ship with installed packages (matplotlib's
grace_hopper.jpg, public domain; scikit-learn's china.jpg, CC BY 2.0; with ``floranet[bench]``, 15 of
scikit-image's sample photos: a cat, an astronaut, a motorcycle, coffee, a rocket, a retina, the moon, ...), crops
of them and generated images; floranet's own candidates (not the published ones) then score them on that run's
embeddings too.

    python benchmarks/bench_unknown.py [--preset tutorial|recommended] [--set FIELD=VALUE ...] [--no-non-flowers]

Results: results/unknown.json (tutorial), results/unknown_recommended.json (recommended); a run with
``--set`` (a training setting changed, e.g. ``--set label_smoothing=0``) writes its own file named after it.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FLOWERS, MOBILENET_NOTOP, result_name, table, write_result

SETTINGS: dict[str, Any] = {"backbone": "mobilenet_v2", "image_size": 225, "preset": "tutorial"}
# What --set may not change: the benchmark passes these itself.
FIXED = {
    "weights": "the bundled ImageNet weights",
    "data_dir": "a copy of flower_photos without the held-out class",
    "out": "a folder of its own per run",
    "preset": "use --preset",
}


def _link_classes(data: Path, dst: Path, classes: list[str]) -> None:
    for c in classes:
        (dst / c).mkdir(parents=True)
        for f in sorted((data / c).iterdir()):
            (dst / c / f.name).symlink_to(f.resolve())


def _train(data_dir: Path, out: Path, cache: Path) -> tuple[Any, float]:
    import keras

    from floranet import config
    from floranet.workflows import train

    keras.backend.clear_session()
    gc.collect()
    cfg = config.resolve(data_dir=str(data_dir), out=str(out), weights=str(MOBILENET_NOTOP), audit=False, **SETTINGS)
    t = time.perf_counter()
    result = train(cfg, progress=False, say=print)
    seconds = time.perf_counter() - t
    # Every image's stage-1 features (the held-out class too): scoring the candidates then reads no image
    # when the final backbone is stage 1's. A new run refuses a non-empty folder, so they join after training.
    shutil.copytree(cache / "features", out / "features", dirs_exist_ok=True)
    return result, seconds


def _scores(run: Path, files: list[str]) -> np.ndarray:
    from floranet.inference import load

    out = load(run).predict_files(files, with_unknown=True)
    assert not out.errors, out.errors
    return out.outputs[:, -1]


def _embeddings(run_dir: Path, model: Any, rows: list[Any], names: list[str], data: Path | None = None) -> Any:
    """``rows``' embeddings by the run's final model (``data``: the folder their paths are relative to, when it
    is not the run's)."""
    from floranet.evaluation.ood import embed
    from floranet.rundir import RunDir

    run = RunDir(run_dir)
    config = run.config() if data is None else run.config(data_dir=str(data))
    return embed(run, model, config, rows, names, say=lambda m: None)


def held_out(data: Path, work: Path, cache: Path, held: str, classes: list[str]) -> dict[str, Any]:
    from floranet.data.split import SplitRow
    from floranet.evaluation.ood import compare, head_weights
    from floranet.inference import unknown as unknown_lib
    from floranet.rundir import RunDir

    known_classes = [c for c in classes if c != held]
    data_dir = work / f"data-without-{held}"
    _link_classes(data, data_dir, known_classes)
    result, seconds = _train(data_dir, work / f"run-without-{held}", cache)
    run = RunDir(result.run_dir)
    meta = run.read_json(RunDir.OOD)
    split = run.split(known_classes)
    val_files = [str(data_dir / r.path) for r in split.validation()]
    held_rows = [SplitRow(f"{held}/{f.name}", held, "validation", _sha(f)) for f in sorted((data / held).iterdir())]
    known_s = _scores(run.path, val_files)
    other_s = _scores(run.path, [str(data / r.path) for r in held_rows])
    row = {
        "held_out": held,
        "auroc": round(_auroc(known_s, other_s), 4),
        "false_known_at_95": round(float(np.mean(other_s <= meta["threshold"])), 4),
        "known_kept": round(float(np.mean(known_s <= meta["threshold"])), 4),
        "val_accuracy": round(result.metrics["accuracy"], 4),
        "train_seconds": round(seconds, 1),
        "known_images": len(known_s),
        "held_out_images": len(other_s),
    }
    # Which epoch each stage kept (0: stage 2 never improved on what stage 1 left, which is kept).
    stages = run.read_json(RunDir.STATE).get("stages", {})
    row["kept_epochs"] = {k: RunDir.best_epoch(v.get("best_weights")) for k, v in stages.items()}
    # Every candidate on the same images' embeddings (cached when the final backbone is stage 1's).
    model = result.model
    train_e = _embeddings(run.path, model, split.train(), known_classes)
    known_e = _embeddings(run.path, model, split.validation(), known_classes)
    other_e = _embeddings(run.path, model, held_rows, [*known_classes, held], data)
    methods = {}
    candidates = compare(
        model, train_e, known_e, other_e, num_classes=len(known_classes), temperature=run.temperature()
    )
    candidates[COMBINED_BEFORE] = combined_before(model, train_e, known_e, other_e, len(known_classes))
    candidates.update(
        literature_scores(head_weights(model), train_e.features, known_e.features, other_e.features, train_e.labels)
    )
    candidates.update(supcon_candidates(train_e, known_e, other_e, candidates["combined (k=1)"]))
    for name, (k, o) in candidates.items():
        threshold = unknown_lib.threshold_for(k, 0.95)  # the rule unknown.fit uses
        methods[name] = {
            "auroc": _auroc(k, o),
            "false_known_at_95": float(np.mean(o <= threshold)),
        }
    row["methods"] = methods
    return row


# floranet's default score before class_mean joined it (up to commit 8bb2dda): kept as a candidate, so that every
# run measures what that change did on the same embeddings.
COMBINED_BEFORE = "combined without class_mean (k=1)"


def combined_before(model: Any, train: Any, known: Any, other: Any, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``combined`` of its first three parts (knn_head, knn, energy), z-scored on the known images as training
    does: ``(scores of known images, scores of other images)``."""
    from floranet.evaluation.ood import head_weights
    from floranet.inference import unknown as unknown_lib

    fitted = unknown_lib.fit(
        "combined", train.features, train.labels, known.features, known.probs, num_classes=num_classes,
        head=head_weights(model),
    )  # fmt: skip
    stats = {k: v for k, v in fitted.stats.items() if k not in ("means", "z_mean", "z_std")}
    stats.update(unknown_lib.z_scoring(stats, known.features, unknown_lib.DEFAULT_K))
    k, o = (unknown_lib.score("combined", stats, e.features, e.probs) for e in (known, other))
    return k, o


SUPCON = "knn on a supcon head"


def supcon_candidates(
    train: Any, known: Any, other: Any, combined: tuple[np.ndarray, np.ndarray]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The best screen of bench_unknown_screens.py on the run's own embeddings: centred cosine 1-NN on the hidden
    layer of a supervised contrastive head trained on the training images' features; alone, and averaged with
    ``combined`` (each z-scored on the known images, as training z-scores its parts). For comparison only."""
    from bench_unknown_screens import centred_knn, supcon_head

    hidden = supcon_head(train.features, np.asarray(train.labels), seed=0)
    reference = hidden.predict(train.features, verbose=0)
    pair = tuple(centred_knn(reference, hidden.predict(e.features, verbose=0)) for e in (known, other))

    def z(scores: tuple[np.ndarray, ...]) -> list[np.ndarray]:
        return [(a - scores[0].mean()) / scores[0].std() for a in scores]

    (zc_known, zc_other), (zs_known, zs_other) = z(combined), z(pair)
    return {SUPCON: (pair[0], pair[1]), f"combined + {SUPCON}": ((zc_known + zs_known) / 2, (zc_other + zs_other) / 2)}


def literature_scores(
    head: list[np.ndarray], train: np.ndarray, known: np.ndarray, other: np.ndarray, train_labels: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """More published post-hoc scores on the same embeddings, for comparison only (floranet does not offer them):
    ``{name: (scores of known images, scores of other images)}``, higher = more unknown. All read the head
    (``[hidden kernel, hidden bias, output kernel, output bias]``; none for a head without a hidden layer) and the
    pooled features."""
    from floranet.inference import unknown as unknown_lib  # the head's math, as floranet's own scores use it

    stats = unknown_lib.head_stats(head)
    if "hidden_kernel" not in stats:
        return {}
    w2 = np.asarray(stats["output_kernel"], np.float64)
    train, known, other = (np.asarray(a, np.float64) for a in (train, known, other))

    def out(h: np.ndarray) -> np.ndarray:  # logits of hidden activations
        return h @ w2 + stats["output_bias"]

    def energy(h: np.ndarray) -> np.ndarray:
        return -np.logaddexp.reduce(out(h), axis=1)

    h_train = unknown_lib.penultimate(stats, train)
    react_clip = float(np.percentile(h_train, 95))

    def ash_s(h: np.ndarray, percentile: float = 65) -> np.ndarray:  # keep the top activations, rescale
        kept = np.where(h >= np.percentile(h, percentile, axis=1, keepdims=True), h, 0.0)
        return kept * np.exp(h.sum(1, keepdims=True) / np.maximum(kept.sum(1, keepdims=True), 1e-9))

    origin = -np.linalg.pinv(w2.T) @ stats["output_bias"]  # ViM: the point where every logit is 0
    _, vectors = np.linalg.eigh(np.cov((h_train - origin).T))
    null = vectors[:, :-64]  # outside the 64 principal directions
    alpha = out(h_train).max(1).mean() / np.linalg.norm((h_train - origin) @ null, axis=1).mean()
    bank = unknown_lib.normalize(h_train) * -energy(h_train)[:, None]

    def scores(z: np.ndarray) -> dict[str, np.ndarray]:
        h = unknown_lib.penultimate(stats, z)
        logit = out(h)
        guide = np.sort(unknown_lib.normalize(h) @ bank.T, axis=1)[:, -10:].mean(1)
        top = logit.argmax(1)
        gaps = logit[np.arange(len(logit)), top][:, None] - logit
        spans = np.linalg.norm(w2[:, top].T[:, None, :] - w2.T[None], axis=2)
        boundary = np.nanmean(np.where(spans > 0, gaps / np.maximum(spans, 1e-9), np.nan), axis=1)
        p = np.exp(logit - np.logaddexp.reduce(logit, axis=1, keepdims=True))
        return {
            "react energy (Sun 2021, p95)": energy(np.minimum(h, react_clip)),
            "ash-s energy (Djurisic 2023, p65)": energy(ash_s(h)),
            "vim (Wang 2022, D=64)": alpha * np.linalg.norm((h - origin) @ null, axis=1) + energy(h),
            "nnguide (Park 2023, k=10)": guide * energy(h),
            "fdbd (Liu 2024)": -boundary / np.linalg.norm(h - h_train.mean(0), axis=1),
            "gen (Liu 2023, gamma 0.1)": (p**0.1 * (1 - p) ** 0.1).sum(1),
        }

    k, o = scores(known), scores(other)
    out_scores = {name: (k[name], o[name]) for name in k}
    out_scores["relative mahalanobis (Ren 2021)"] = relative_mahalanobis(train, train_labels, known, other)
    return out_scores


def relative_mahalanobis(
    train: np.ndarray, labels: np.ndarray, known: np.ndarray, other: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Ren et al. 2021 ("A simple fix to Mahalanobis distance for improving near-OOD detection") on the pooled
    features: the smallest class Mahalanobis distance (one shared covariance) minus the distance under one
    Gaussian of all training features, both Ledoit-Wolf shrunk (1,280 dimensions, ~2,000 images)."""
    from sklearn.covariance import LedoitWolf

    means = np.stack([train[labels == c].mean(0) for c in np.unique(labels)])
    shared = LedoitWolf().fit(train - means[np.searchsorted(np.unique(labels), labels)]).precision_
    background, centre = LedoitWolf().fit(train).precision_, train.mean(0)

    def distance(z: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
        d = z - mean
        return np.einsum("ij,jk,ik->i", d, precision, d)

    def score(z: np.ndarray) -> np.ndarray:
        per_class = np.stack([distance(z, m, shared) for m in means], 1)
        return (per_class - distance(z, centre, background)[:, None]).min(1)

    return score(known), score(other)


def _auroc(known: np.ndarray, other: np.ndarray) -> float:
    """AUROC of scores that should rank ``other`` (positive) above ``known``."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.zeros(len(known)), np.ones(len(other))], np.r_[known, other]))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# scikit-learn's flower.jpg: answered beside the non-flower images, but counted in none of their figures.
SKLEARN_FLOWER = "flower.jpg (scikit-learn; a flower, not one of the 5 classes)"
# scikit-image's bundled sample photos (its data folder, no download), all real photos of something else.
SKIMAGE_PHOTOS = (
    "astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "coins.png", "grass.png", "gravel.png",
    "hubble_deep_field.jpg", "ihc.png", "moon.png", "motorcycle_left.png", "page.png", "retina.jpg", "rocket.jpg",
)  # fmt: skip


def _non_flower_images(folder: Path) -> dict[str, str]:
    """Photos shipped with installed packages, crops of them, and generated images: name -> path."""
    import matplotlib
    import sklearn
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    grace = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    china = Path(sklearn.__file__).parent / "datasets" / "images" / "china.jpg"
    out = {"grace_hopper.jpg (matplotlib)": str(grace), "china.jpg (scikit-learn)": str(china)}
    with Image.open(china) as im:
        w, h = im.size
        im.crop((0, 0, w // 2, h)).save(folder / "china_left.jpg", quality=90)
        im.crop((w // 2, h // 3, w, h)).save(folder / "china_bottom_right.jpg", quality=90)
    with Image.open(grace) as im:
        w, h = im.size
        im.crop((w // 4, 0, 3 * w // 4, h // 2)).save(folder / "grace_face.jpg", quality=90)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:256]
    generated = {
        "checkerboard.png": ((yy // 32 + xx // 32) % 2 * 255).astype("uint8")[..., None].repeat(3, 2),
        "gradient.png": np.stack([xx, yy, 255 - xx], axis=-1).astype("uint8"),
        "noise.png": rng.integers(0, 256, (256, 256, 3)).astype("uint8"),
        "grey.png": np.full((256, 256, 3), 128, np.uint8),
    }
    for name, pixels in generated.items():
        Image.fromarray(pixels).save(folder / name)
    for name in ("china_left.jpg", "china_bottom_right.jpg", "grace_face.jpg", *generated):
        out[f"{name} (generated)" if name in generated else f"{name} (crop)"] = str(folder / name)
    out.update(_skimage_photos())
    out[SKLEARN_FLOWER] = str(Path(sklearn.__file__).parent / "datasets" / "images" / "flower.jpg")
    return out


def _skimage_photos() -> dict[str, str]:
    try:
        import skimage
    except ImportError:
        print("scikit-image is not installed: 15 more non-flower photos with `pip install -e '.[bench]'`")
        return {}
    folder = Path(skimage.__file__).parent / "data"
    return {f"{name} (scikit-image)": str(folder / name) for name in SKIMAGE_PHOTOS if (folder / name).is_file()}


def non_flowers(
    data: Path, work: Path, cache: Path, classes: list[str]
) -> tuple[list[dict[str, Any]], dict[str, Any], list[dict[str, Any]]]:
    """A run on all classes: its answer for each non-flower image; a summary: how many were answered unknown,
    and the AUROC of their scores against the run's known validation images (threshold-free); and the same two
    figures for every candidate on the run's embeddings. scikit-learn's flower.jpg is listed but counted in none,
    being a flower."""
    from floranet.inference import load
    from floranet.rundir import RunDir

    result, _ = _train(data, work / "run-all", cache)
    images = _non_flower_images(work / "non-flowers")
    methods = _non_flower_methods(result, classes, images, work / "non-flower-links")
    rows = load(result.run_dir).predict(list(images.values()))
    known = _scores(result.run_dir, [str(data / r.path) for r in RunDir(result.run_dir).split(classes).validation()])
    others = [r for name, r in zip(images, rows, strict=True) if name != SKLEARN_FLOWER]
    odd = np.array([r.ood_score for r in others])
    summary = {
        "answered_unknown": sum(bool(r.unknown) for r in others),
        "images": len(others),
        "auroc": round(_auroc(known, odd), 4),
    }
    table_rows = [
        {
            "image": name,
            "unknown": r.unknown,
            "ood_score": r.ood_score,
            "top_class": f"{r.top_k[0][0]} {r.top_k[0][1]:.0%}",
        }
        for name, r in zip(images, rows, strict=True)
    ]
    return table_rows, summary, methods


def _non_flower_methods(result: Any, classes: list[str], images: dict[str, str], links: Path) -> list[dict[str, Any]]:
    """Every candidate of the held-out runs, on the all-classes run's embeddings: the non-flower images (but
    scikit-learn's flower) against its known validation images."""
    from floranet.data.split import SplitRow
    from floranet.evaluation.ood import compare
    from floranet.inference import unknown as unknown_lib
    from floranet.rundir import RunDir

    run = RunDir(result.run_dir)
    split = run.split(classes)
    links.mkdir()
    rows = []
    for name, path in images.items():
        if name != SKLEARN_FLOWER:  # one folder of links: the embeddings read paths relative to one folder
            (links / Path(path).name).symlink_to(Path(path).resolve())
            rows.append(SplitRow(Path(path).name, classes[0], "validation", _sha(Path(path))))
    train_e = _embeddings(run.path, result.model, split.train(), classes)
    known_e = _embeddings(run.path, result.model, split.validation(), classes)
    odd_e = _embeddings(run.path, result.model, rows, classes, links)
    candidates = compare(result.model, train_e, known_e, odd_e, num_classes=len(classes), temperature=run.temperature())
    candidates[COMBINED_BEFORE] = combined_before(result.model, train_e, known_e, odd_e, len(classes))
    candidates.update(supcon_candidates(train_e, known_e, odd_e, candidates["combined (k=1)"]))
    out = []
    for name, (k, o) in candidates.items():
        threshold = unknown_lib.threshold_for(k, 0.95)  # the rule unknown.fit uses
        out.append(
            {
                "method": name,
                "answered_unknown": int(np.sum(o > threshold)),
                "images": len(o),
                "auroc": round(_auroc(k, o), 4),
            }
        )
    return sorted(out, key=lambda r: (-r["answered_unknown"], -r["auroc"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(FLOWERS))
    ap.add_argument("--keep", action="store_true", help="keep the temporary folders")
    ap.add_argument("--preset", default="tutorial", choices=["tutorial", "recommended"])
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a training setting (YAML value), e.g. --set label_smoothing=0; repeatable",
    )
    ap.add_argument("--no-non-flowers", action="store_true", help="skip the sixth run (non-flower photos)")
    args = ap.parse_args()
    SETTINGS["preset"] = args.preset
    SETTINGS.update(_overrides(args.set))
    data = Path(args.data)
    if not data.is_dir() or not MOBILENET_NOTOP.exists():
        sys.exit("this benchmark needs ../shared (flower_photos and the MobileNetV2 weights)")
    from floranet import config
    from floranet.inference.unknown import COMBINED_PARTS
    from floranet.rundir import RunDir
    from floranet.training.embeddings import stage1_features

    classes = sorted(p.name for p in data.iterdir() if p.is_dir())
    work = Path(tempfile.mkdtemp(prefix="floranet-bench-unknown-"))
    try:
        cache = work / "cache"
        cache.mkdir()
        files = sorted(p for c in classes for p in (data / c).iterdir())
        cfg = config.resolve(data_dir=str(data), out=str(cache), weights=str(MOBILENET_NOTOP), **SETTINGS)
        t = time.perf_counter()
        stage1_features(RunDir(cache), cfg, [str(f) for f in files], [_sha(f) for f in files], say=print)
        feature_seconds = time.perf_counter() - t
        per_class = [held_out(data, work, cache, held, classes) for held in classes]
        odd, odd_summary, odd_methods = (
            ([], None, []) if args.no_non_flowers else non_flowers(data, work, cache, classes)
        )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    summary = _summary(per_class)
    print(table([{k: v for k, v in r.items() if k != "methods"} for r in per_class], list(per_class[0])[:-1]))
    print(table(summary, list(summary[0])))
    if odd:
        print(table(odd, ["image", "unknown", "ood_score", "top_class"]))
        print(f"Non-flower photos: {odd_summary}")
        print(table(odd_methods, list(odd_methods[0])))
    mean_auroc = float(np.mean([r["auroc"] for r in per_class]))
    payload = {
        "per_class": per_class,
        "methods": summary,
        "mean_auroc": round(mean_auroc, 4),
        "mean_false_known_at_95": round(float(np.mean([r["false_known_at_95"] for r in per_class])), 4),
        "target_mean_auroc": 0.90,
        "non_flowers": odd,
        "non_flowers_summary": odd_summary,
        "non_flowers_methods": odd_methods,
        "feature_seconds": round(feature_seconds, 1),
        "settings": SETTINGS,
        "default_method": config.TrainConfig.unknown_method,
        "combined_parts": list(COMBINED_PARTS),
    }
    print(f"Mean AUROC {mean_auroc:.3f} (target >= 0.90); features computed once in {feature_seconds:.0f} s.")
    name = "unknown" if args.preset == "tutorial" else f"unknown_{args.preset}"
    name = result_name(name, *(o.replace("=", "-") for o in args.set))  # a variant: named after what it changed
    print(f"wrote {write_result(name, payload, 'python benchmarks/bench_unknown.py ' + ' '.join(sys.argv[1:]))}")


def _overrides(pairs: list[str]) -> dict[str, Any]:
    import yaml

    out = {}
    for pair in pairs:
        field, sep, value = pair.partition("=")
        if not sep or not field:
            sys.exit(f"--set takes FIELD=VALUE. Received: --set {pair}")
        if field.replace("-", "_") in FIXED:
            sys.exit(f"--set cannot change {field}: the benchmark sets it ({FIXED[field.replace('-', '_')]})")
        out[field] = yaml.safe_load(value)
    return out


def _summary(per_class: list[dict[str, Any]]) -> list[dict[str, Any]]:
    names = list(per_class[0]["methods"])

    def mean(m: str, key: str) -> float:
        return round(float(np.mean([r["methods"][m][key] for r in per_class])), 4)

    rows = [
        {
            "method": m,
            "mean_auroc": mean(m, "auroc"),
            "mean_false_known_at_95": mean(m, "false_known_at_95"),
            **{r["held_out"]: round(r["methods"][m]["auroc"], 3) for r in per_class},
        }
        for m in names
    ]
    return sorted(rows, key=lambda r: -r["mean_auroc"])


if __name__ == "__main__":
    main()
