"""One way to need an optional dependency: :func:`require` imports it or names the extra to install."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from floranet.errors import MissingDependencyError

# Module imported → (pip distribution, floranet extra that brings it).
PACKAGES: dict[str, tuple[str, str]] = {
    "openvino": ("openvino", "openvino"),
    "nncf": ("nncf", "export"),
    "onnx": ("onnx", "export"),
    "onnxruntime": ("onnxruntime", "export"),
    "tf2onnx": ("tf2onnx", "export"),
    "ai_edge_litert": ("ai-edge-litert", "export"),
    "ray": ("ray", "ray"),
    "pyarrow": ("pyarrow", "parquet"),
    "pyarrow.parquet": ("pyarrow", "parquet"),
    "mlflow": ("mlflow-skinny", "mlflow"),
}


def install_hint(module: str) -> str:
    """``pip install 'floranet[<extra>]'`` for a module of :data:`PACKAGES`."""
    extra = PACKAGES.get(module, (module, ""))[1]
    return f"pip install 'floranet[{extra}]'" if extra else f"pip install {module}"


def require(module: str, purpose: str) -> ModuleType:
    """Imports an optional module, or raises :class:`MissingDependencyError` naming the extra.

    Args:
        module: The module to import, e.g. ``"onnxruntime"``.
        purpose: What needs it, for the message, e.g. ``"format='onnx'"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        package, extra = PACKAGES.get(module, (module, ""))
        raise MissingDependencyError(
            f"{purpose} needs the Python package {package!r}, which is not installed ({e}). "
            f"Install it with: {install_hint(module)}",
            package=package,
            extra=extra,
        ) from e


def available(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
