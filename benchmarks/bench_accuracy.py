"""Accuracy: floranet's recommended preset vs the tutorial's recipe, same split and budget.

Both use MobileNetV2 with real ImageNet weights (by default the ones bundled with
floranet: torchvision's, converted) at 225 px on ../shared/data/flower_photos. The
tutorial's recipe (raw 0..255 pixels into a frozen keras.applications backbone, its
head, Adam 1e-3, 5 epochs) runs as benchmarks/reference/tutorial_reference.py, which
also writes the split it used; floranet trains on exactly that split (--split-file).

    python benchmarks/bench_accuracy.py [--epochs 5] [--image-size 225] [--result accuracy_bundled]
    # the earlier figures (results/accuracy.json), with ../shared's conversion in Keras's own MobileNetV2:
    python benchmarks/bench_accuracy.py --backbone keras:mobilenet_v2 \
        --weights ../shared/weights/mobilenet_v2_imagenet_tv_notop.weights.h5 --result accuracy
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FLOWERS, MOBILENET_NOTOP, ROOT, positive_int, python, run_measured, table, write_result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(FLOWERS))
    ap.add_argument("--weights", default=str(MOBILENET_NOTOP), help="default: the bundled file")
    ap.add_argument(
        "--backbone",
        default="mobilenet_v2",
        choices=["mobilenet_v2", "keras:mobilenet_v2"],
        help="floranet's name for the reference's model (Keras's MobileNetV2) with --weights",
    )
    ap.add_argument("--result", default="accuracy_bundled", help="results/<NAME>.json")
    ap.add_argument("--image-size", type=int, default=225)
    ap.add_argument(
        "--epochs", type=positive_int, default=5, help="the tutorial recipe's: the reference and floranet's tutorial"
    )
    ap.add_argument("--keep", action="store_true", help="keep the run directories")
    args = ap.parse_args()
    for need in (args.data, args.weights):
        if not Path(need).exists():
            sys.exit(f"{need} not found: this benchmark needs ../shared (data and weights)")
    work = Path(tempfile.mkdtemp(prefix="floranet-bench-acc-"))
    try:
        split = work / "split.csv"
        ref_json = work / "reference.json"
        ref = run_measured(
            [
                python(),
                str(ROOT / "benchmarks/reference/tutorial_reference.py"),
                "--data",
                args.data,
                "--backbone",
                "mobilenet_v2",
                "--weights",
                args.weights,
                "--image-size",
                str(args.image_size),
                "--epochs",
                str(args.epochs),
                "--json",
                str(ref_json),
                "--split-csv",
                str(split),
            ],
            log=work / "reference.log",
        )
        if ref["returncode"]:
            sys.exit(f"reference failed, see {work / 'reference.log'}")
        ref_acc = json.loads(ref_json.read_text())["val_accuracy"]
        rows = [{"recipe": f"tutorial (raw pixels, frozen, {args.epochs} epochs)", "val_accuracy": ref_acc, **ref}]
        floranet = str(Path(python()).parent / "floranet")
        for preset in ("tutorial", "recommended"):
            run = work / preset
            res = run_measured(
                [
                    floranet,
                    "train",
                    args.data,
                    "--out",
                    str(run),
                    "--preset",
                    preset,
                    "--backbone",
                    args.backbone,
                    "--weights",
                    args.weights,
                    "--image-size",
                    str(args.image_size),
                    "--split-file",
                    str(split),
                    # the tutorial's budget on both sides; the recommended preset keeps its own schedule
                    *(["--epochs", str(args.epochs)] if preset == "tutorial" else []),
                ],
                env={"PYTHONUNBUFFERED": "1"},
                log=work / f"{preset}.log",
            )
            if res["returncode"]:
                sys.exit(f"floranet {preset} failed, see {work / f'{preset}.log'}")
            m = json.loads((run / "metrics.json").read_text())
            label = {
                "tutorial": "floranet --preset tutorial (preprocessing inside)",
                "recommended": "floranet --preset recommended (two stages)",
            }[preset]
            rows.append({"recipe": label, "val_accuracy": m["accuracy"], **res, "num_val": m["num_examples"]})
        best = rows[-1]["val_accuracy"]
        print(table(rows, ["recipe", "val_accuracy", "wall_seconds", "peak_rss_mib"]))
        gain = (best - ref_acc) * 100
        print(
            f"recommended {best:.1%} vs tutorial recipe {ref_acc:.1%}: {gain:+.1f} points "
            f"(targets: >= 92% and >= +3 points)"
        )
        out = write_result(
            args.result,
            {
                "backbone": args.backbone,
                "weights": Path(args.weights).name,
                "rows": rows,
                "recommended": best,
                "tutorial_recipe": ref_acc,
                "gain_points": round(gain, 2),
                "image_size": args.image_size,
            },
            "python benchmarks/bench_accuracy.py " + " ".join(sys.argv[1:]),
        )
        print(f"wrote {out}")
        if args.keep:
            print(f"runs kept in {work}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
