"""bf16 is safe: validation accuracy with bf16 vs fp32 features, same data, split, head recipe and seed.

MobileNetV2 with real ImageNet weights (../shared) at 225 px on ../shared/data/flower_photos,
`floranet train --preset tutorial` (frozen backbone, cached features) once per runtime/precision.
Target: |accuracy(bf16) - accuracy(fp32)| < 0.5 points.

    python benchmarks/bench_bf16.py [--image-size 225]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FLOWERS, MOBILENET_NOTOP, python, run_measured, table, write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-size", type=int, default=225)
    args = ap.parse_args()
    if not FLOWERS.is_dir() or not MOBILENET_NOTOP.exists():
        sys.exit("needs ../shared (flower photos and MobileNetV2 weights)")
    work = Path(tempfile.mkdtemp(prefix="floranet-bench-bf16-"))
    floranet = str(Path(python()).parent / "floranet")
    rows = []
    try:
        for rt, prec in (("tensorflow", "fp32"), ("openvino", "fp32"), ("openvino", "bf16")):
            run = work / f"{rt}-{prec}"
            res = run_measured([floranet, "train", str(FLOWERS), "--out", str(run), "--preset", "tutorial",
                                "--backbone", "mobilenet_v2", "--weights", str(MOBILENET_NOTOP),
                                "--image-size", str(args.image_size), "--runtime", rt, "--precision", prec],
                               log=work / f"{rt}-{prec}.log")
            if res["returncode"]:
                sys.exit(f"{rt} {prec} failed: see {work / f'{rt}-{prec}.log'}")
            m = json.loads((run / "metrics.json").read_text())
            rows.append({"features": f"{rt} {prec}", "val_accuracy": round(m["accuracy"], 4),
                         "stage1_seconds": m["timings_s"]["stage1"], "wall_seconds": res["wall_seconds"]})
        base = rows[0]["val_accuracy"]
        for r in rows:
            r["delta_points"] = round(100 * (r["val_accuracy"] - base), 2)
        print(table(rows, ["features", "val_accuracy", "delta_points", "stage1_seconds", "wall_seconds"]))
        worst = max(abs(r["delta_points"]) for r in rows)
        print(f"largest change vs TensorFlow fp32: {worst:.2f} points (target < 0.5)")
        out = write_result("bf16", {"rows": rows, "max_delta_points": worst},
                           "python benchmarks/bench_bf16.py " + " ".join(sys.argv[1:]))
        print(f"wrote {out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
