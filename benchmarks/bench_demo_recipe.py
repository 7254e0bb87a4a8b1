"""The offline demo's recipe on the bundled sample: validation accuracy over seeded splits, and the demo's own.

``floranet demo`` without network trains the bundled MobileNetV2 (ImageNet weights shipped with floranet) with
the ``tutorial`` preset at 160 px on ``mini_flowers`` (60 photos per class; 80/20 split). This measures that
recipe through ``floranet train`` (the same job the demo runs) on ``--seeds`` seeded splits, then on the demo's
own split (seed 123), and the same recipe with random weights (what the pretrained backbone is worth).
Each row: validation accuracy, correct/total, and the training job's seconds on this machine.

    python benchmarks/bench_demo_recipe.py [--seeds 5]

Result: results/demo_recipe.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import positive_int, table, write_result

DEMO_SEED = 123  # config.TrainConfig's default seed: the demo's split


def _run(work: Path, seed: int, weights: str) -> dict[str, Any]:
    import keras

    from floranet import config
    from floranet.data.datasets import mini_flowers_path
    from floranet.workflows import demo, train

    keras.backend.clear_session()
    cfg = config.resolve(
        preset=demo.OFFLINE_PRESET,
        data_dir=str(mini_flowers_path()),
        out=str(work / f"run-{seed}-{weights}"),
        backbone=demo.OFFLINE_BACKBONE,
        weights=weights,
        image_size=demo.OFFLINE_SIZE,
        seed=seed,
        audit=False,
    )
    t = time.perf_counter()
    result = train(cfg, progress=False, say=lambda m: None)
    n = int(result.metrics["num_examples"])
    accuracy = float(result.metrics["accuracy"])
    return {
        "seed": seed,
        "weights": weights,
        "accuracy": round(accuracy, 4),
        "correct": f"{round(accuracy * n)}/{n}",
        "train_seconds": round(result.timings.get("training", time.perf_counter() - t), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=positive_int, default=5, help="seeded splits (seeds 0..N-1)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="floranet-demo-recipe-") as tmp:
        work = Path(tmp)
        rows = [_run(work, seed, "imagenet") for seed in range(args.seeds)]
        demo_rows = [_run(work, DEMO_SEED, "imagenet"), _run(work, DEMO_SEED, "none")]
    for r in [*rows, *demo_rows]:
        print(r, flush=True)
    accuracies = [r["accuracy"] for r in rows]
    summary = {
        "mean_accuracy": round(float(np.mean(accuracies)), 4),
        "min_accuracy": min(accuracies),
        "max_accuracy": max(accuracies),
        "mean_train_seconds": round(float(np.mean([r["train_seconds"] for r in rows])), 1),
    }
    print(table([*rows, *demo_rows], ["seed", "weights", "accuracy", "correct", "train_seconds"]))
    print(summary)
    payload = {"splits": rows, "demo_split": demo_rows, **summary, "recipe": "tutorial preset, mobilenet_v2, 160 px"}
    path = write_result("demo_recipe", payload, f"python benchmarks/bench_demo_recipe.py --seeds {args.seeds}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
