"""The run's compiled inference model: an OpenVINO IR of ``model.keras``, checked against it once, so that
``predict``, ``evaluate`` and ``serve`` start without importing TensorFlow (about 6 s of a cold start).

``train`` (and ``floranet export``) write ``RUN_DIR/inference/model.xml`` + ``model.bin`` and
``inference/compiled.json``: the agreement with ``model.keras`` on validation images (top-1 and the largest
probability difference, with OpenVINO computing in fp32), and the size, time and sha256 of the ``model.keras``
it was made from. :func:`usable` accepts it only when it agrees and ``model.keras`` is the one it was made from;
anything else falls back to ``model.keras``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from floranet.rundir import RunDir
from floranet.utils import optional
from floranet.utils.files import write_json
from floranet.utils.system import package_version

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)
MAX_ABS_DIFF = 1e-4  # fp32 IR vs TensorFlow fp32: float rounding only
CHECK_IMAGES = 64


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def compile_run(run: RunDir, model: keras.Model, pixels: np.ndarray) -> dict[str, Any] | None:
    """Writes the run's IR and checks it against ``model`` on ``pixels`` (float32 ``[N, H, W, 3]``).

    Returns:
        What ``compiled.json`` records, or None when OpenVINO is not installed (nothing is written).
    """
    if not optional.available("openvino"):
        log.info("OpenVINO is not installed: no compiled inference model (predict loads model.keras)")
        return None
    from floranet.inference.runtime import OpenVINOInference, RuntimeChoice, compile_inference, to_openvino

    ov = optional.require("openvino", "a compiled inference model")
    ov_model = to_openvino(model)
    folder = run / RunDir.COMPILED
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        ov.save_model(ov_model, str(tmp / RunDir.COMPILED_XML), compress_to_fp16=False)
        check = _agreement(
            OpenVINOInference.from_ir(tmp / RunDir.COMPILED_XML, "fp32"),
            compile_inference(model, RuntimeChoice("tensorflow", "fp32", "reference")),
            pixels,
        )
        stat = run.model_file.stat()
        info = {
            "format": "openvino-ir",
            "openvino": package_version("openvino"),
            "model": {"sha256": _file_digest(run.model_file), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns},
            "image_size": [int(d) for d in model.inputs[0].shape[1:3]],
            **check,
            "agrees": check["images"] > 0 and check["top1_agreement"] == 1.0 and check["max_abs_diff"] <= MAX_ABS_DIFF,
        }
        write_json(tmp / RunDir.COMPILED_INFO, info)
        if folder.exists():
            shutil.rmtree(folder)  # our own compiled model, replaced by the new one
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info


def _agreement(compiled: Any, reference: Any, pixels: np.ndarray) -> dict[str, Any]:
    pixels = pixels[:CHECK_IMAGES]
    if not len(pixels):
        return {"images": 0, "top1_agreement": None, "max_abs_diff": None}
    got, want = np.asarray(compiled(pixels)), np.asarray(reference(pixels))
    return {
        "images": len(pixels),
        "top1_agreement": float(np.mean(got.argmax(1) == want.argmax(1))),
        "max_abs_diff": float(np.max(np.abs(got.astype(np.float64) - want))),
    }


def usable(run: RunDir) -> Path | None:
    """The run's IR (``model.xml``) when it agrees with the ``model.keras`` now in the run, else None."""
    info = run.read_json(f"{RunDir.COMPILED}/{RunDir.COMPILED_INFO}")
    xml = run / RunDir.COMPILED / RunDir.COMPILED_XML
    if not info or not info.get("agrees") or not xml.exists() or not optional.available("openvino"):
        return None
    try:
        stat = run.model_file.stat()
    except OSError:
        return None
    made_from = info.get("model", {})
    same = stat.st_size == made_from.get("size") and (
        stat.st_mtime_ns == made_from.get("mtime_ns") or _file_digest(run.model_file) == made_from.get("sha256")
    )
    return xml if same else None
