"""The tutorial's script vs `floranet train --preset tutorial`: wall time and peak memory.

Same data (../shared/data/flower_photos), ResNet50 with random weights (timing
only), 180 px, batch 32, 5 epochs. Each runs in its own process; peak memory
is that process's maximum resident set size.

    python benchmarks/bench_train.py [--data DIR] [--limit-per-class N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FLOWERS, ROOT, python, run_measured, table, write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(FLOWERS))
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--image-size", type=int, default=180)
    ap.add_argument("--precision", default="auto", help="floranet's default: bf16 features where the CPU has it")
    args = ap.parse_args()
    data = Path(args.data)
    if not data.is_dir():
        sys.exit(f"{data} not found: this benchmark needs ../shared/data/flower_photos or --data DIR")
    work = Path(tempfile.mkdtemp(prefix="floranet-bench-train-"))
    rows = []
    try:
        ref_json = work / "reference.json"
        ref = run_measured([python(), str(ROOT / "benchmarks/reference/tutorial_reference.py"), "--data", str(data),
                            "--weights", "none", "--image-size", str(args.image_size), "--epochs", str(args.epochs),
                            "--json", str(ref_json)], log=work / "reference.log")
        if ref["returncode"] != 0:
            sys.exit(f"reference failed: see {work / 'reference.log'}")
        rows.append({"job": "tutorial script (keras.applications, fit 5 epochs)", **ref})
        run = work / "run"
        flo = run_measured([str(Path(python()).parent / "floranet"), "train", str(data), "--out", str(run),
                            "--preset", "tutorial", "--weights", "none", "--image-size", str(args.image_size),
                            "--epochs", str(args.epochs), "--precision", args.precision],
                           env={"PYTHONUNBUFFERED": "1"}, log=work / "floranet.log")
        if flo["returncode"] != 0:
            sys.exit(f"floranet train failed: see {work / 'floranet.log'}")
        timings = json.loads((run / "metrics.json").read_text()).get("timings_s", {})
        rows.append({"job": f"floranet train --preset tutorial ({args.precision})", **flo, "stages": timings})
        speedup = ref["wall_seconds"] / flo["wall_seconds"]
        for r in rows:
            r["speedup_vs_tutorial"] = round(ref["wall_seconds"] / r["wall_seconds"], 2)
        print(table(rows, ["job", "wall_seconds", "peak_rss_mib", "speedup_vs_tutorial"]))
        print(f"floranet is {speedup:.1f}x faster than the tutorial's script (target >= 8x)")
        path = write_result("train_vs_tutorial", {"rows": rows, "speedup": round(speedup, 2),
                                                  "data": str(data), "epochs": args.epochs},
                            "python benchmarks/bench_train.py " + " ".join(sys.argv[1:]))
        print(f"wrote {path}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
