"""Fine-tuning step throughput: fp32 vs Keras mixed_bfloat16, ResNet50 top stage unfrozen.

python benchmarks/bench_finetune.py [--image-size 180] [--batch 32] [--steps 6]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import keras
import numpy as np

from common import table, write_result
from floranet.models import classifier


def images_per_second(policy: str, size: int, batch: int, steps: int) -> float:
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = classifier.build_classifier("resnet50", 5, image_size=size, weights=None)
        classifier.unfreeze_top(model, "resnet50")
        model.compile(optimizer=keras.optimizers.Adam(1e-5), loss="sparse_categorical_crossentropy")
        rng = np.random.default_rng(0)
        x = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
        y = rng.integers(0, 5, batch)
        model.train_on_batch(x, y)
        model.train_on_batch(x, y)
        start = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(x, y)
        return steps * batch / (time.perf_counter() - start)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-size", type=int, default=180)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args()
    rows = [
        {"policy": p, "img_per_s": round(images_per_second(p, args.image_size, args.batch, args.steps), 1)}
        for p in ("float32", "mixed_bfloat16")
    ]
    for r in rows:
        r["vs_fp32"] = round(r["img_per_s"] / rows[0]["img_per_s"], 2)
    print(table(rows, ["policy", "img_per_s", "vs_fp32"]))
    from floranet.inference import runtime

    faster = rows[1]["img_per_s"] > rows[0]["img_per_s"]
    policy, why = runtime.training_precision("auto")
    print(
        f"mixed bf16 is {'faster' if faster else 'not faster'} here; floranet's --precision auto fine-tunes in "
        f"{policy} on this machine ({why})"
    )
    out = write_result(
        "finetune",
        {"rows": rows, "image_size": args.image_size, "batch": args.batch},
        "python benchmarks/bench_finetune.py " + " ".join(sys.argv[1:]),
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
