"""Checking an export against ``model.keras`` (agreement, latency), and the README that records it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from floranet.errors import ModelError
from floranet.export.common import (
    CHECK_BATCH,
    LATENCY_IMAGES,
    MARKER,
    MODEL_FILES,
    SOURCE,
    WARMUP_CALLS,
    export_name,
    log,
)
from floranet.export.loaders import ExportedModel, traced
from floranet.export.metadata import DECODING, HOWTO
from floranet.export.rundata import ExportSource
from floranet.rundir import RunDir
from floranet.utils.text import figure_text, printable


def _batched(fn: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray) -> np.ndarray:
    return np.concatenate([fn(pixels[i : i + CHECK_BATCH]) for i in range(0, len(pixels), CHECK_BATCH)])


def _latency_ms(fn: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray) -> float:
    """Median wall time of one image (batch 1), after a few warm-up calls."""
    for _ in range(WARMUP_CALLS):
        fn(pixels[:1])
    times = []
    for i in range(min(len(pixels), LATENCY_IMAGES)):
        x = pixels[i : i + 1]
        start = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(times))


# The least an export must agree with model.keras on the checked validation images, by quantization: (share of
# images with the same top-1 class, largest |Δp| or None for no bound). fp32 formats differ by float rounding only.
TOLERANCE: dict[str | None, tuple[float, float | None]] = {
    None: (0.99, 1e-2),
    "fp16": (0.98, 5e-2),
    "int8": (0.90, None),
}


def agrees(quantize: str | None, agreement: float | None, max_abs_diff: float | None) -> bool | None:
    """Whether a checked export is within :data:`TOLERANCE` (None: it was not checked)."""
    if agreement is None:
        return None
    top1, dp = TOLERANCE[quantize]
    return agreement >= top1 and (dp is None or (max_abs_diff is not None and max_abs_diff <= dp))


def tolerance_text(quantize: str | None) -> str:
    top1, dp = TOLERANCE[quantize]
    return f"top-1 >= {top1:.0%}" + (f" and max |Δp| <= {dp:g}" if dp is not None else "")


@dataclass(frozen=True)
class Check:
    agreement: float | None = None
    max_abs_diff: float | None = None
    latency: float | None = None
    reference_latency: float | None = None
    num_images: int = 0
    images_from: str = "validation"  # or "training", where the split kept no validation image


def check_export(model: Any, exported: ExportedModel, pixels: np.ndarray, images_from: str = "validation") -> Check:
    import tensorflow as tf

    if not len(pixels):
        log.warning("No validation image could be decoded: the agreement check is skipped.")
        return Check()
    call = traced(model)

    def reference(x: np.ndarray) -> np.ndarray:
        return call(tf.constant(x)).numpy()

    ref, got = _batched(reference, pixels), _batched(exported, pixels)
    if got.shape != ref.shape:
        raise ModelError(f"The export's output shape {got.shape} differs from model.keras's {ref.shape}.")
    return Check(
        agreement=float(np.mean(ref.argmax(axis=1) == got.argmax(axis=1))),
        max_abs_diff=float(np.max(np.abs(ref.astype(np.float64) - got.astype(np.float64)))),
        latency=round(_latency_ms(exported, pixels), 3),
        reference_latency=round(_latency_ms(reference, pixels), 3),
        num_images=len(pixels),
        images_from=images_from,
    )


# --------------------------------------------------------------------------- README


_USAGE = {
    "keras": (f'import keras\nmodel = keras.saving.load_model("{RunDir.MODEL}")\nprobs = model.predict(pixels)'),
    "saved_model": (
        'import tensorflow as tf\nsig = tf.saved_model.load("model").signatures["serving_default"]\n'
        'probs = sig({input}=tf.constant(pixels))["{output}"].numpy()'
    ),
    "onnx": (
        'import onnxruntime as ort\ns = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])\n'
        'probs = s.run(None, {{"{input}": pixels}})[0]'
    ),
    "openvino": (
        "import openvino as ov\n"
        'm = ov.Core().compile_model("model.xml", "CPU", {{"INFERENCE_PRECISION_HINT": "f32"}})\n'
        "probs = m(pixels)[0]\n"
        "# Without the hint, CPUs with bf16 support run in bfloat16 (faster, max |dp| ~1e-2)."
    ),
    "tflite": (
        "from ai_edge_litert.interpreter import Interpreter  # or tf.lite.Interpreter\n"
        'it = Interpreter(model_path="model.tflite")\n'
        "d = it.get_input_details()[0]\n"
        'it.resize_tensor_input(d["index"], pixels.shape); it.allocate_tensors()\n'
        'it.set_tensor(d["index"], pixels); it.invoke()\n'
        'probs = it.get_tensor(it.get_output_details()[0]["index"])'
    ),
}

_QUANT_NOTE = {
    None: "float32 weights and compute",
    "fp16": "float16 weights (dequantized to float32 for compute on CPU)",
    "int8": "int8 post-training quantization (weights and activations), calibrated on {n} training images; "
    "float32 input and output",
}


def readme(
    run: ExportSource,
    fmt: str,
    quantize: str | None,
    exported: ExportedModel,
    check: Check,
    calibration: int | None,
    created: str,
    converter: str,
) -> str:
    h, w = run.image_size
    n = len(run.class_names)
    usage = _USAGE[fmt].format(input=exported.input_name, output=exported.output_name)
    lines = [
        f"{MARKER}: {export_name(fmt, quantize)}",
        "",
        f"Model:     {MODEL_FILES[fmt]}{'/ (SavedModel)' if fmt == 'saved_model' else ''}"
        f"{' + model.bin' if fmt == 'openvino' else ''}",
        f"Precision: {_QUANT_NOTE[quantize].format(n=calibration)}",
        f"{SOURCE}    {run.run.model_file.resolve()}",
        f"Converter: {converter}",
        f"Created:   {created}",
        "",
        "Input / output contract (the same as model.keras):",
        f"  input  {exported.input_name!r}: float32 [N, {h}, {w}, 3], RGB, raw pixel values 0..255.",
        "         Preprocessing (scaling / mean subtraction) is inside the model: do not normalize.",
        f"         Resize images to {h}x{w} with bilinear interpolation, half-pixel centres (align_corners=False), "
        "no antialias, no crop (as in training: tf.image.resize's bilinear).",
        f"         Decode {DECODING}.",
        f"  output {exported.output_name!r}: float32 [N, {n}], class probabilities (softmax, rows sum to 1).",
        "         Column i is the class class_names.json[i]:",
        *[f"           {i}: {printable(name)}" for i, name in enumerate(run.class_names)],  # one line each
        "",
        "Usage (pixels: float32 numpy array [N, H, W, 3]):",
        *["  " + line for line in usage.splitlines()],
        "",
        "The class names, input size, pixel range and layout are also inside the model file itself:",
        f"  {HOWTO[fmt]}",
        "",
    ]
    if check.agreement is not None:
        lines += [
            f"Checked against model.keras on {check.num_images} {check.images_from} images ({exported.runtime}):",
            f"  top-1 agreement {figure_text(check.agreement, '.4f')}, max |dp| {check.max_abs_diff:.3g}, "
            f"latency batch 1 {check.latency:.2f} ms (model.keras {check.reference_latency:.2f} ms)",
            f"  {'agrees' if agrees(quantize, check.agreement, check.max_abs_diff) else 'DOES NOT AGREE'} "
            f"(needs {tolerance_text(quantize)})",
            "",
        ]
    return "\n".join(lines)
