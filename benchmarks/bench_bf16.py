"""Is bf16 safe? Validation accuracy with bf16 vs fp32 backbone features, paired over seeds.

MobileNetV2 with real ImageNet weights (the bundled ones; results/bf16.json predates them and used
../shared's conversion) at 225 px on ../shared/data/flower_photos,
floranet's own split (seed 123) and stage-1 head recipe (tutorial and recommended presets).
Features of every image are computed once per runtime/precision (TensorFlow fp32, the
reference; OpenVINO fp32; OpenVINO bf16), with floranet's extraction code. Then, per seed:

* predictions: the head trained on fp32 features is evaluated on fp32 and on bf16 validation
  features: the accuracy change bf16 alone causes at inference (also the full classifier
  compiled in OpenVINO bf16 vs TensorFlow fp32 on the validation images, for seed 0);
* features: a head trained *and* evaluated on bf16 features vs one trained and evaluated on
  fp32 features, same seed, so training noise is paired. OpenVINO fp32 beside it shows
  how much a harmless change of runtime moves the same number.

Target: |mean change| < 0.5 points for both. One run of the head is noisy at the 1-point
level (624 validation images, 1 image = 0.16 points), hence seeds and paired differences.

    python benchmarks/bench_bf16.py [--seeds 5] [--image-size 225]
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
from common import FLOWERS, MOBILENET_NOTOP, table, write_result

RUNTIMES = (("tensorflow", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-size", type=int, default=225)
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    if not FLOWERS.is_dir() or not MOBILENET_NOTOP.exists():
        sys.exit("needs ../shared (flower photos and MobileNetV2 weights)")

    import keras
    import numpy as np

    from floranet import config as config_lib
    from floranet.inference import runtime
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
        for rt, prec in RUNTIMES:
            key = f"{rt} {prec}"
            fn = runtime.compile_inference(extractor_model, runtime.RuntimeChoice(rt, prec, "benchmark"))
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
            extraction.append(
                {"features": key, "seconds": round(time.perf_counter() - start, 1), "images": len(feats[key])}
            )
            print(f"{key}: {len(feats[key])} images in {extraction[-1]['seconds']} s", flush=True)
        ref = feats["tensorflow fp32"]
        for e in extraction:
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
                        "pred_bf16": accuracy(trained["tensorflow fp32"], "openvino bf16") - fp32,
                        "pred_ov_fp32": accuracy(trained["tensorflow fp32"], "openvino fp32") - fp32,
                        "feat_bf16": accuracy(trained["openvino bf16"], "openvino bf16") - fp32,
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
                    full = full_model_check(model, trained["tensorflow fp32"], prepared, val_rows, y_val)

        summary = []
        for preset in ("tutorial", "recommended"):
            rs = [r for r in results if r["preset"] == preset]
            for col, what in (
                ("pred_bf16", "bf16 predictions (head trained on fp32 features)"),
                ("pred_ov_fp32", "OpenVINO fp32 predictions (same head)"),
                ("feat_bf16", "bf16 features for training and evaluation"),
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
                ["features", "images", "seconds", "relative_l2_vs_tf_fp32_mean", "relative_l2_vs_tf_fp32_max"],
            )
        )
        print(
            table(
                summary, ["preset", "change", "mean_points", "std_points", "min", "max", "seeds", "fp32_accuracy_mean"]
            )
        )
        print(
            f"full classifier on {full['images']} validation images, OpenVINO bf16 vs TensorFlow fp32: "
            f"top-1 agreement {full['top1_agreement']:.4f}, accuracy change {full['delta_points']:+.2f} points, "
            f"max probability difference {full['max_prob_diff']:.4f}"
        )
        bf16_rows = [s for s in summary if "bf16" in s["change"]]
        worst = max([abs(s["mean_points"]) for s in bf16_rows] + [abs(full["delta_points"])])
        passed = worst < 0.5
        print(
            f"largest mean accuracy change from bf16: {worst:.2f} points (target < 0.5): {'PASS' if passed else 'FAIL'}"
        )
        out = write_result(
            "bf16",
            {
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


def full_model_check(model, head, prepared, val_rows, y_val) -> dict:
    """The whole classifier (backbone + trained head) in OpenVINO bf16 vs TensorFlow fp32."""
    import numpy as np

    from floranet.inference import runtime
    from floranet.models import classifier

    classifier.head_of(model).set_weights(head.get_weights())
    probs = {}
    for rt, prec in (("tensorflow", "fp32"), ("openvino", "bf16")):
        fn = runtime.compile_inference(model, runtime.RuntimeChoice(rt, prec, "benchmark"))
        out, got = [], []
        for images, index in prepared.dataset("validation", with_index=True):
            out.append(fn(images.numpy()))
            got.extend(index.numpy().tolist())
        probs[prec] = np.concatenate(out)
    labels = y_val[np.asarray(got)]
    a32, a16 = (np.argmax(probs[p], 1) for p in ("fp32", "bf16"))
    return {
        "images": len(got),
        "top1_agreement": float(np.mean(a32 == a16)),
        "delta_points": round(100 * float(np.mean(a16 == labels) - np.mean(a32 == labels)), 2),
        "max_prob_diff": float(np.abs(probs["fp32"] - probs["bf16"]).max()),
    }


if __name__ == "__main__":
    main()
