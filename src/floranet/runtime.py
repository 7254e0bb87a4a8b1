"""The fastest correct runtime for inference-only work (feature extraction, predict, evaluate, serve).

``choose("auto", "auto")`` picks, and says why:

* a GPU visible to TensorFlow → TensorFlow (fp32);
* else OpenVINO when installed (``floranet[openvino]``), in fp32 (bf16, about
  2x faster on AVX512_BF16/AMX CPUs, is opt-in until its accuracy check passes);
* else TensorFlow fp32.

:func:`compile_inference` turns a Keras model into a numpy → numpy callable for
that choice. Training itself always runs in TensorFlow.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from floranet.errors import ConfigError

log = logging.getLogger(__name__)
RUNTIMES = ("auto", "tensorflow", "openvino")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class RuntimeChoice:
    """A resolved runtime and precision, with the reason it was picked."""

    runtime: str
    precision: str
    reason: str

    @property
    def key(self) -> str:
        return f"{self.runtime}-{self.precision}"


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """CPU feature flags from /proc/cpuinfo (empty elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16() -> bool:
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def gpu_available() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def choose(runtime: str = "auto", precision: str = "auto") -> RuntimeChoice:
    """Resolves ``auto`` values for this machine.

    Raises:
        ConfigError: Unknown values, or OpenVINO requested but not installed.
    """
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}. Received: runtime={runtime!r}")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}. Received: precision={precision!r}")
    if runtime == "openvino" and not openvino_available():
        raise ConfigError("runtime='openvino' needs OpenVINO: pip install 'floranet[openvino]'. "
                          "Received: runtime='openvino'")
    reasons = []
    if runtime == "auto":
        if gpu_available():
            runtime, why = "tensorflow", "a GPU is visible to TensorFlow"
        elif openvino_available():
            runtime, why = "openvino", "no GPU; OpenVINO is the fastest CPU runtime installed"
        else:
            runtime, why = "tensorflow", "no GPU and OpenVINO is not installed (pip install 'floranet[openvino]')"
        reasons.append(why)
    if precision == "auto":
        # bf16 doubles OpenVINO throughput on AVX512_BF16/AMX, but benchmarks/bench_bf16.py has not yet shown
        # its accuracy change to be under 0.5 points (measured -1.6), so auto stays fp32; --precision bf16 opts in.
        precision = "fp32"
        hint = " (--precision bf16 is about 2x faster on this CPU)" if runtime == "openvino" and native_bf16() else ""
        reasons.append("fp32: bf16 is opt-in until its accuracy check passes" + hint)
    elif precision == "bf16" and runtime == "tensorflow":
        reasons.append("bf16 via Keras mixed_bfloat16")
    return RuntimeChoice(runtime, precision, "; ".join(reasons) or "as requested")


def compile_inference(model: keras.Model, choice: RuntimeChoice) -> Callable[[np.ndarray], np.ndarray]:
    """A function float32 ``[B, H, W, 3]`` → float32 outputs running ``model`` as ``choice`` says.

    For TensorFlow bf16 the model must have been built under the
    ``mixed_bfloat16`` policy already (see :func:`floranet.models.classifier`).
    """
    if choice.runtime == "openvino":
        return _openvino(model, choice.precision)
    import tensorflow as tf

    fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(keras.ops.cast(fn(tf.convert_to_tensor(x, tf.float32)), "float32"))

    return run


def _openvino(model: keras.Model, precision: str) -> Callable[[np.ndarray], np.ndarray]:
    import openvino as ov

    with tempfile.TemporaryDirectory(prefix="floranet-ov-") as tmp:
        # Keras 3 → SavedModel → OpenVINO, the path OpenVINO documents for Keras 3.
        model.export(os.path.join(tmp, "saved_model"), format="tf_saved_model", verbose=False)
        ov_model = ov.convert_model(os.path.join(tmp, "saved_model"))
    compiled = ov.Core().compile_model(ov_model, "CPU", {
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        "PERFORMANCE_HINT": "LATENCY",  # one request uses every core: best for our batch loops
    })
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        out = request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
        return np.asarray(out[compiled.output(0)], dtype=np.float32)

    return run
