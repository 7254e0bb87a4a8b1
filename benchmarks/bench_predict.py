"""Warm single-image `predict` latency vs the raw model call at batch 1.

Builds a ResNet50 classifier run (random weights; speed does not depend on values)
at 180 px, then times, for one real JPEG: `Predictor.predict([file])` (decode,
resize, model, top-k) against `model(x)` on already-decoded pixels, and the
traced model call alone. Medians over --repeats warm calls.

    python benchmarks/bench_predict.py [--image-size 180] [--repeats 30]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table, write_result
from floranet import inference as predict
from floranet.data import datasets, decode
from floranet.models import classifier


def median_ms(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-size", type=int, default=180)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    run = Path(tempfile.mkdtemp(prefix="floranet-bench-predict-"))
    model = classifier.build_classifier("resnet50", 5, image_size=args.image_size, weights=None)
    model.save(run / "model.keras")
    (run / "class_names.json").write_text(json.dumps(["daisy", "dandelion", "roses", "sunflowers", "tulips"]))
    photo = sorted((datasets.mini_flowers_path() / "roses").glob("*.jpg"))[0]
    predictor = predict.load(run)
    loaded = predictor.model
    x = decode.decode_and_resize(str(photo), (args.image_size,) * 2)[None]
    rows = [
        {
            "path": "raw model call model(x), batch 1 (pixels ready)",
            "ms": median_ms(lambda: loaded(x, training=False), args.repeats),
        },
        {
            "path": "traced model call (tf.function), batch 1",
            "ms": median_ms(lambda: predictor.probabilities(x), args.repeats),
        },
        {
            "path": "floranet predict([file]) incl. decode, resize, top-k",
            "ms": median_ms(lambda: predictor.predict([photo]), args.repeats),
        },
    ]
    raw = rows[0]["ms"]
    for r in rows:
        r["ms"] = round(r["ms"], 2)
        r["vs_raw_call"] = round(r["ms"] / raw, 2)
    print(table(rows, ["path", "ms", "vs_raw_call"]))
    print("target: floranet predict <= 1.2x the raw model call")
    out = write_result(
        "predict",
        {"rows": rows, "image_size": args.image_size, "photo": photo.name},
        "python benchmarks/bench_predict.py " + " ".join(sys.argv[1:]),
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
