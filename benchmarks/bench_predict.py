"""Single-image `predict`: cold (a new process) and warm, this code vs a baseline commit; and the warm
in-process path against the raw model call.

Cold and warm vs baseline: for MobileNetV2 at 225 px and ResNet50 at 180 px (random weights: speed does not
depend on values), each code version trains its own run on the bundled sample (1 epoch; this code's run
leaves its compiled OpenVINO model, the baseline's does not have one), then
* cold: `floranet predict RUN one.jpg` as a new process, --cold times after one untimed run (warm disk cache),
  median wall seconds and peak RSS;
* warm: `Predictor.predict([file])` in a child process, median of --repeats calls after 3.
In-process (this code, ResNet50 180 px, model.keras only): `Predictor.predict([file])` (decode, resize, model,
top-k) against `model(x)` on decoded pixels, and the traced model call alone.

    python benchmarks/bench_predict.py [--image-size 180] [--repeats 30] [--cold 5] [--baseline-ref c86ec50]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BASELINE_REF, CLI, baseline_source, python, run_measured, table, write_result
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


WARM = """
import json, statistics, sys, time
try:
    from floranet.inference import load
except ImportError:  # the baseline's layout
    from floranet.predict import load
p = load(sys.argv[1])
for _ in range(3):
    p.predict([sys.argv[2]])
times = []
for _ in range(int(sys.argv[3])):
    t = time.perf_counter()
    p.predict([sys.argv[2]])
    times.append((time.perf_counter() - t) * 1000)
print(json.dumps({"ms": statistics.median(times), "via": p.describe() if hasattr(p, "describe") else "model.keras"}))
"""
MODELS = (("mobilenet_v2", 225), ("resnet50", 180))


def versus_baseline(ref: str, photo: Path, cold: int, repeats: int, work: Path) -> list[dict]:
    """Cold and warm predict of this code and of ``ref`` on runs each trained by its own code."""
    sample = datasets.mini_flowers_path()
    codes = {f"baseline {ref}": baseline_source(ref, work / "baseline-src"), "this code": None}
    rows = []
    for backbone, size in MODELS:
        for code, src in codes.items():
            env = {"PYTHONPATH": str(src)} if src else {}
            run = work / f"{backbone}-{'base' if src else 'new'}"
            train = [
                python(),
                "-c",
                CLI,
                "train",
                str(sample),
                "--out",
                str(run),
                "--backbone",
                backbone,
                "--weights",
                "none",
                "--image-size",
                str(size),
                "--preset",
                "tutorial",
                "--epochs",
                "1",
            ]
            if run_measured(train, env=env, log=work / f"{run.name}.log")["returncode"]:
                sys.exit(f"training {run.name} failed, see {work / f'{run.name}.log'}")
            predict = [python(), "-c", CLI, "predict", str(run), str(photo)]
            measured = [run_measured(predict, env=env) for _ in range(cold + 1)][1:]
            if any(m["returncode"] for m in measured):
                sys.exit(f"predict on {run} failed")
            out = subprocess.run(
                [python(), "-c", WARM, str(run), str(photo), str(repeats)],
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                check=True,
            )
            warm = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(
                {
                    "model": f"{backbone} {size}px",
                    "code": code,
                    "cold_s": statistics.median(m["wall_seconds"] for m in measured),
                    "cold_peak_rss_mib": max(m["peak_rss_mib"] for m in measured),
                    "warm_ms": round(warm["ms"], 2),
                    "warm_via": warm["via"],
                }
            )
            print(rows[-1], flush=True)
    for new in rows[1::2]:
        base = rows[rows.index(new) - 1]
        new["cold_vs_baseline"] = round(new["cold_s"] / base["cold_s"], 3)
        new["warm_vs_baseline"] = round(new["warm_ms"] / base["warm_ms"], 3)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-size", type=int, default=180)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--cold", type=int, default=5)
    ap.add_argument("--baseline-ref", default=BASELINE_REF)
    args = ap.parse_args()
    photo = sorted((datasets.mini_flowers_path() / "roses").glob("*.jpg"))[0]
    work = Path(tempfile.mkdtemp(prefix="floranet-bench-predict-"))
    cold = versus_baseline(args.baseline_ref, photo, args.cold, args.repeats, work)
    print(
        table(
            cold,
            [
                "model",
                "code",
                "cold_s",
                "cold_vs_baseline",
                "cold_peak_rss_mib",
                "warm_ms",
                "warm_vs_baseline",
                "warm_via",
            ],
        )
    )
    print("targets: cold <= 1.5 s (MobileNetV2), <= 2.5 s (ResNet50); warm no slower than the baseline")
    run = work / "in-process"
    run.mkdir()
    model = classifier.build_classifier("resnet50", 5, image_size=args.image_size, weights=None)
    model.save(run / "model.keras")
    (run / "class_names.json").write_text(json.dumps(["daisy", "dandelion", "roses", "sunflowers", "tulips"]))
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
        {
            "rows": rows,
            "cold_and_warm": cold,
            "baseline_ref": args.baseline_ref,
            "image_size": args.image_size,
            "photo": photo.name,
        },
        "python benchmarks/bench_predict.py " + " ".join(sys.argv[1:]),
    )
    print(f"wrote {out}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
