"""floranet: train, evaluate and serve ResNet image classifiers.

Packages, in the order data flows through them: ``data`` → ``models`` → ``inference`` → ``training`` →
``evaluation`` → ``serving`` / ``export`` → ``workflows`` → ``cli``; beside them ``config``, ``errors``,
``rundir`` and ``utils``. Submodules load on first use, so ``import floranet`` (and ``floranet --help``)
stays fast; ``floranet.train`` and ``floranet.load`` import Keras and TensorFlow when touched.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

__version__ = "0.1.0"

# OpenVINO's converter reports each import and conversion to Google Analytics (openvino_telemetry, on unless its own
# opt_in_out tool was run) and keeps a client id under ~/intel: floranet keeps that off in its processes. OpenVINO
# runs without the package (its telemetry stub), so importing it fails here, unless it was imported already.
if "openvino_telemetry" not in sys.modules:
    sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]

_SUBMODULES = {
    "cli",
    "config",
    "data",
    "errors",
    "evaluation",
    "export",
    "inference",
    "models",
    "rundir",
    "serving",
    "training",
    "utils",
    "workflows",
}

__all__ = ["__version__", "load", "train", *sorted(_SUBMODULES)]


def __dir__() -> list[str]:
    """The module's names with the lazily loaded ones (``train``, ``load``, the submodules) that ``dir`` missed."""
    return sorted({*globals(), *__all__})


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"floranet.{name}")
    if name == "train":
        from floranet.workflows import train

        return train
    if name == "load":
        from floranet.inference import load

        return load
    raise AttributeError(f"module 'floranet' has no attribute {name!r}")
