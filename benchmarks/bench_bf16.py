"""Is bf16 (or int8) safe? Validation accuracy with bf16 (int8) vs fp32 backbone features, paired over seeds.

MobileNetV2 with real ImageNet weights (the bundled ones; results/bf16.json predates them and used
../shared's conversion) at 225 px on ../shared/data/flower_photos,
floranet's own split (seed 123) and stage-1 head recipe (tutorial and recommended presets).
Features of every image are computed once per runtime/precision (TensorFlow fp32, the
reference; OpenVINO fp32; OpenVINO bf16, or with --precision int8 OpenVINO int8: NNCF post-training
quantization calibrated on 300 training images, the rest of the graph in fp32 as on a CPU without bf16),
with floranet's extraction code, one batch at a time. Then, per seed (LOW = bf16 or int8):

* predictions: the head trained on fp32 features is evaluated on fp32 and on LOW validation
  features: the accuracy change LOW alone causes at inference (also the full classifier
  compiled in OpenVINO LOW vs TensorFlow fp32 on the validation images, for seed 0);
* features: a head trained *and* evaluated on LOW features vs one trained and evaluated on
  fp32 features, same seed, so training noise is paired. OpenVINO fp32 beside it shows
  how much a harmless change of runtime moves the same number.

Target: |mean change| < 0.5 points for both. One run of the head is noisy at the 1-point
level (625 validation images, 1 image = 0.16 points), hence seeds and paired differences.

--full-runs N adds N paired whole `floranet train` runs (recommended preset, fixed split, seeds 0..N-1) with
--precision fp32 and --precision LOW: stage-1 features *and* the stage-2 prefix cache in LOW, wall times
and final accuracies side by side.

    python benchmarks/bench_bf16.py [--precision bf16|int8] [--seeds 5] [--image-size 225] [--full-runs 0]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FLOWERS, MOBILENET_NOTOP, control_noise, table, write_result

FULL_RUNS_PRESET = "recommended"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-size", type=int, default=225)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--precision", choices=("bf16", "int8"), default="bf16")
    ap.add_argument("--full-runs", type=int, default=0)
    args = ap.parse_args()
    low = args.precision
    runtimes = (("tensorflow", "fp32"), ("openvino", "fp32"), ("openvino", low))
    if not FLOWERS.is_dir() or not MOBILENET_NOTOP.exists():
        sys.exit("needs ../shared (flower photos and MobileNetV2 weights)")

    import keras
    import numpy as np

    from floranet import config as config_lib
    from floranet.models import classifier
    from floranet.rundir import RunDir
    from floranet.training import data as data_lib
    from floranet.training import features
    from floranet.training.losses import compile_model

    work = Path(tempfile.mkdtemp(prefix="floranet-bench-bf16-"))
    try:
        cfg = config_lib.resolve(
            data_dir=str(FLOWERS),
            out=str(work / "run"),
            preset="tutorial",
            backbone="mobilenet_v2",
            weights=str(MOBILENET_NOTOP),
            image_size=args.image_size,
        )
        (work / "run").mkdir()
        prepared = data_lib.prepare(cfg, RunDir(work / "run"), resume=False, progress=False, say=lambda m: None)
        split = prepared.split
        names = list(split.class_names)
        model = classifier.build_classifier(
            "mobilenet_v2", len(names), image_size=args.image_size, weights=str(MOBILENET_NOTOP)
        )
        extractor_model = classifier.feature_extractor(model)
        rows = split.rows
        paths = [str(prepared.abs_path(r.path)) for r in rows]
        hashes = [r.sha256 for r in rows]

        feats: dict[str, dict[str, np.ndarray]] = {}
        extraction = []
        for rt, prec in runtimes:
            key = f"{rt} {prec}"
            start = time.perf_counter()
            fn = compiled(extractor_model, rt, prec, prepared)
            prepare_s = time.perf_counter() - start
            start = time.perf_counter()
            feats[key] = features.extract(
                fn,
                paths,
                hashes,
                cache_dir=work / key.replace(" ", "-"),
                image_size=cfg.image_size,
                batch_size=32,
                progress=False,
            )
            seconds = time.perf_counter() - start
            extraction.append(
                {
                    "features": key,
                    "images": len(feats[key]),
                    "prepare_s": round(prepare_s, 1),
                    "seconds": round(seconds, 1),
                    "img_per_s": round(len(feats[key]) / seconds, 1),
                }
            )
            print(f"{key}: {len(feats[key])} images in {extraction[-1]['seconds']} s", flush=True)
        ref = feats["tensorflow fp32"]
        ov32 = next(e["img_per_s"] for e in extraction if e["features"] == "openvino fp32")
        for e in extraction:
            e["speed_vs_openvino_fp32"] = round(e["img_per_s"] / ov32, 2)
            f = feats[e["features"]]
            diff = [np.linalg.norm(f[h] - ref[h]) / max(np.linalg.norm(ref[h]), 1e-12) for h in ref]
            e["relative_l2_vs_tf_fp32_mean"] = float(np.mean(diff))
            e["relative_l2_vs_tf_fp32_max"] = float(np.max(diff))

        def arrays(key: str, subset: list) -> tuple[np.ndarray, np.ndarray]:
            return (
                np.stack([feats[key][r.sha256] for r in subset]),
                np.asarray([split.label_index(r.label) for r in subset], np.int32),
            )

        train_rows, val_rows = split.train(), split.validation()
        y_val = arrays("tensorflow fp32", val_rows)[1]

        def head_for(preset: str, key: str, seed: int) -> keras.Model:
            c = config_lib.resolve(
                data_dir=str(FLOWERS), preset=preset, backbone="mobilenet_v2", image_size=args.image_size
            )
            keras.utils.set_random_seed(seed)
            x, y = arrays(key, train_rows)
            head = classifier.build_head(x.shape[1], len(names), units=c.head_units, dropout=c.dropout)
            compile_model(head, c.learning_rate, c)
            head.fit(x, y, epochs=c.epochs, batch_size=c.batch_size, shuffle=True, verbose=0)
            return head

        def accuracy(head: keras.Model, key: str) -> float:
            probs = head.predict(arrays(key, val_rows)[0], batch_size=256, verbose=0)
            return float(np.mean(np.argmax(probs, 1) == y_val))

        results = []
        for preset in ("tutorial", "recommended"):
            for seed in range(args.seeds):
                trained = {key: head_for(preset, key, seed) for key in feats}
                fp32 = accuracy(trained["tensorflow fp32"], "tensorflow fp32")
                results.append(
                    {
                        "preset": preset,
                        "seed": seed,
                        "acc_fp32": fp32,
                        "pred_low": accuracy(trained["tensorflow fp32"], f"openvino {low}") - fp32,
                        "pred_ov_fp32": accuracy(trained["tensorflow fp32"], "openvino fp32") - fp32,
                        "feat_low": accuracy(trained[f"openvino {low}"], f"openvino {low}") - fp32,
                        "feat_ov_fp32": accuracy(trained["openvino fp32"], "openvino fp32") - fp32,
                    }
                )
                print(
                    f"{preset} seed {seed}: "
                    + ", ".join(
                        f"{k} {v:+.4f}" if k != "acc_fp32" else f"{k} {v:.4f}"
                        for k, v in results[-1].items()
                        if k not in ("preset", "seed")
                    ),
                    flush=True,
                )
                if preset == "tutorial" and seed == 0:
                    full = full_model_check(model, trained["tensorflow fp32"], prepared, y_val, low)

        summary = []
        for preset in ("tutorial", "recommended"):
            rs = [r for r in results if r["preset"] == preset]
            for col, what in (
                ("pred_low", f"{low} predictions (head trained on fp32 features)"),
                ("pred_ov_fp32", "OpenVINO fp32 predictions (same head)"),
                ("feat_low", f"{low} features for training and evaluation"),
                ("feat_ov_fp32", "OpenVINO fp32 features for training and evaluation"),
            ):
                d = 100 * np.asarray([r[col] for r in rs])
                summary.append(
                    {
                        "preset": preset,
                        "change": what,
                        "mean_points": round(float(d.mean()), 2),
                        "std_points": round(float(d.std(ddof=1)) if len(d) > 1 else 0.0, 2),
                        "min": round(float(d.min()), 2),
                        "max": round(float(d.max()), 2),
                        "seeds": len(d),
                        "fp32_accuracy_mean": round(float(np.mean([r["acc_fp32"] for r in rs])), 4),
                    }
                )
        print(
            table(
                extraction,
                [
                    "features",
                    "images",
                    "prepare_s",
                    "seconds",
                    "img_per_s",
                    "speed_vs_openvino_fp32",
                    "relative_l2_vs_tf_fp32_mean",
                    "relative_l2_vs_tf_fp32_max",
                ],
            )
        )
        print(
            table(
                summary, ["preset", "change", "mean_points", "std_points", "min", "max", "seeds", "fp32_accuracy_mean"]
            )
        )
        print(
            f"full classifier on {full['images']} validation images, OpenVINO {low} vs TensorFlow fp32: "
            f"top-1 agreement {full['top1_agreement']:.4f}, accuracy change {full['delta_points']:+.2f} points, "
            f"max probability difference {full['max_prob_diff']:.4f}"
        )
        low_rows = [s for s in summary if s["change"].startswith(low)]
        worst = max([abs(s["mean_points"]) for s in low_rows] + [abs(full["delta_points"])])
        runs = full_runs(args.full_runs, low, args.image_size, work) if args.full_runs else None
        if runs:
            worst = max(worst, abs(runs["mean_points"]))
        passed = worst < 0.5
        noise = control_noise(summary)
        print(
            f"largest accuracy change from {low} (seed means, the full classifier's one run, whole runs' mean): "
            f"{worst:.2f} points (target < 0.5): "
            + ("PASS" if passed else "FAIL")
            + f"; the fp32 control moved it by up to {noise:.2f} points (|mean| + sd), "
            + ("so the bar is within this run's noise" if noise >= 0.5 else "below the bar")
        )
        out = write_result(
            low,
            {
                "precision": low,
                "control_noise_points": noise,
                "full_runs": runs,
                "image_size": args.image_size,
                "extraction": extraction,
                "per_seed": results,
                "summary": summary,
                "full_model": full,
                "max_mean_delta_points": worst,
                "target_points": 0.5,
                "passed": passed,
            },
            "python benchmarks/bench_bf16.py " + " ".join(sys.argv[1:]),
        )
        print(f"wrote {out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def compiled(model, rt: str, precision: str, prepared):
    """``model`` on ``rt`` in ``precision``, one batch at a time; int8 calibrated on 300 training images, its
    unquantized rest in fp32 (what a CPU without bf16 runs)."""
    from floranet.inference import runtime

    if precision != "int8":
        return runtime.compile_inference(model, runtime.RuntimeChoice(rt, precision, "benchmark"))
    quantized = runtime.quantize_int8(runtime.to_openvino(model), prepared.calibration_images("int8"))
    return runtime.OpenVINOInference(quantized, "fp32")


def full_model_check(model, head, prepared, y_val, low: str) -> dict:
    """The whole classifier (backbone + trained head) in OpenVINO ``low`` vs TensorFlow fp32."""
    import numpy as np

    from floranet.models import classifier

    classifier.head_of(model).set_weights(head.get_weights())
    probs = {}
    for rt, prec in (("tensorflow", "fp32"), ("openvino", low)):
        fn = compiled(model, rt, prec, prepared)
        out, got = [], []
        for images, index in prepared.dataset("validation", with_index=True):
            out.append(fn(images.numpy()))
            got.extend(index.numpy().tolist())
        probs[prec] = np.concatenate(out)
    labels = y_val[np.asarray(got)]
    a32, alow = (np.argmax(probs[p], 1) for p in ("fp32", low))
    return {
        "images": len(got),
        "top1_agreement": float(np.mean(a32 == alow)),
        "delta_points": round(100 * float(np.mean(alow == labels) - np.mean(a32 == labels)), 2),
        "max_prob_diff": float(np.abs(probs["fp32"] - probs[low]).max()),
    }


def full_runs(n: int, low: str, image_size: int, work: Path) -> dict:
    """``n`` paired `floranet train` runs, fp32 vs ``low`` (features and the stage-2 prefix), same split."""
    import json

    from common import python, run_measured

    rows, split = [], []
    for seed in range(n):
        pair = {}
        for precision in ("fp32", low):
            out = work / f"full-{precision}-{seed}"
            cmd = [
                python(),
                "-c",
                "import sys; from floranet.cli import main; sys.exit(main())",
                "train",
                str(FLOWERS),
                "--out",
                str(out),
                "--preset",
                FULL_RUNS_PRESET,
                "--backbone",
                "mobilenet_v2",
                "--weights",
                str(MOBILENET_NOTOP),
                "--image-size",
                str(image_size),
                "--seed",
                str(seed),
                "--precision",
                precision,
                *split,
            ]
            res = run_measured(cmd, env={"PYTHONUNBUFFERED": "1"}, log=work / f"full-{precision}-{seed}.log")
            if res["returncode"]:
                sys.exit(f"floranet train failed, see {work / f'full-{precision}-{seed}.log'}")
            split = split or ["--split-file", str(out / "split.csv")]  # every run on the first run's split
            m = json.loads((out / "metrics.json").read_text())
            pair[precision] = {"accuracy": m["accuracy"], **res, **m["timings_s"]}
        rows.append(
            {
                "seed": seed,
                "acc_fp32": pair["fp32"]["accuracy"],
                f"acc_{low}": pair[low]["accuracy"],
                "delta_points": round(100 * (pair[low]["accuracy"] - pair["fp32"]["accuracy"]), 2),
                "wall_fp32": pair["fp32"]["wall_seconds"],
                f"wall_{low}": pair[low]["wall_seconds"],
                "stage1_fp32": pair["fp32"]["stage1"],
                f"stage1_{low}": pair[low]["stage1"],
                "stage2_fp32": pair["fp32"]["stage2"],
                f"stage2_{low}": pair[low]["stage2"],
            }
        )
        print(rows[-1], flush=True)
    import numpy as np

    d = np.asarray([r["delta_points"] for r in rows])
    summary = {
        "runs": rows,
        "mean_points": round(float(d.mean()), 2),
        "std_points": round(float(d.std(ddof=1)) if n > 1 else 0.0, 2),
        "stage1_speed": round(sum(r["stage1_fp32"] for r in rows) / sum(r[f"stage1_{low}"] for r in rows), 2),
        "stage2_speed": round(sum(r["stage2_fp32"] for r in rows) / sum(r[f"stage2_{low}"] for r in rows), 2),
    }
    print(table(rows, list(rows[0])))
    print(
        f"whole runs, {low} vs fp32: mean change {summary['mean_points']:+.2f} points (sd {summary['std_points']}), "
        f"stage 1 {summary['stage1_speed']}x, stage 2 {summary['stage2_speed']}x faster"
    )
    return summary


if __name__ == "__main__":
    main()
