"""Constants and small helpers shared by the export modules."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from floranet.config import EXPORT_FORMATS, QUANTIZE
from floranet.rundir import RunDir
from floranet.rundir.foreign import EXPORT_MARKER, EXPORT_README
from floranet.utils.optional import install_hint
from floranet.utils.system import package_version

# One logger for the whole package, under the name the single module had.
log = logging.getLogger("floranet.export")

FORMATS = EXPORT_FORMATS
# Which quantize modes each format supports.
SUPPORTED_QUANTIZE: dict[str, tuple[str, ...]] = {"tflite": QUANTIZE, "openvino": QUANTIZE}
EXPORTS_DIR = RunDir.EXPORTS_DIR
EXPORTS_FILE = RunDir.EXPORTS
CALIBRATION_IMAGES = 200
LATENCY_IMAGES = 50
WARMUP_CALLS = 3
CHECK_BATCH = 32
INSTALL_HINT = install_hint("onnxruntime")
README_FILE = EXPORT_README
MARKER = EXPORT_MARKER
SOURCE = "Source:"  # README.txt's line naming the run's model.keras the export was made from

# The model file (or folder) of each format, inside an export folder.
MODEL_FILES = {
    "keras": RunDir.MODEL,
    "saved_model": "model",
    "onnx": "model.onnx",
    "openvino": "model.xml",
    "tflite": "model.tflite",
}


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def versions(fmt: str, quantize: str | None, runtime: str | None) -> dict[str, str]:
    names = ["keras", "tensorflow-cpu" if package_version("tensorflow-cpu") else "tensorflow"]
    names += {"onnx": ["tf2onnx", "onnx", "onnxruntime"], "openvino": ["openvino"], "tflite": ["ai-edge-litert"]}.get(
        fmt, []
    )
    if fmt == "openvino" and quantize == "int8":
        names.append("nncf")
    out = {n: v for n in names if (v := package_version(n))}
    if runtime:
        out["runtime"] = runtime
    return out


def export_name(fmt: str, quantize: str | None) -> str:
    return f"{fmt}-{quantize}" if quantize else fmt


def spread(items: Sequence[Any], n: int) -> list[Any]:
    """Up to ``n`` items evenly spread over ``items`` (which are sorted by class folder)."""
    if n <= 0 or not items:
        return []
    if len(items) <= n:
        return list(items)
    idx = np.unique(np.linspace(0, len(items) - 1, n).round().astype(int))
    return [items[i] for i in idx]


@contextlib.contextmanager
def quiet(enabled: bool) -> Iterator[None]:
    """Silences converters' stdout/stderr chatter and warnings (Python level) unless ``enabled``."""
    if enabled:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
