"""Decode+resize throughput of the input pipeline vs ResNet50's forward pass.

Measures, in one process and one run:

(a) ``make_dataset`` over the files (auto routing: tf fast path for plain
    JPEG/PNG, Pillow otherwise), batch 32: images/s to exhaust one pass,
    after a short warm-up on a separate dataset;
(b) the same through the Pillow fallback only (``tf_decodable`` all False);
(c) ``keras.applications.ResNet50(weights=None, include_top=False,
    pooling="avg")`` forward on random input, batch 32, after a warm-up.

The ratio column says how many times faster than the model the input side
is: above 1, decoding cannot be the bottleneck of training or prediction.

    python benchmarks/bench_decode.py [--data DIR] [--image-size 180] [--limit N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from common import FLOWERS, RESULTS, machine_info, table
from floranet.data.pipeline import make_dataset

BATCH = 32
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def find_images(data: Path, limit: int) -> list[str]:
    """Image files under ``data``, evenly spread over the sorted list (all classes)."""
    files = sorted(str(p) for p in data.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
    if limit and len(files) > limit:
        files = [files[int(i)] for i in np.linspace(0, len(files) - 1, limit)]
    return files


def synthesize(root: Path, count: int) -> Path:
    """Writes ``count`` smooth random JPEGs (flower-photo sizes) in 5 class folders."""
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / f"class_{i % 5}"
        folder.mkdir(parents=True, exist_ok=True)
        w, h = rng.choice([(320, 240), (500, 375), (240, 320), (500, 333)])
        small = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((w, h), Image.BILINEAR)
        image.save(folder / f"{i:05d}.jpg", quality=90)
    return root


def time_pipeline(paths: list[str], size: tuple[int, int], tf_decodable: list[bool] | None) -> dict[str, Any]:
    for _ in make_dataset(
        paths[: 2 * BATCH],
        None,
        image_size=size,
        batch_size=BATCH,
        tf_decodable=tf_decodable and tf_decodable[: 2 * BATCH],
    ):
        pass  # warm-up: graph tracing, thread pools, file cache
    start = time.perf_counter()
    ds = make_dataset(paths, None, image_size=size, batch_size=BATCH, tf_decodable=tf_decodable)
    built = time.perf_counter()
    n = sum(int(batch.shape[0]) for batch in ds)
    end = time.perf_counter()
    return {
        "images": n,
        "build_seconds": round(built - start, 3),
        "seconds": round(end - start, 3),
        "images_per_s": n / (end - start),
    }


def time_resnet(size: tuple[int, int], batches: int) -> dict[str, Any]:
    model = keras.applications.ResNet50(weights=None, include_top=False, pooling="avg", input_shape=(*size, 3))
    forward = tf.function(lambda x: model(x, training=False))
    x = tf.random.uniform((BATCH, *size, 3), 0, 255, seed=0)
    forward(x).numpy()  # warm-up: trace + first run
    forward(x).numpy()
    start = time.perf_counter()
    for _ in range(batches):
        forward(x).numpy()
    seconds = time.perf_counter() - start
    return {"images": batches * BATCH, "seconds": round(seconds, 3), "images_per_s": batches * BATCH / seconds}


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(payload, indent=2) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(FLOWERS), help="folder of images (default: ../shared/data/flower_photos)")
    ap.add_argument("--image-size", type=int, default=180)
    ap.add_argument("--limit", type=int, default=800, help="images to decode (0: all)")
    ap.add_argument("--resnet-batches", type=int, default=4)
    ap.add_argument("--json", default=str(RESULTS / "decode.json"))
    args = ap.parse_args()
    size = (args.image_size, args.image_size)
    data = Path(args.data)
    scratch = None
    if not data.is_dir():
        scratch = tempfile.TemporaryDirectory(prefix="floranet-bench-decode-")
        data = synthesize(Path(scratch.name), args.limit or 800)
        print(f"{args.data} not found: using {args.limit or 800} synthetic JPEGs in {data}")
    try:
        paths = find_images(data, args.limit)
        if not paths:
            sys.exit(f"no images under {data}")
        print(f"{len(paths)} images from {data}, {args.image_size}px, batch {BATCH}, {os.cpu_count()} CPUs")
        for p in paths:  # page cache: neither timed pass pays for the first disk read
            Path(p).read_bytes()
        auto = time_pipeline(paths, size, None)
        pillow = time_pipeline(paths, size, [False] * len(paths))
        resnet = time_resnet(size, args.resnet_batches)
    finally:
        if scratch is not None:
            scratch.cleanup()
    rows = [
        {"path": "make_dataset, auto (tf fast path)", **auto},
        {"path": "make_dataset, Pillow fallback only", **pillow},
        {"path": "ResNet50 forward (weights=None, avg pool)", **resnet},
    ]
    for r in rows:
        r["images_per_s"] = round(r["images_per_s"], 1)
        r["ratio_to_resnet50"] = round(r["images_per_s"] / resnet["images_per_s"], 2)
    print(table(rows, ["path", "images", "seconds", "images_per_s", "ratio_to_resnet50"]))
    out = Path(args.json)
    write_json(
        out,
        {
            "command": "python benchmarks/bench_decode.py " + " ".join(sys.argv[1:]),
            "machine": {**machine_info(), "cpu_count": os.cpu_count(), "pillow": Image.__version__},
            "data": str(data) if scratch is None else "synthetic",
            "image_size": args.image_size,
            "batch_size": BATCH,
            "rows": rows,
        },
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
