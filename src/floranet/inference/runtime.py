"""The fastest correct runtime for inference-only work (feature extraction, predict, evaluate, serve).

``choose("auto", "auto")`` picks, and says why:

* a GPU visible to TensorFlow → TensorFlow (fp32);
* else OpenVINO when installed (``floranet[openvino]``), in bf16 where the CPU
  computes it natively (AVX512_BF16/AMX: 1.7-2x fp32 on AVX512_BF16 in benchmarks/bench_forward.py, an
  accuracy change not told apart from noise in benchmarks/bench_bf16.py), else fp32; for a job of fewer than
  :data:`AUTO_MIN_IMAGES` images TensorFlow, since converting costs more than it saves;
* else TensorFlow fp32.

:func:`compile_inference` turns a Keras model into a numpy → numpy callable for
that choice. Training itself always runs in TensorFlow.
"""

from __future__ import annotations

import collections
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from floranet.config import PRECISIONS, RUNTIMES, TRAIN_PRECISIONS, check_choice
from floranet.errors import ConfigError, ModelError
from floranet.utils import optional, system

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)
# Below this many images an automatic choice stays on TensorFlow: OpenVINO's one-off
# conversion (~5 s for ResNet50) pays off only over a few hundred images.
AUTO_MIN_IMAGES = 256


@dataclass(frozen=True)
class RuntimeChoice:
    """A resolved runtime and precision, with the reason it was picked."""

    runtime: str
    precision: str
    reason: str

    @property
    def key(self) -> str:
        return f"{self.runtime}-{self.precision}"


def native_bf16() -> bool:
    return system.native_bf16()


def openvino_available() -> bool:
    return optional.available("openvino")


def gpu_available() -> bool:
    """Whether TensorFlow sees a GPU; answered without importing TensorFlow where it cannot (the CPU build, or a
    Linux machine with no NVIDIA, ROCm or WSL GPU device), so a predict on the compiled model stays fast."""
    if system.package_version("tensorflow-cpu") and not system.package_version("tensorflow"):
        return False
    if sys.platform.startswith("linux") and not any(os.path.exists(p) for p in _GPU_DEVICES):
        return False
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


# Device files a Linux GPU that TensorFlow can use leaves: NVIDIA's driver, ROCm's, WSL's.
_GPU_DEVICES = ("/proc/driver/nvidia/gpus", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")


# Said wherever bf16 is asked for by name on a CPU that cannot compute it (auto never picks it there); the
# training one is for a Keras stage, where OpenVINO plays no part.
_NO_BF16 = "this CPU has no native bf16 (AVX512_BF16/AMX): it is emulated here, slower than fp32"
NOT_NATIVE_BF16 = f"{_NO_BF16} (OpenVINO may compute fp32 instead), and --precision auto would pick fp32"
NOT_NATIVE_BF16_TRAINING = f"{_NO_BF16}, and --precision auto would pick fp32"


def choose(runtime: str = "auto", precision: str = "auto", *, images: int | None = None) -> RuntimeChoice:
    """Resolves ``auto`` values for this machine.

    Args:
        runtime: "auto", "tensorflow" or "openvino".
        precision: "auto", "fp32", "bf16" or "int8" (OpenVINO only; compile with calibration images).
        images: How many images the job will run, when known: an automatic choice keeps
            TensorFlow for fewer than :data:`AUTO_MIN_IMAGES`, where converting the
            model to OpenVINO (seconds) costs more than it saves.

    Raises:
        ConfigError: Unknown values.
        MissingDependencyError: OpenVINO requested but not installed.
    """
    check_choice("runtime", runtime, RUNTIMES)
    check_choice("precision", precision, TRAIN_PRECISIONS)
    if (runtime == "openvino" or precision == "int8") and not openvino_available():
        optional.require("openvino", f"runtime={runtime!r}, precision={precision!r}")
    if precision == "int8":
        if runtime == "tensorflow":
            raise ConfigError(
                "precision='int8' runs on OpenVINO (NNCF post-training quantization). "
                "Received: runtime='tensorflow', precision='int8'"
            )
        optional.require("nncf", "precision='int8'")  # now, not after the data scan and calibration images
        return RuntimeChoice("openvino", "int8", "int8 as requested: OpenVINO, calibrated on training images")
    reasons = []
    if runtime == "auto":
        if gpu_available():
            runtime, why = "tensorflow", "a GPU is visible to TensorFlow"
        elif openvino_available() and images is not None and images < AUTO_MIN_IMAGES:
            why = f"{images} image(s): converting the model to OpenVINO would take longer than it saves"
            runtime = "tensorflow"
        elif openvino_available():
            runtime, why = "openvino", "no GPU; OpenVINO is the fastest CPU runtime installed"
        else:
            runtime, why = "tensorflow", "no GPU and OpenVINO is not installed (pip install 'floranet[openvino]')"
        reasons.append(why)
    if precision == "auto":
        # bench_bf16.py: bf16 moved validation accuracy by no more than the fp32 control did (mean over seeds);
        # bench_forward.py: 1.7-2.1x the speed of fp32 on AVX512_BF16 CPUs (AMD EPYC; no AMX CPU was measured).
        if runtime == "openvino" and native_bf16():
            precision = "bf16"
            reasons.append(
                "bf16: this CPU computes it natively; about 2x fp32 as measured on an AVX512_BF16 CPU (AMX not "
                "measured), with an accuracy change within retraining's noise (benchmarks/bench_bf16.py)"
            )
        else:
            precision, why = "fp32", "TensorFlow inference runs in fp32" if runtime == "tensorflow" else ""
            reasons.append(f"fp32: {why or 'this CPU has no native bf16'}")
    elif precision == "bf16" and runtime == "tensorflow":
        reasons.append("bf16 via Keras mixed_bfloat16")
    if precision == "bf16" and not native_bf16() and (runtime == "openvino" or not gpu_available()):
        reasons.append(NOT_NATIVE_BF16)
    return RuntimeChoice(runtime, precision, "; ".join(reasons) or "as requested")


def choose_inference(runtime: str = "auto", precision: str = "auto", *, images: int | None = None) -> RuntimeChoice:
    """:func:`choose` for running a saved float32 model (predict, evaluate, serve).

    Raises:
        ConfigError: As :func:`choose`, or TensorFlow bf16, which needs a model built under
            ``mixed_bfloat16`` (training only), or int8, which needs calibration images (training and
            ``floranet export --quantize int8``).
    """
    check_choice("precision", precision, PRECISIONS)
    if runtime == "auto" and precision == "bf16":  # whatever the number of images: only OpenVINO can
        asked = choose("openvino", "bf16")
        why = "bf16 as requested: inference in bf16 runs on OpenVINO"
        return replace(asked, reason=why if asked.reason == "as requested" else f"{why}; {asked.reason}")
    choice = choose(runtime, precision, images=images)
    if choice.runtime == "tensorflow" and choice.precision == "bf16":
        raise ConfigError(
            "precision='bf16' runs on OpenVINO for inference (TensorFlow bf16 is for training). "
            "Received: runtime='tensorflow', precision='bf16'"
        )
    return choice


def training_precision(precision: str = "auto") -> tuple[str, str]:
    """The Keras policy for fine-tuning ("float32" or "mixed_bfloat16") and why.

    ``auto`` picks mixed bf16 on CPUs with native bf16 (AVX512_BF16/AMX) and fp32 elsewhere: bench_finetune.py
    measured training steps about 1.5x faster than fp32 on an AVX512_BF16 CPU (no AMX CPU was measured).
    """
    check_choice("precision", precision, TRAIN_PRECISIONS)
    if precision == "bf16":
        emulated = not native_bf16() and not gpu_available()
        return "mixed_bfloat16", f"as requested; {NOT_NATIVE_BF16_TRAINING}" if emulated else "as requested"
    if precision in ("fp32", "int8"):
        return "float32", "as requested" if precision == "fp32" else "int8 is for the frozen layers' inference"
    if gpu_available():
        return "float32", "on GPU fp32 unless --precision bf16 is given"
    if native_bf16():
        why = "this CPU has native bf16; mixed bf16 trained about 1.5x faster than fp32 as measured on an AVX512_BF16"
        return "mixed_bfloat16", why + " CPU (AMX not measured; benchmarks/bench_finetune.py)"
    return "float32", "this CPU has no native bf16"


def compile_inference(
    model: keras.Model,
    choice: RuntimeChoice,
    *,
    streaming: bool = False,
    threads: int | None = None,
    calibration: np.ndarray | None = None,
) -> Callable[[np.ndarray], np.ndarray]:
    """A function float32 ``[B, H, W, 3]`` → float32 outputs running ``model`` as ``choice`` says.

    Args:
        model: A Keras model. For TensorFlow bf16 it must have been built under the
            ``mixed_bfloat16`` policy already.
        choice: From :func:`choose`.
        streaming: Tune for a long stream of batches (feature extraction) rather than
            one call at a time (predict, serve): the result then also has a ``map(batches)``
            method that keeps several batches in flight (OpenVINO).
        threads: Most CPU threads OpenVINO may use (None: all cores), e.g. one per Ray actor.
        calibration: Images (float32 ``[N, H, W, 3]``) that int8 quantization is calibrated on.
    """
    if choice.runtime == "openvino":
        ov_model = to_openvino(float32_twin(model))
        if choice.precision == "int8":
            ov_model = quantize_int8(ov_model, calibration)
        return OpenVINOInference(ov_model, choice.precision, streaming=streaming, threads=threads)
    import keras
    import tensorflow as tf

    fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(keras.ops.cast(fn(tf.convert_to_tensor(x, tf.float32)), "float32"))

    return run


def float32_twin(model: keras.Model) -> keras.Model:
    """``model`` itself when every layer computes in float32, else a float32 copy with its weights: a
    mixed-precision model (``--precision bf16`` builds one) carries bf16 casts that OpenVINO's converter cannot
    read, and OpenVINO picks its own precision from the :class:`RuntimeChoice` anyway."""
    if all(layer.dtype_policy.compute_dtype == "float32" for layer in _all_layers(model)):
        return model
    # Rebuilt from its config with every bf16 dtype float32: nested models' inputs too (a part cut from a mixed
    # model takes bf16 inputs, which cloning layer by layer keeps).
    twin = model.__class__.from_config(_as_float32(model.get_config()))
    twin.set_weights(model.get_weights())  # a mixed model keeps float32 variables: the same list, in order
    return twin


def _as_float32(config: Any) -> Any:
    if isinstance(config, dict):
        return {k: _as_float32(v) for k, v in config.items()}
    if isinstance(config, list):
        return [_as_float32(v) for v in config]
    return "float32" if config in ("mixed_bfloat16", "bfloat16") else config


def _all_layers(model: Any) -> Iterator[Any]:
    """``model``'s layers, those of nested models included (a model built from a mixed one's layers is itself
    float32: only its layers say how they compute)."""
    for layer in getattr(model, "layers", ()):
        yield layer
        yield from _all_layers(layer)


def to_openvino(model: keras.Model) -> Any:
    """``model`` (any batch size) as an OpenVINO model, traced once and converted in memory: 3x faster than the
    SavedModel round trip (ResNet50: about 4 s vs 12 s here) and nothing written to disk."""
    ov = optional.require("openvino", "runtime='openvino'")
    import tensorflow as tf

    spec = tf.TensorSpec([None, *model.inputs[0].shape[1:]], tf.float32)
    concrete = tf.function(lambda x: model(x, training=False), input_signature=[spec], autograph=False)
    traced = concrete.get_concrete_function()
    converted, names = ov.convert_model(traced), [t.name for t in traced.outputs]
    # Keras's swish (EfficientNet) left a Result on every activation: the model's own outputs alone, in order.
    at = {n: r for r, o in zip(converted.get_results(), converted.outputs, strict=True) for n in o.get_names()}
    own = [at[n] for n in names]
    return converted if len(own) == len(converted.outputs) else ov.Model(own, converted.get_parameters(), "model")


def append_head(backbone: Any, head: keras.Model) -> Any | None:
    """An OpenVINO model ``pixels → (probabilities, features)``: ``backbone`` (an OpenVINO model, pixels → pooled
    features) with ``head``'s Dense layers appended as OpenVINO operations. None when ``head`` holds a layer other
    than Dense (relu, softmax or linear), Dropout or Flatten of features; the caller then converts the whole model.
    """
    ov = optional.require("openvino", "runtime='openvino'")
    import keras
    from openvino import opset13 as ops

    base = backbone.clone()  # stage 1's model stays as it is
    features_result = base.get_results()[0]
    features = features_result.input_value(0)
    x = features
    for layer in head.layers:
        if isinstance(layer, (keras.layers.Dropout, keras.layers.Flatten, keras.layers.InputLayer)):
            continue  # identity at inference on [N, F] features
        activation = getattr(getattr(layer, "activation", None), "__name__", None)
        if not isinstance(layer, keras.layers.Dense) or activation not in ("relu", "softmax", "linear"):
            return None
        kernel, bias = (np.asarray(w, np.float32) for w in layer.get_weights())
        x = ops.add(ops.matmul(x, ops.constant(kernel), False, False), ops.constant(bias))
        x = ops.relu(x) if activation == "relu" else ops.softmax(x, -1) if activation == "softmax" else x
    # The features keep their own Result node: a second one on the same tensor would not read back from the IR.
    return ov.Model([ops.result(x), features_result], base.get_parameters(), "probabilities_features")


def quantize_int8(ov_model: Any, calibration: np.ndarray | None) -> Any:
    """Post-training int8 quantization (NNCF) of ``ov_model``, calibrated on ``calibration`` images.

    Raises:
        ConfigError: No calibration images.
        MissingDependencyError: NNCF is not installed.
    """
    if calibration is None or not len(calibration):
        raise ConfigError("precision='int8' needs calibration images (training images). Received: none")
    nncf = optional.require("nncf", "precision='int8'")
    data = nncf.Dataset([calibration[i : i + 1] for i in range(len(calibration))])
    return nncf.quantize(ov_model, data, subset_size=len(calibration))


def read_ir(path: str | os.PathLike[str]) -> Any:
    """An OpenVINO IR (``model.xml`` + ``.bin``) read into memory, not mapped: what is compiled from it later is this
    model even once the files are replaced. No memory lost: an fp32 compile shares its weights (ResNet50: 312 MB).

    Raises:
        ModelError: OpenVINO cannot read it (a damaged or truncated file), naming the file.
    """
    ov = optional.require("openvino", "runtime='openvino'")
    try:
        return ov.Core().read_model(os.fspath(path), config={"ENABLE_MMAP": False})
    except RuntimeError as e:  # OpenVINO raises RuntimeError for any file it cannot use
        # Its message opens with C++ source locations; the last line says what is wrong.
        why = next((line for line in reversed(str(e).splitlines()) if line.strip()), type(e).__name__)
        raise ModelError(
            f"Cannot read the OpenVINO model {os.fspath(path)} (+ its .bin): {why.strip()}. It is damaged or "
            "was not written by this OpenVINO; compile it again (`floranet export RUN_DIR --format openvino`)."
        ) from e


class OpenVINOInference:
    """An OpenVINO model compiled for the CPU; call it on a batch, or ``map`` it over many.

    Args:
        ov_model: An ``openvino.Model`` (converted from Keras, read from an IR, or quantized).
        precision: ``"fp32"``, ``"bf16"`` or ``"int8"`` (an int8 model computes in int8 where quantized, in
            bf16 on CPUs with native bf16 and fp32 elsewhere for the rest).
        streaming: Keep several batches in flight (THROUGHPUT) rather than one call at a time (LATENCY).
        threads: Most CPU threads it may use (None: all cores).
        joined: A call returns every output of a model with several, joined along the last axis (the run's
            compiled model: probabilities, then features); else the first output only.
    """

    def __init__(
        self,
        ov_model: Any,
        precision: str,
        *,
        streaming: bool = False,
        threads: int | None = None,
        joined: bool = False,
    ) -> None:
        ov = optional.require("openvino", "runtime='openvino'")
        bf16 = precision == "bf16" or (precision == "int8" and native_bf16())
        config: dict[str, str | int] = {
            "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32",
            # LATENCY: one request uses every core (a call at a time). THROUGHPUT: one stream per
            # group of cores, fed by several requests in flight, so the cores never wait for Python.
            "PERFORMANCE_HINT": "THROUGHPUT" if streaming else "LATENCY",
        }
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self._compiled = ov.Core().compile_model(ov_model, "CPU", config)
        # The graph it was compiled from (fp32 weights; quantized for int8): the run's compiled model can reuse
        # stage 1's converted backbone instead of converting it again (floranet.inference.compiled).
        self.ov_model = None if precision == "int8" else ov_model
        self.in_flight = (
            max(2, int(self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))) if streaming else 1
        )
        self._requests = [self._compiled.create_infer_request() for _ in range(self.in_flight)]
        self._lock = threading.Lock()
        self._outputs = list(self._compiled.outputs) if joined else [self._compiled.output(0)]

    @classmethod
    def from_ir(cls, path: str | os.PathLike[str], precision: str, **kwargs: Any) -> OpenVINOInference:
        """An OpenVINO IR read from disk, no TensorFlow involved (:func:`read_ir`: a damaged file is a ModelError)."""
        return cls(read_ir(path), precision, **kwargs)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        # Threads take turns (one request runs one batch at a time: "Infer Request is busy"); LATENCY uses every core.
        with self._lock:
            out = self._requests[0].infer({0: np.ascontiguousarray(x, dtype=np.float32)})
            outs = [np.array(out[o], dtype=np.float32) for o in self._outputs]  # copies: the request is reused
        return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=-1)

    def map(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Outputs of every batch, in order, with up to ``in_flight`` batches computing at once."""
        pending: collections.deque = collections.deque()
        idle = collections.deque(self._requests)
        for x in batches:
            if not idle:
                yield self._collect(pending, idle)
            request = idle.popleft()
            request.start_async({0: np.ascontiguousarray(x, dtype=np.float32)})
            pending.append(request)
        while pending:
            yield self._collect(pending, idle)

    def _collect(self, pending: collections.deque, idle: collections.deque) -> np.ndarray:
        request = pending.popleft()  # requests finish in any order; results are taken in submission order
        request.wait()
        # Copies: the buffers are reused by the request's next batch.
        outs = [np.array(request.get_output_tensor(i).data, dtype=np.float32) for i in range(len(self._outputs))]
        idle.append(request)
        return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=-1)
