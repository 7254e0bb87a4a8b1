"""Padding: floranet's MobileNetV2 (symmetric, as torchvision) vs Keras's (bottom/right at even sizes).

Both load the same bundled ImageNet weights (torchvision's, converted) and are fed torchvision's normalisation;
they differ only in how stride-2 layers pad. At 225 px (32k+1) the two paddings coincide; at 224 px Keras's shifts
every stride-2 layer by a pixel. Each variant trains the tutorial preset (frozen backbone, cached features, Flatten
→ Dense(512) → Dense(n), Adam 1e-3, 5 epochs) on ../shared/data/flower_photos with one split for all, over several
head seeds (each run computes its features again: same weights and size, so the same features, and only the head's
seed differs). ``--compare-weights`` adds the same model with another file (e.g. the float32 conversion) to measure
what float16 storage costs.

    python benchmarks/bench_padding.py [--sizes 224 225] [--seeds 3] [--compare-weights F32.h5 ...]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FLOWERS, positive_int, table, write_result

KERAS_PADDED = "keras_mobilenet_v2_torchvision"  # registered below, for this process only


def register_keras_variant() -> None:
    """Keras's MobileNetV2 as a backbone fed torchvision's normalisation (the bundled weights' own)."""
    from floranet.models import registry

    if KERAS_PADDED not in registry.REGISTRY:
        registry.register(
            registry.BackboneInfo(KERAS_PADDED, "keras", "torch", "block_13_", 224, None, keras_name="MobileNetV2")
        )


def train_once(name: str, backbone: str, weights: str, size: int, seed: int, split: Path | None, work: Path) -> Any:
    from floranet import config
    from floranet.workflows.train import train

    out = work / f"{name}-{size}-{seed}"
    cfg = config.resolve(
        preset="tutorial",
        data_dir=str(FLOWERS),
        out=str(out),
        backbone=backbone,
        weights=weights,
        image_size=size,
        seed=seed,
        split_file=str(split) if split else None,
    )
    return train(cfg, progress=False, say=lambda m: None)


def variant(name: str, backbone: str, weights: str, size: int, seeds: list[int], work: Path) -> dict[str, Any]:
    """Trains one variant over ``seeds`` on the shared split, each run a new one that computes its own features
    (``train`` refuses an --out that holds anything but a run, so a cache cannot be planted before it)."""
    split = work / "split.csv"
    accs, t0 = [], time.perf_counter()
    for seed in seeds:
        result = train_once(name, backbone, weights, size, seed, split if split.exists() else None, work)
        if not split.exists():
            shutil.copy(result.run_dir / "split.csv", split)
        accs.append(float(result.metrics["accuracy"]))
        print(f"  {name} {size}px seed {seed}: {accs[-1]:.4f}", flush=True)
    return {
        "variant": name,
        "size": size,
        "accuracy_mean": round(statistics.mean(accs), 4),
        "accuracy_std": round(statistics.stdev(accs), 4) if len(accs) > 1 else 0.0,
        "accuracies": [round(a, 4) for a in accs],
        "num_val": int(result.metrics["num_examples"]),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 225])
    ap.add_argument("--seeds", type=positive_int, default=3)
    ap.add_argument("--compare-weights", nargs="*", default=[], help="other files for floranet's model (at sizes[0])")
    args = ap.parse_args()
    if not FLOWERS.is_dir():
        sys.exit(f"{FLOWERS} not found: this benchmark needs ../shared/data/flower_photos")
    from floranet.models import weights as weights_lib

    register_keras_variant()
    bundled = str(weights_lib.bundled_file("mobilenet_v2"))
    seeds = list(range(1, args.seeds + 1))
    work = Path(tempfile.mkdtemp(prefix="floranet-bench-padding-"))
    rows = []
    try:
        for size in args.sizes:
            rows.append(variant("floranet mobilenet_v2 (symmetric)", "mobilenet_v2", bundled, size, seeds, work))
            rows.append(variant("keras MobileNetV2 (bottom/right)", KERAS_PADDED, bundled, size, seeds, work))
        for path in args.compare_weights:
            rows.append(
                variant(f"floranet mobilenet_v2, {Path(path).name}", "mobilenet_v2", path, args.sizes[0], seeds, work)
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(rows, ["variant", "size", "accuracy_mean", "accuracy_std", "accuracies", "num_val", "seconds"]))
    best = max(rows, key=lambda r: r["accuracy_mean"])
    print(f"best: {best['variant']} at {best['size']} px ({best['accuracy_mean']:.2%})")
    out = write_result(
        "padding",
        {"rows": rows, "seeds": seeds, "preset": "tutorial", "weights": Path(bundled).name, "best": best},
        "python benchmarks/bench_padding.py " + " ".join(sys.argv[1:]),
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
