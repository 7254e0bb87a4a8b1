"""Time to accuracy of `floranet train` (recommended preset): this code vs a baseline commit, same split.

Both train Keras's MobileNetV2 (``keras:mobilenet_v2``: the baseline's ``mobilenet_v2``) with ../shared's
converted ImageNet weights at 225 px on ../shared/data/flower_photos with each code's own recommended preset
(the baseline's: up to 20 cached-feature epochs, then 5 fine-tuning epochs with augmentation at lr 1e-5; this
code's: up to 20, then 2 fine-tuning epochs on the cached prefix outputs, no augmentation, lr 1e-4). The
baseline (default: the main branch before stage 2 trained on cached prefix outputs) runs first from a
`git archive` of its source, in a child process with the same virtual environment; its split.csv is reused by every
other run, so all accuracies are on the same 625 validation images. Each run is a fresh process: wall seconds
include imports, data checks, both stages, the final evaluation and the compiled export.

    python benchmarks/bench_time_to_accuracy.py [--baseline-ref c86ec50] [--variant NAME=FLAGS ...]
        [--resnet50-memory]

--variant adds runs of this code with extra flags, e.g. ``--variant "10 epochs=--fine-tune-epochs 10"``;
--resnet50-memory adds the peak-memory check (ResNet50, random weights, 180 px, recommended preset).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    BASELINE_REF,
    CLI,
    FLOWERS,
    SHARED_MOBILENET_NOTOP,
    baseline_source,
    python,
    result_name,
    run_measured,
    table,
    write_result,
)


def train(label: str, args: list[str], run: Path, log: Path, src: Path | None = None) -> dict[str, Any]:
    """One `floranet train` in a child process; its wall time, peak RSS, accuracy and stage timings."""
    env = {"PYTHONUNBUFFERED": "1", **({"PYTHONPATH": str(src)} if src else {})}
    res = run_measured([python(), "-c", CLI, "train", *args, "--out", str(run)], env=env, log=log)
    if res["returncode"]:
        sys.exit(f"{label} failed, see {log}")
    metrics = json.loads((run / "metrics.json").read_text())
    timings = metrics.get("timings_s", {})
    return {
        "run": label,
        "val_accuracy": metrics["accuracy"],
        **res,
        "stage1_s": timings.get("stage1"),
        "stage2_s": timings.get("stage2"),
        "num_val": metrics.get("num_examples"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(FLOWERS))
    ap.add_argument("--weights", default=str(SHARED_MOBILENET_NOTOP))
    ap.add_argument("--image-size", type=int, default=225)
    ap.add_argument("--baseline-ref", default=BASELINE_REF)
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=FLAGS")
    ap.add_argument("--resnet50-memory", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the run directories")
    args = ap.parse_args()
    for need in (args.data, args.weights):
        if not Path(need).exists():
            sys.exit(f"{need} not found: this benchmark needs ../shared (data and weights)")
    work = Path(tempfile.mkdtemp(prefix="floranet-bench-tta-"))
    common = [
        args.data,
        "--preset",
        "recommended",
        "--backbone",
        "keras:mobilenet_v2",  # ../shared's file is in Keras's layout (floranet's mobilenet_v2 takes the bundled one)
        "--weights",
        args.weights,
        "--image-size",
        str(args.image_size),
    ]
    try:
        src = baseline_source(args.baseline_ref, work / "baseline-src")
        rows = [train(f"baseline {args.baseline_ref}", common, work / "baseline", work / "baseline.log", src)]
        split = ["--split-file", str(work / "baseline" / "split.csv")]
        rows.append(train("this code", [*common, *split], work / "new", work / "new.log"))
        for i, variant in enumerate(args.variant):
            name, _, flags = variant.partition("=")
            rows.append(
                train(f"this code, {name}", [*common, *split, *shlex.split(flags)], work / f"v{i}", work / f"v{i}.log")
            )
        base = rows[0]["wall_seconds"]
        for r in rows:
            r["time_vs_baseline"] = round(r["wall_seconds"] / base, 3)
        print(
            table(
                rows,
                ["run", "val_accuracy", "wall_seconds", "time_vs_baseline", "stage1_s", "stage2_s", "peak_rss_mib"],
            )
        )
        memory = None
        if args.resnet50_memory:
            memory = train(
                "resnet50 180 px, random weights",
                [
                    args.data,
                    "--preset",
                    "recommended",
                    "--backbone",
                    "resnet50",
                    "--weights",
                    "none",
                    "--image-size",
                    "180",
                    *split,
                ],
                work / "r50",
                work / "r50.log",
            )
            print(
                f"ResNet50 180 px recommended preset: peak RSS {memory['peak_rss_mib']:.0f} MiB "
                f"(target < 4096), {memory['wall_seconds']:.0f} s"
            )
        new = rows[1]
        print(
            f"this code: {new['val_accuracy']:.1%} in {new['wall_seconds']:.0f} s = {new['time_vs_baseline']:.2f} "
            f"of the baseline's {base:.0f} s ({rows[0]['val_accuracy']:.1%}); targets >= 92% in <= 0.25"
        )
        out = write_result(  # runs with --variant get a file of their own: the headline result stays
            result_name("time_to_accuracy", *(v.partition("=")[0] for v in args.variant)),
            {"rows": rows, "baseline_ref": args.baseline_ref, "image_size": args.image_size, "resnet50_memory": memory},
            "python benchmarks/bench_time_to_accuracy.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        )
        print(f"wrote {out}")
        if args.keep:
            print(f"runs kept in {work}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
