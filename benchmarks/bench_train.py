"""The tutorial's script vs `floranet train --preset tutorial`: wall time and peak memory.

Same data (../shared/data/flower_photos), ResNet50 with random weights (timing
only), 180 px, batch 32, 5 epochs. Each runs in its own process; peak memory
is that process's maximum resident set size. This machine's speed drifts by
tens of percent over minutes (a shared VM), so floranet runs once before and
once after the reference (fresh run directory each time, nothing cached) and
the speed-up uses their mean; every run is reported.

    python benchmarks/bench_train.py [--data DIR] [--epochs 5] [--floranet-runs 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FLOWERS, ROOT, positive_int, python, run_measured, table, write_result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(FLOWERS))
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--image-size", type=int, default=180)
    ap.add_argument("--precision", default="auto", help="floranet's default: bf16 features where the CPU has it")
    ap.add_argument("--floranet-runs", type=positive_int, default=2, help="split before and after the reference")
    args = ap.parse_args()
    data = Path(args.data)
    if not data.is_dir():
        sys.exit(f"{data} not found: this benchmark needs ../shared/data/flower_photos or --data DIR")
    work = Path(tempfile.mkdtemp(prefix="floranet-bench-train-"))
    rows = []
    try:

        def floranet(i: int) -> dict:
            run = work / f"run{i}"
            res = run_measured(
                [
                    str(Path(python()).parent / "floranet"),
                    "train",
                    str(data),
                    "--out",
                    str(run),
                    "--preset",
                    "tutorial",
                    "--weights",
                    "none",
                    "--image-size",
                    str(args.image_size),
                    "--epochs",
                    str(args.epochs),
                    "--precision",
                    args.precision,
                ],
                env={"PYTHONUNBUFFERED": "1"},
                log=work / f"floranet{i}.log",
            )
            if res["returncode"] != 0:
                sys.exit(f"floranet train failed: see {work / f'floranet{i}.log'}")
            timings = json.loads((run / "metrics.json").read_text()).get("timings_s", {})
            shutil.rmtree(run, ignore_errors=True)
            when = "before" if i < (args.floranet_runs + 1) // 2 else "after"
            return {
                "job": f"floranet train --preset tutorial ({args.precision}), run {i + 1}, {when} the reference",
                **res,
                "stages": timings,
            }

        before = (args.floranet_runs + 1) // 2
        flo = [floranet(i) for i in range(before)]
        ref_json = work / "reference.json"
        ref = run_measured(
            [
                python(),
                str(ROOT / "benchmarks/reference/tutorial_reference.py"),
                "--data",
                str(data),
                "--weights",
                "none",
                "--image-size",
                str(args.image_size),
                "--epochs",
                str(args.epochs),
                "--json",
                str(ref_json),
            ],
            log=work / "reference.log",
        )
        if ref["returncode"] != 0:
            sys.exit(f"reference failed: see {work / 'reference.log'}")
        flo += [floranet(i) for i in range(before, args.floranet_runs)]
        rows.append({"job": "tutorial script (keras.applications, fit 5 epochs)", **ref})
        rows += flo
        mean = sum(r["wall_seconds"] for r in flo) / len(flo)
        speedup = ref["wall_seconds"] / mean
        for r in rows:
            r["speedup_vs_tutorial"] = round(ref["wall_seconds"] / r["wall_seconds"], 2)
        print(table(rows, ["job", "wall_seconds", "peak_rss_mib", "speedup_vs_tutorial"]))
        print(
            f"floranet (mean of {len(flo)} runs, {mean:.1f} s) is {speedup:.1f}x faster than the tutorial's "
            f"script (target >= 8x)"
        )
        path = write_result(
            "train_vs_tutorial",
            {
                "rows": rows,
                "speedup": round(speedup, 2),
                "floranet_mean_seconds": round(mean, 2),
                "data": str(data),
                "epochs": args.epochs,
            },
            "python benchmarks/bench_train.py " + " ".join(sys.argv[1:]),
        )
        print(f"wrote {path}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
