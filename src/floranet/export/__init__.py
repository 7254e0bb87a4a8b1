"""Export a finished run's model for deployment, and check the export against it.

Formats (each written with Keras's own ``model.export`` path where one exists)::

    keras        model.keras           the run's file, copied       keras.saving.load_model
    saved_model  model/ (SavedModel)   model.export("tf_saved_model") tf.saved_model.load
    onnx         model.onnx            model.export("onnx") (tf2onnx) onnxruntime
    openvino     model.xml + .bin      model.export("openvino")     openvino (CPU, f32)
    tflite       model.tflite          model.export("litert")       ai_edge_litert (or tf.lite)

Fallbacks, used only when Keras's path fails on a model: ONNX from the frozen
graph with ``tf2onnx.convert.from_graph_def`` (Keras's ONNX export leaves
constants captured by value, e.g. ``Normalization(mean, variance)`` in
resnet18/34 and EfficientNet, as extra graph inputs); TFLite through
``tf.lite.TFLiteConverter.from_saved_model`` on Keras < 3.12 (no "litert").

``quantize="fp16"`` (float16 weights) and ``quantize="int8"`` (post-training
quantization calibrated on up to 200 training images of the run's split) are
available for ``tflite`` and ``openvino``.

Every export keeps the classifier's contract: float32 ``[N, H, W, 3]`` raw RGB
0..255 in (preprocessing is inside the model), class probabilities out. An
export folder holds the model file(s), ``class_names.json`` and a
``README.txt``; it is built in a temp sibling folder and renamed into place,
so an older export of the same name is only replaced by a complete one.

After writing, :func:`export_run` runs the run's ``model.keras`` and the export
(in its own runtime) on the same decoded validation images and records top-1
agreement, the largest probability difference and batch-1 latency in
``RUN_DIR/exports.json``.
"""

from __future__ import annotations

from floranet.export.common import (
    CALIBRATION_IMAGES,
    CHECK_BATCH,
    EXPORTS_DIR,
    EXPORTS_FILE,
    FORMATS,
    INSTALL_HINT,
    LATENCY_IMAGES,
    MODEL_FILES,
    SUPPORTED_QUANTIZE,
    WARMUP_CALLS,
)
from floranet.export.exporter import ExportResult, export_run
from floranet.export.loaders import ExportedModel, load_exported

__all__ = [
    "CALIBRATION_IMAGES",
    "CHECK_BATCH",
    "EXPORTS_DIR",
    "EXPORTS_FILE",
    "FORMATS",
    "INSTALL_HINT",
    "LATENCY_IMAGES",
    "MODEL_FILES",
    "SUPPORTED_QUANTIZE",
    "WARMUP_CALLS",
    "ExportResult",
    "ExportedModel",
    "export_run",
    "load_exported",
]
