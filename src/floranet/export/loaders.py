"""Loading an export folder in its own runtime: :class:`ExportedModel` and :func:`load_exported`."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from floranet.errors import ConfigError, FloranetError, ModelError
from floranet.export.common import MODEL_FILES, log
from floranet.utils.files import DAMAGED_KERAS, is_cut_keras
from floranet.utils.optional import require
from floranet.utils.system import package_version


class ExportedModel:
    """A loaded export: call it with float32 ``[N, H, W, 3]`` RGB 0..255, get ``[N, classes]`` probabilities.

    Attributes:
        format: The export's format.
        input_name: The model's input name in its runtime.
        output_name: The model's output name in its runtime.
        runtime: The runtime that runs it (e.g. ``"onnxruntime 1.32.0"``).
    """

    def __init__(
        self, fn: Callable[[np.ndarray], np.ndarray], fmt: str, input_name: str, output_name: str, runtime: str
    ) -> None:
        self._fn = fn
        self.format = fmt
        self.input_name = input_name
        self.output_name = output_name
        self.runtime = runtime

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(pixels, dtype=np.float32)
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ConfigError(f"pixels must be float32 [N, H, W, 3]. Received: shape={tuple(x.shape)}")
        return np.asarray(self._fn(x), dtype=np.float32)

    def __repr__(self) -> str:
        return f"ExportedModel(format={self.format!r}, runtime={self.runtime!r})"


def _detect(folder: Path) -> str:
    for fmt in ("keras", "onnx", "openvino", "tflite"):
        if (folder / MODEL_FILES[fmt]).is_file():
            return fmt
    if (folder / "model" / "saved_model.pb").is_file() or (folder / "saved_model.pb").is_file():
        return "saved_model"
    raise ModelError(f"No exported model found in {str(folder)!r} (expected one of {', '.join(MODEL_FILES.values())}).")


def load_exported(path: str | os.PathLike[str]) -> ExportedModel:
    """Loads an export folder (or its model file) in the export's own runtime.

    Returns:
        A callable: float32 ``[N, H, W, 3]`` RGB 0..255 → float32 ``[N, classes]`` probabilities.

    Raises:
        ModelError: Nothing loadable there.
        MissingDependencyError: The format's runtime is not installed.
    """
    p = Path(path)
    if not p.exists():
        raise ModelError(f"Export not found. Received: path={str(path)!r}")
    folder = p if p.is_dir() else p.parent
    by_name = {name: f for f, name in MODEL_FILES.items() if f != "saved_model"}
    fmt = by_name[p.name] if p.is_file() and p.name in by_name else _detect(folder)
    try:
        return _LOADERS[fmt](folder)
    except FloranetError:  # ours already says what is wrong (e.g. the runtime is not installed)
        raise
    except Exception as e:
        raise ModelError(f"Cannot load the {fmt} export in {str(folder)!r}: {e}") from e


def traced(model: Any) -> Any:
    """``model(x, training=False)`` as one tf.function for any batch size (a single trace)."""
    import tensorflow as tf

    spec = tf.TensorSpec([None, *model.inputs[0].shape[1:]], tf.float32)
    return tf.function(lambda x: model(x, training=False), input_signature=[spec])


def _load_keras(folder: Path) -> ExportedModel:
    import keras
    import tensorflow as tf

    path = folder / MODEL_FILES["keras"]
    if is_cut_keras(path):
        raise ModelError(f"Cannot load {path}: {DAMAGED_KERAS}")
    model = keras.saving.load_model(path)
    call = traced(model)
    return ExportedModel(
        lambda x: call(tf.constant(x)).numpy(),
        "keras",
        model.inputs[0].name,
        model.outputs[0].name,
        f"keras {keras.__version__}",
    )


def _load_saved_model(folder: Path) -> ExportedModel:
    import tensorflow as tf

    root = folder / "model" if (folder / "model" / "saved_model.pb").is_file() else folder
    loaded = tf.saved_model.load(str(root))
    sig = loaded.signatures["serving_default"]
    (in_name,) = sig.structured_input_signature[1].keys()
    (out_name,) = sig.structured_outputs.keys()

    def run(x: np.ndarray) -> np.ndarray:
        return sig(**{in_name: tf.constant(x)})[out_name].numpy()

    return ExportedModel(run, "saved_model", in_name, out_name, f"tensorflow {tf.__version__}")


def _load_onnx(folder: Path) -> ExportedModel:
    ort = require("onnxruntime", "Running an onnx export")
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    in_name, out_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    return ExportedModel(
        lambda x: session.run([out_name], {in_name: x})[0], "onnx", in_name, out_name, f"onnxruntime {ort.__version__}"
    )


def _load_openvino(folder: Path) -> ExportedModel:
    ov = require("openvino", "Running an openvino export")
    # f32 inference precision: on CPUs with bf16 support OpenVINO would otherwise run in
    # bfloat16 (max |Δp| ~1e-2 instead of ~1e-7 for the fp32 model).
    compiled = ov.Core().compile_model(str(folder / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    output = compiled.outputs[0]

    def run(x: np.ndarray) -> np.ndarray:
        return np.array(request.infer([x])[output])

    return ExportedModel(
        run, "openvino", compiled.inputs[0].any_name, output.any_name, f"openvino {ov.__version__} CPU f32"
    )


# What LiteRT says of a model with ops only TensorFlow's interpreter runs (Flex / custom ops): the one case for
# tf.lite.Interpreter. Anything else (a damaged file: "not a valid Flatbuffer buffer") is reported: tf.lite's
# interpreter, loaded beside LiteRT's, crashed Python (SIGSEGV) on such a file.
_TENSORFLOW_OPS_SIGNS = ("Flex", "custom op", "TensorFlow op")


def _tflite_interpreter(path: Path) -> tuple[Any, str]:
    """LiteRT's interpreter on ``path`` (TensorFlow's where LiteRT is not installed or lacks the model's ops).

    Raises:
        ModelError: LiteRT cannot read the file (damaged, or not a TFLite model).
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        return _tf_lite_interpreter(path)
    try:
        interpreter = Interpreter(model_path=str(path))
        interpreter.allocate_tensors()
        return interpreter, f"ai_edge_litert {package_version('ai-edge-litert')}"
    except Exception as e:
        if not any(sign in str(e) for sign in _TENSORFLOW_OPS_SIGNS):
            raise ModelError(
                f"Cannot load {path}: the file is damaged or not a TFLite model (cut short by a copy or a full "
                f"disk?): {str(e).strip()}"
            ) from e
        log.info("ai_edge_litert cannot run %s (%s); using tf.lite.Interpreter", path, e)
    return _tf_lite_interpreter(path)


def _tf_lite_interpreter(path: Path) -> tuple[Any, str]:
    """TensorFlow's own TFLite interpreter on ``path`` (runs Flex ops; the only one without ai_edge_litert)."""
    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
        interpreter = tf.lite.Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    return interpreter, f"tf.lite {tf.__version__}"


def _load_tflite(folder: Path) -> ExportedModel:
    interpreter, runtime = _tflite_interpreter(folder / "model.tflite")
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    shape = [list(inp["shape"])]

    def run(x: np.ndarray) -> np.ndarray:
        if list(x.shape) != shape[0]:
            interpreter.resize_tensor_input(inp["index"], list(x.shape))
            interpreter.allocate_tensors()
            shape[0] = list(x.shape)
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(out["index"]).copy()

    return ExportedModel(run, "tflite", inp["name"], out["name"], runtime)


_LOADERS: dict[str, Callable[[Path], ExportedModel]] = {
    "keras": _load_keras,
    "saved_model": _load_saved_model,
    "onnx": _load_onnx,
    "openvino": _load_openvino,
    "tflite": _load_tflite,
}
