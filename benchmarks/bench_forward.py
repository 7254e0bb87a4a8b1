"""Backbone forward throughput per runtime and precision, against the machine's measured matmul peak.

Measures in one run: the fp32 and bf16 matrix-product peak (TensorFlow, 4096²),
then ResNet50 feature extraction (our ResNet50, random weights: speed does not
depend on the values) at 180 and 224 px, batch 1 and 32, on TensorFlow fp32,
TensorFlow mixed bf16, OpenVINO fp32/bf16, ONNX Runtime fp32 (when installed),
and floranet's own automatic choice as stage-1 feature extraction runs it
(runtime.choose("auto", "auto"), compiled with streaming=True: several batches in flight).

    python benchmarks/bench_forward.py [--sizes 180 224] [--batches 1 32] [--seconds 6]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import keras
import numpy as np
import tensorflow as tf

from common import table, write_result
from floranet.inference import runtime
from floranet.models import classifier


def matmul_peak(dtype: tf.DType, n: int = 4096, seconds: float = 4.0) -> float:
    a = tf.random.normal((n, n), dtype=tf.float32)
    a, b = tf.cast(a, dtype), tf.cast(tf.transpose(a), dtype)
    fn = tf.function(lambda x, y: tf.matmul(x, y))
    fn(a, b).numpy()
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn(a, b).numpy()
        runs += 1
    return 2 * n**3 * runs / (time.perf_counter() - start) / 1e9


def model_gflops(model: keras.Model) -> float:
    """Multiply-adds ×2 of every convolution and dense layer, from the layer shapes."""
    total = 0
    for layer in _flat_layers(model):
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            k = int(np.prod(layer.kernel_size))
            total += 2 * h * w * c_out * k * layer.input.shape[-1] // layer.groups
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * layer.input.shape[-1] * layer.units
    return total / 1e9


def _flat_layers(model: keras.Model) -> list:
    out = []
    for layer in model.layers:
        out.extend(_flat_layers(layer) if isinstance(layer, keras.Model) else [layer])
    return out


def throughput(fn, x: np.ndarray, seconds: float) -> float:
    if hasattr(fn, "map"):  # floranet's streaming extractor: batches kept in flight, as in stage 1
        list(fn.map([x, x, x]))
        runs, start = 0, time.perf_counter()

        def stream():
            while time.perf_counter() - start < seconds or runs < 3:
                yield x

        for _ in fn.map(stream()):
            runs += 1
        return runs * len(x) / (time.perf_counter() - start)
    fn(x)
    fn(x)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or runs < 3:
        fn(x)
        runs += 1
    return runs * len(x) / (time.perf_counter() - start)


def extractor(size: int, precision: str) -> keras.Model:
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if precision == "bf16" else "float32")
    try:
        model = classifier.build_classifier("resnet50", 5, image_size=size, weights=None)
        return classifier.feature_extractor(model)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def onnx_fn(model: keras.Model):
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    model(np.zeros((1, *model.input_shape[1:]), "float32"))  # Keras exports only models that were called
    tmp = tempfile.mkdtemp(prefix="floranet-onnx-")
    path = os.path.join(tmp, "model.onnx")
    try:
        model.export(path, format="onnx", verbose=False)
    except Exception as e:  # noqa: BLE001 - report and skip the row
        print(f"onnx export failed: {e}")
        return None
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[180, 224])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--seconds", type=float, default=6.0)
    args = ap.parse_args()

    peak32 = matmul_peak(tf.float32)
    peak16 = matmul_peak(tf.bfloat16)
    print(f"matmul peak: fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.0f} GFLOP/s")
    auto = runtime.choose("auto", "auto")
    print(f"floranet auto: {auto.key} ({auto.reason})")
    rows = []
    for size in args.sizes:
        fp32_model = extractor(size, "fp32")
        bf16_model = extractor(size, "bf16")
        gflop = model_gflops(fp32_model)
        candidates = {
            "tensorflow fp32": lambda m=fp32_model: runtime.compile_inference(
                m, runtime.RuntimeChoice("tensorflow", "fp32", "")
            ),
            "tensorflow bf16 (mixed)": lambda m=bf16_model: runtime.compile_inference(
                m, runtime.RuntimeChoice("tensorflow", "bf16", "")
            ),
            "onnxruntime fp32": lambda m=fp32_model: onnx_fn(m),
        }
        if runtime.openvino_available():
            for p in ("fp32", "bf16"):
                candidates[f"openvino {p}"] = lambda p=p, m=fp32_model: runtime.compile_inference(
                    m, runtime.RuntimeChoice("openvino", p, "")
                )
        auto_model = bf16_model if (auto.runtime == "tensorflow" and auto.precision == "bf16") else fp32_model
        # Exactly what stage 1 builds: the auto choice, compiled for a stream of batches.
        candidates[f"floranet auto ({auto.key})"] = lambda m=auto_model: runtime.compile_inference(
            m, auto, streaming=True
        )
        fns = {name: make() for name, make in candidates.items()}
        for batch in args.batches:
            x = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype("float32")
            base = None
            for name, fn in fns.items():
                if fn is None:
                    continue
                ips = throughput(fn, x, args.seconds)
                base = base or ips
                peak = peak16 if "bf16" in name else peak32
                rows.append(
                    {
                        "size": size,
                        "batch": batch,
                        "runtime": name,
                        "img_per_s": round(ips, 1),
                        "gflop_per_img": round(gflop, 2),
                        "pct_of_peak": round(100 * ips * gflop / peak, 1),
                        "vs_tf_fp32": round(ips / base, 2),
                    }
                )
                print(table(rows[-1:], list(rows[-1])), flush=True)
    print()
    print(table(rows, ["size", "batch", "runtime", "img_per_s", "vs_tf_fp32", "pct_of_peak"]))
    checks = []
    for size in args.sizes:
        r = {
            row["runtime"]: row["img_per_s"]
            for row in rows
            if row["size"] == size and row["batch"] == max(args.batches)
        }
        ours = next(v for k, v in r.items() if k.startswith("floranet auto"))
        fastest = max(v for k, v in r.items() if not k.startswith("floranet auto"))
        checks.append(
            {
                "size": size,
                "floranet_vs_fastest": round(ours / fastest, 2),
                "floranet_vs_tf_fp32": round(ours / r["tensorflow fp32"], 2),
            }
        )
    print(table(checks, ["size", "floranet_vs_fastest", "floranet_vs_tf_fp32"]))
    print("targets at 180 px: floranet_vs_fastest >= 0.9 and floranet_vs_tf_fp32 >= 2")
    out = write_result(
        "forward",
        {
            "matmul_gflops": {"fp32": round(peak32), "bf16": round(peak16)},
            "auto": {"runtime": auto.runtime, "precision": auto.precision, "reason": auto.reason},
            "rows": rows,
            "checks": checks,
        },
        "python benchmarks/bench_forward.py " + " ".join(sys.argv[1:]),
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
