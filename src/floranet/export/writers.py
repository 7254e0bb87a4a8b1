"""One writer per format: ``(model, run, folder, quantize, calib) -> converter description``."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from floranet.errors import ConfigError, ModelError
from floranet.export import metadata
from floranet.export.common import MODEL_FILES, log
from floranet.export.rundata import ExportSource
from floranet.utils.optional import require
from floranet.utils.text import utf8


def _write_keras(model: Any, run: ExportSource, folder: Path, quantize: str | None, calib: np.ndarray | None) -> str:
    shutil.copy2(run.run.model_file, folder / MODEL_FILES["keras"])  # its metadata.json gains the labels
    return "copy of the run's model.keras"


def _write_saved_model(
    model: Any, run: ExportSource, folder: Path, quantize: str | None, calib: np.ndarray | None
) -> str:
    """Keras's ExportArchive, as ``model.export(format="tf_saved_model")`` uses it, plus a ``metadata``
    signature whose class names come from ``assets/labels.txt`` (a lookup table on the labels asset)."""
    import keras
    import tensorflow as tf

    meta = metadata.for_source(run)
    staging = folder / ".labels"
    staging.mkdir()
    labels = staging / metadata.LABELS_FILE
    labels.write_text("\n".join(meta.class_names) + "\n", encoding="utf-8")
    table = tf.lookup.StaticHashTable(
        tf.lookup.TextFileInitializer(
            str(labels), tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE
        ),
        default_value="",
    )
    strings = {k: v for k, v in meta.to_strings().items() if k != "class_names"}
    count = len(meta.class_names)

    def describe() -> dict[str, Any]:
        out = {k: tf.constant(v) for k, v in strings.items()}
        out["class_names"] = table.lookup(tf.range(count, dtype=tf.int64))
        return out

    archive = keras.export.ExportArchive()
    spec = tf.TensorSpec([None, *run.image_size, 3], tf.float32, name=model.inputs[0].name)
    archive.track_and_add_endpoint("serve", model, [spec])
    archive.track(table)
    archive.add_endpoint("metadata", describe, input_signature=[])
    archive.write_out(str(folder / "model"), verbose=False)
    shutil.rmtree(staging)
    return "keras.export.ExportArchive (as model.export(format='tf_saved_model')) + a 'metadata' signature"


def _write_onnx(model: Any, run: ExportSource, folder: Path, quantize: str | None, calib: np.ndarray | None) -> str:
    # Keras's ONNX path (TF backend) is tf2onnx.convert.from_function on the traced
    # serving function; nested functional sub-models (backbone, head) are inlined.
    for module in ("tf2onnx", "onnx", "onnxruntime"):  # onnxruntime: the export is read back to be checked
        require(module, "format='onnx'")
    path = folder / "model.onnx"
    try:
        model.export(str(path), format="onnx", verbose=False)
        extra = _onnx_extra_inputs(path)
        if not extra:
            _check_onnx_ops(path)
            return "keras model.export(format='onnx') (tf2onnx)"
        reason = f"it left constants as graph inputs ({', '.join(extra)})"
    except Exception as e:  # noqa: BLE001 - any converter failure: try the frozen-graph route
        reason = f"{type(e).__name__}: {e}"
    # Fallback: Keras's path leaves tensors captured by value (e.g. Normalization's mean
    # and variance, in resnet18/34 and EfficientNet) as extra ONNX inputs, so the model
    # cannot run. Freezing the function first (convert_variables_to_constants_v2 turns
    # variables and captured tensors into constants) and converting the GraphDef with
    # tf2onnx.convert.from_graph_def works.
    log.info("Keras's ONNX export is unusable (%s); converting a frozen graph with tf2onnx instead.", reason)
    path.unlink(missing_ok=True)
    _onnx_from_frozen_graph(model, path, run.image_size)
    extra = _onnx_extra_inputs(path)
    if extra:
        raise ModelError(f"The ONNX conversion left extra graph inputs: {', '.join(extra)}")
    _check_onnx_ops(path)
    return "tf2onnx.convert.from_graph_def on the frozen graph (fallback: Keras's export was unusable)"


def _check_onnx_ops(path: Path) -> None:
    """ModelError naming the TensorFlow ops tf2onnx could not convert (it leaves them in as-is)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    bad = sorted({n.op_type for n in graph.node if n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type)})
    if bad:
        raise ModelError(
            f"tf2onnx cannot convert this model to ONNX: unsupported TensorFlow ops {', '.join(bad)} "
            "(e.g. exact GELU's Erfc in ConvNeXt). Export format='openvino' or 'tflite' instead."
        )


def _onnx_extra_inputs(path: Path) -> list[str]:
    """Graph inputs besides the image (that are not initializers): a model that cannot run."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in initializers]
    return inputs[1:]


def _onnx_from_frozen_graph(model: Any, path: Path, image_size: tuple[int, int]) -> None:
    import onnx
    import tensorflow as tf
    import tf2onnx
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    with contextlib.suppress(ImportError):  # Keras's numpy>=2 patch for tf2onnx, which its own path applies
        from keras.src.export.tf2onnx_lib import patch_tf2onnx

        patch_tf2onnx()
    name = model.inputs[0].name or "image"
    spec = tf.TensorSpec([None, *image_size, 3], tf.float32, name=name)
    concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    frozen = convert_variables_to_constants_v2(concrete)
    tf2onnx.convert.from_graph_def(
        frozen.graph.as_graph_def(),
        input_names=[t.name for t in frozen.inputs],
        output_names=[t.name for t in frozen.outputs],
        output_path=str(path),
    )
    # GraphDef tensor names carry ":0"; name the input as Keras's own path does.
    proto = onnx.load(str(path))
    old = proto.graph.input[0].name
    if old != name:
        proto.graph.input[0].name = name
        for node in proto.graph.node:
            node.input[:] = [name if i == old else i for i in node.input]
        onnx.save(proto, str(path))


def _write_openvino(model: Any, run: ExportSource, folder: Path, quantize: str | None, calib: np.ndarray | None) -> str:
    # Keras's OpenVINO path (TF backend) is openvino.convert_model on the traced serving function.
    ov = require("openvino", "format='openvino'")
    if quantize == "int8":
        require("nncf", "quantize='int8' for format='openvino'")
    converter = "keras model.export(format='openvino')"
    if quantize is None:
        model.export(str(folder / "model.xml"), format="openvino", verbose=False)
        return converter
    staging = folder / ".fp32"
    staging.mkdir()
    model.export(str(staging / "model.xml"), format="openvino", verbose=False)
    ov_model = ov.Core().read_model(str(staging / "model.xml"))
    if quantize == "fp16":
        # OpenVINO's FP16 IR: weights stored as float16 (half the size), decompressed at load on CPU.
        ov.save_model(ov_model, str(folder / "model.xml"), compress_to_fp16=True)
        converter += " + openvino.save_model(compress_to_fp16=True)"
    else:
        import nncf

        assert calib is not None
        dataset = nncf.Dataset([calib[i : i + 1] for i in range(len(calib))])
        quantized = nncf.quantize(ov_model, dataset, subset_size=len(calib))
        converter += f" + nncf.quantize ({nncf.__version__})"
        try:
            ov.Core().compile_model(quantized, "CPU")
        except RuntimeError as e:
            # NNCF may put per-channel activation quantizers behind NHWC<->NCHW transposes
            # (EfficientNet's depthwise convolutions), which the CPU plugin rejects
            # ("doesn't support non per-tensor quantization for axis: 2"): quantize
            # activations per tensor instead.
            from nncf.quantization.advanced_parameters import (
                AdvancedQuantizationParameters,
                QuantizationParameters,
            )

            log.info(
                "OpenVINO CPU cannot compile NNCF's model (%s); retrying with per-tensor activations.",
                str(e).strip().splitlines()[-1],
            )
            per_tensor = AdvancedQuantizationParameters(
                activations_quantization_params=QuantizationParameters(per_channel=False)
            )
            quantized = nncf.quantize(
                ov.Core().read_model(str(staging / "model.xml")),
                dataset,
                subset_size=len(calib),
                advanced_parameters=per_tensor,
            )
            converter += " with per-tensor activations"
        # Keep the remaining float constants in float32: int8 already shrinks the weights.
        ov.save_model(quantized, str(folder / "model.xml"), compress_to_fp16=False)
    shutil.rmtree(staging)
    return converter


def _tflite_options(quantize: str | None, calib: np.ndarray | None) -> dict[str, Any]:
    import tensorflow as tf

    # Builtin ops only (no SELECT_TF_OPS/Flex, which Keras allows by default): the
    # file then runs on plain LiteRT (ai_edge_litert, mobile) without the Flex delegate.
    opts: dict[str, Any] = {"target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]}}
    if quantize == "fp16":
        opts["optimizations"] = [tf.lite.Optimize.DEFAULT]
        opts["target_spec"]["supported_types"] = [tf.float16]
    elif quantize == "int8":
        assert calib is not None

        def representative() -> Iterator[list[np.ndarray]]:
            for i in range(len(calib)):
                yield [calib[i : i + 1]]

        # Full-integer kernels where an int8 kernel exists, float fallback elsewhere;
        # input and output stay float32 so the contract is the same as the fp32 model's.
        opts["optimizations"] = [tf.lite.Optimize.DEFAULT]
        opts["representative_dataset"] = representative
        opts["target_spec"]["supported_ops"] = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    return opts


def _has_litert_export() -> bool:
    """Whether this Keras has ``model.export(format="litert")`` (Keras >= 3.12)."""
    import importlib.util

    return importlib.util.find_spec("keras.src.export.litert") is not None


def _tflite_via_converter(model: Any, path: Path, opts: dict[str, Any]) -> None:
    """Fallback for Keras without the litert format: the documented SavedModel → TFLiteConverter route."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="floranet-savedmodel-") as sm:
        model.export(sm, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(sm)
        for key, value in opts.items():
            if key == "target_spec":
                for k, v in value.items():
                    setattr(converter.target_spec, k, v)
            else:
                setattr(converter, key, value)
        path.write_bytes(converter.convert())


def _write_tflite(model: Any, run: ExportSource, folder: Path, quantize: str | None, calib: np.ndarray | None) -> str:
    path = folder / "model.tflite"
    opts = _tflite_options(quantize, calib)
    if _has_litert_export():
        model.export(str(path), format="litert", verbose=False, **opts)
        return "keras model.export(format='litert') (tf.lite.TFLiteConverter)"
    _tflite_via_converter(model, path, opts)
    return "tf.lite.TFLiteConverter.from_saved_model (this Keras has no format='litert')"


WRITERS = {
    "keras": _write_keras,
    "saved_model": _write_saved_model,
    "onnx": _write_onnx,
    "openvino": _write_openvino,
    "tflite": _write_tflite,
}


# Formats that keep the class names one a line (labels.txt: a SavedModel asset, a TFLite associated file).
LINE_LABELS = ("saved_model", "tflite")


def check_line_names(fmt: str, names: Sequence[str]) -> None:
    """Refuses a class name with a line break, or one whose folder name is not UTF-8, for a format whose labels
    file holds one name a line (a UTF-8 text file).

    Raises:
        ConfigError: Such a name, for such a format.
    """
    if fmt not in LINE_LABELS:
        return
    for name in names:
        if "\n" in name or "\r" in name:
            why = "holds a line break, and format={fmt!r} keeps class names one a line"
        elif utf8(name) != name:
            why = "is not UTF-8 (its folder's name bytes), and format={fmt!r} keeps class names in a UTF-8 file"
        else:
            continue
        raise ConfigError(
            f"class name {utf8(name)!r} {why.format(fmt=fmt)} (labels.txt): rename that class folder and train "
            f"again, or export keras, onnx or openvino. Received: format={fmt!r}"
        )
