"""The label audit on flower_photos: planted label noise, planted near-duplicates, and the real set's top issues.

MobileNetV2 with the ImageNet weights bundled in floranet (torchvision's, converted) at 225 px, the recommended
preset's head. Nothing in ../shared is changed: the planted sets are copies in a temporary folder.

The real set is audited first (cold: features computed); the other two audits reuse its feature cache (an image's
features are keyed by its bytes, and a moved file keeps them).

1. Label noise: a copy of flower_photos with a seeded 5% of the images moved into another class folder;
   ``floranet audit`` on it. Share of the moved images among the top-N suspects (N = number moved) and the
   top 2N (targets >= 70% and >= 90%), time taken.
2. Near-duplicates: 50 images resized (+-10%), cropped (up to 5% a side) and re-encoded (JPEG quality 60-90);
   25 copies filed into another class (conflicts), 25 into the same class on the other side of the split
   (leaks, the split written so). Share of planted pairs found (target >= 95%), false pairs among the top 50.
3. The real set: the top 20 label issues of the unmodified flower_photos, with thumbnails
   (results/audit_real_top20.png, and the audit's own audit.html).

    python benchmarks/bench_audit.py [--noise 0.05] [--duplicates 50] [--seed 0]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FLOWERS, MOBILENET_NOTOP, RESULTS, table, write_result

SETTINGS: dict[str, Any] = {"backbone": "mobilenet_v2", "image_size": 225}


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.jpg"))


def _copy_features(src: Path, dst: Path) -> None:
    """Reuses computed features (keyed by file hash) in another audit folder."""
    shutil.copytree(src / "features", dst / "features", dirs_exist_ok=True)


def label_noise(work: Path, data: Path, fraction: float, seed: int, clean_audit: Path) -> dict[str, Any]:
    from floranet.workflows.audit import audit

    noisy = work / "noisy"
    shutil.copytree(data, noisy)
    files = _files(noisy)
    classes = sorted(p.name for p in noisy.iterdir() if p.is_dir())
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(files), round(fraction * len(files)), replace=False)
    moved: dict[str, str] = {}  # new relative path -> true class
    for i in sorted(picked):
        rel = Path(files[i])
        wrong = rng.choice([c for c in classes if c != rel.parts[0]])
        (noisy / rel).rename(noisy / wrong / rel.name)
        moved[f"{wrong}/{rel.name}"] = rel.parts[0]
    # The clean set's audit folder, copied: an earlier audit, so the audit may write into it, and its feature
    # cache (keyed by file content) holds every moved image already.
    out = work / "audit-noisy"
    shutil.copytree(clean_audit, out)
    t = time.perf_counter()
    outcome = audit(noisy, out=out, weights=str(MOBILENET_NOTOP), say=print, **SETTINGS)
    seconds = time.perf_counter() - t
    result = outcome.result
    ranking = result.label_ranking()
    n = len(moved)
    flagged = {f.file for f in result.of_kind("label_issue")}
    suggested = {f.file: f.suggested_label for f in result.of_kind("label_issue")}
    top_n = [p for p in ranking[:n] if p in moved]
    return {
        "images": len(files),
        "moved": n,
        "top_n_share": round(len(top_n) / n, 4),
        "top_2n_share": round(sum(p in moved for p in ranking[: 2 * n]) / n, 4),
        "flagged": len(flagged),
        "flagged_recall": round(len(flagged & set(moved)) / n, 4),
        "flagged_precision": round(len(flagged & set(moved)) / max(1, len(flagged)), 4),
        "suggested_true_class_share": round(sum(suggested.get(p) == moved[p] for p in top_n) / max(1, len(top_n)), 4),
        "seconds_total": round(seconds, 1),
        "seconds_audit": result.facts["timings_s"],
        "targets": {"top_n_share": 0.70, "top_2n_share": 0.90},
    }


def _planted_copy(src: Path, dst: Path, rng: np.random.Generator) -> dict[str, Any]:
    from PIL import Image

    with Image.open(src) as im:
        im = im.convert("RGB")
        scale = float(rng.uniform(0.9, 1.1))
        w, h = max(8, round(im.width * scale)), max(8, round(im.height * scale))
        im = im.resize((w, h), Image.BICUBIC)
        crop = rng.uniform(0, 0.05, size=4)
        box = (round(w * crop[0]), round(h * crop[1]), w - round(w * crop[2]), h - round(h * crop[3]))
        im = im.crop(box)
        quality = int(rng.integers(60, 91))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality)
    dst.write_bytes(buf.getvalue())
    return {"scale": round(scale, 3), "quality": quality}


def near_duplicates(work: Path, data: Path, clean_audit: Path, count: int, seed: int) -> dict[str, Any]:
    from floranet import config as config_lib
    from floranet.data.split import Split, SplitRow
    from floranet.rundir import RunDir
    from floranet.workflows.audit import audit

    dups = work / "dups"
    shutil.copytree(data, dups)
    base = RunDir(clean_audit).split()
    rows = {r.path: r for r in base.rows}
    classes = list(base.class_names)
    rng = np.random.default_rng(seed + 1)
    picked = [base.rows[i] for i in sorted(rng.choice(len(base.rows), count, replace=False))]
    planted: dict[str, tuple[str, str]] = {}  # copy -> (original, expected kind)
    for k, row in enumerate(picked):
        conflict = k % 2 == 0
        cls = rng.choice([c for c in classes if c != row.label]) if conflict else row.label
        rel = f"{cls}/planted_{k:02d}_{Path(row.path).name}"
        _planted_copy(dups / row.path, dups / rel, rng)
        other_side = row.split if conflict else ("train" if row.split == "validation" else "validation")
        sha = hashlib.sha256((dups / rel).read_bytes()).hexdigest()
        rows[rel] = SplitRow(rel, str(cls), other_side, sha)
        planted[rel] = (row.path, "duplicate_conflict" if conflict else "duplicate_leak")
    run = RunDir(work / "audit-dups")
    run.path.mkdir()
    cfg = config_lib.resolve(data_dir=str(dups), out=str(run.path), weights=str(MOBILENET_NOTOP), **SETTINGS)
    run.write_config(cfg)
    Split(rows=tuple(rows.values()), class_names=tuple(classes)).to_csv(run / RunDir.SPLIT)
    run.write_class_names(classes)
    _copy_features(clean_audit, run.path)
    result = audit(run.path, say=print).result
    pairs = [f for f in result.findings if f.kind.startswith("duplicate")]  # most similar first per kind
    pairs.sort(key=lambda f: -f.score)
    found = {}
    for f in pairs:
        for a, b in ((f.file, f.other_file), (f.other_file, f.file)):
            if a in planted and planted[a][0] == b:
                found[a] = f.kind
    sweep = _threshold_sweep(result, planted)
    top = pairs[:count]
    false_top = [f for f in top if not ({f.file, f.other_file} & set(planted))]
    _pair_gallery(dups, false_top, RESULTS / "audit_dup_false_pairs.png")
    return {
        "planted": len(planted),
        "found_share": round(len(found) / len(planted), 4),
        "kind_correct_share": round(sum(found.get(c) == planted[c][1] for c in planted) / len(planted), 4),
        "false_pairs_in_top": len(false_top),
        "top": len(top),
        "false_pairs": [{"file": f.file, "other": f.other_file, "similarity": round(f.score, 4)} for f in false_top],
        "missed": [{"copy": c, "original": planted[c][0]} for c in planted if c not in found],
        "pairs_flagged": len(pairs),
        "threshold": result.facts["duplicate_similarity"],  # this set's (median pair + DUPLICATE_Z deviations)
        "threshold_sweep": sweep,
        "target_found_share": 0.95,
    }


def _small_png(src: Path, dst: Path, width: int = 1000) -> None:
    """A picture for the repository: 1000 px wide, 256 colours."""
    from PIL import Image

    with Image.open(src) as im:
        small = im.convert("RGB").resize((width, round(im.height * width / im.width)), Image.LANCZOS)
    small.quantize(256, method=Image.Quantize.MEDIANCUT).save(dst, optimize=True)
    dst.chmod(0o644)


def _pair_gallery(root: Path, pairs: list[Any], path: Path) -> None:
    """The unplanted pairs among the top ones, side by side, to judge by eye whether they are duplicates."""
    from floranet.data.decode import decode_and_resize
    from floranet.utils.figures import image_grid

    images, titles = [], []
    for f in pairs:
        for p in (f.file, f.other_file):
            images.append(np.clip(decode_and_resize(str(root / p), (160, 160)), 0, 255).astype(np.uint8))
            titles.append(f"{p[-30:]}\n{f.kind} {f.score:.3f}")
    if images:
        path.parent.mkdir(parents=True, exist_ok=True)
        image_grid(images, titles, path, columns=6)
        _small_png(path, path)


def _threshold_sweep(result: Any, planted: dict[str, tuple[str, str]]) -> list[dict[str, Any]]:
    """Planted pairs' similarities against the number of other pairs at each threshold."""
    from floranet.evaluation.duplicates import similar_pairs, whitened

    data = result.data
    index = {p: i for i, p in enumerate(data.paths)}
    z = whitened(data.features)
    sims = np.asarray([float(z[index[c]] @ z[index[o]]) for c, (o, _) in planted.items()])
    pairs, _ = similar_pairs(data.features, 0.3)
    planted_pairs = {frozenset((index[c], index[o])) for c, (o, _) in planted.items()}
    others = np.asarray([s for i, j, s in pairs if frozenset((i, j)) not in planted_pairs])
    return [
        {
            "threshold": t,
            "planted_found": round(float(np.mean(sims >= t)), 4),
            "other_pairs": int(np.sum(others >= t)),
            "planted_similarity_min": round(float(sims.min()), 4),
        }
        for t in (0.3, 0.35, 0.4, 0.42, 0.45, 0.5, 0.6, 0.7)
    ]


def real_set(work: Path, data: Path) -> tuple[dict[str, Any], Path]:
    from floranet.workflows.audit import audit

    out = work / "audit-clean"
    t = time.perf_counter()
    result = audit(data, out=out, weights=str(MOBILENET_NOTOP), say=print, **SETTINGS).result
    seconds = time.perf_counter() - t
    top = result.of_kind("label_issue")[:20]
    RESULTS.mkdir(parents=True, exist_ok=True)
    _small_png(out / "plots" / "audit_label_issue.png", RESULTS / "audit_real_top20.png")
    return {
        "seconds_cold": round(seconds, 1),
        "counts": result.counts(),
        "top20": [f.to_dict() for f in top],
    }, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(FLOWERS))
    ap.add_argument("--noise", type=float, default=0.05)
    ap.add_argument("--duplicates", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folders")
    args = ap.parse_args()
    data = Path(args.data)
    if not data.is_dir() or not MOBILENET_NOTOP.exists():
        sys.exit("this benchmark needs ../shared (flower_photos and the MobileNetV2 weights)")
    work = Path(tempfile.mkdtemp(prefix="floranet-bench-audit-"))
    try:
        real, clean_audit = real_set(work, data)
        noise = label_noise(work, data, args.noise, args.seed, clean_audit)
        dups = near_duplicates(work, data, clean_audit, args.duplicates, args.seed)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    rows = [
        {"check": "label noise: moved images in top-N", "value": noise["top_n_share"], "target": ">= 0.70"},
        {"check": "label noise: moved images in top-2N", "value": noise["top_2n_share"], "target": ">= 0.90"},
        {"check": "label noise: audit seconds (features cached)", "value": noise["seconds_total"]},
        {"check": "near-duplicates: planted pairs found", "value": dups["found_share"], "target": ">= 0.95"},
        {"check": "near-duplicates: found with the right kind", "value": dups["kind_correct_share"]},
        {"check": f"near-duplicates: false pairs in top {dups['top']}", "value": dups["false_pairs_in_top"]},
        {"check": "real set: audit seconds (cold, features computed)", "value": real["seconds_cold"]},
    ]
    print(table(rows, ["check", "value", "target"]))
    print(table(dups["threshold_sweep"], list(dups["threshold_sweep"][0])))
    print("Real set, top 20 label issues:")
    for f in real["top20"]:
        print(f"  {f['score']:.3f}  {f['file']}  [{f['given_label']} -> {f['suggested_label']}?]")
    command = "python benchmarks/bench_audit.py " + " ".join(sys.argv[1:])
    path = write_result("audit", {"rows": rows, "label_noise": noise, "duplicates": dups, "real_set": real}, command)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
