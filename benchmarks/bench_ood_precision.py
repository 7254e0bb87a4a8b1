"""How far the unknown score moves between the precisions that compute it.

The threshold is fitted on the scores of the training job's own outputs (on a bf16 CPU, stage 1's bf16 cache);
``predict`` on a few images runs fp32 and ``serve`` bf16 where the CPU has it. This trains the recommended preset on
the bundled mini_flowers sample (MobileNetV2 with its bundled weights, 161 px; about 20 s) and scores the run's
validation images through TensorFlow fp32, OpenVINO fp32 and OpenVINO bf16 (bf16 only on a CPU with native bf16):
the share kept under the threshold by each, and how far the scores differ. Needs no ../shared.

    python benchmarks/bench_ood_precision.py

Result: results/ood_precision.json.
"""

from __future__ import annotations

import csv
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table, write_result

SETTINGS = {"backbone": "mobilenet_v2", "image_size": 161, "audit": False}


def main() -> None:
    import floranet
    from floranet import config
    from floranet.data.datasets import mini_flowers_path
    from floranet.inference.unknown import UnknownDetector
    from floranet.utils.system import native_bf16
    from floranet.workflows import train

    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "run"
        cfg = config.resolve(data_dir=str(mini_flowers_path()), out=str(out), **SETTINGS)
        train(cfg, progress=False, say=lambda _: None)
        detector = UnknownDetector.load(out)
        assert detector is not None
        with open(out / "split.csv", newline="") as f:
            files = [str(mini_flowers_path() / r["path"]) for r in csv.DictReader(f) if r["split"] == "validation"]
        ways = [("tensorflow", "fp32"), ("openvino", "fp32")] + ([("openvino", "bf16")] if native_bf16() else [])
        scores = {}
        for rt, prec in ways:
            got = floranet.load(out, runtime=rt, precision=prec).predict_files(files, with_unknown=True)
            scores[f"{rt} {prec}"] = got.outputs[:, -1]
    reference = scores["tensorflow fp32"]
    rows = [
        {
            "computed_by": name,
            "kept": round(float(np.mean(s <= detector.threshold)), 4),
            "max_abs_diff_vs_tf_fp32": round(float(np.abs(s - reference).max()), 4),
            "median_abs_diff_vs_tf_fp32": round(float(np.median(np.abs(s - reference))), 4),
        }
        for name, s in scores.items()
    ]
    print(table(rows, list(rows[0])))
    payload = {
        "rows": rows,
        "threshold": round(float(detector.threshold), 4),
        "recorded_kept": detector.info.get("validation_kept"),
        "score_std": round(float(reference.std()), 4),
        "validation_images": len(files),
        "settings": SETTINGS,
    }
    recorded = payload["recorded_kept"]
    print(f"threshold {payload['threshold']}, kept as recorded {recorded}, score sd {payload['score_std']}")
    write_result("ood_precision", payload, "python benchmarks/bench_ood_precision.py")


if __name__ == "__main__":
    main()
