"""floranet: train, evaluate and serve ResNet image classifiers.

Submodules load on first use, so ``import floranet`` (and ``floranet --help``)
stays fast; ``floranet.models``, ``floranet.train`` and ``floranet.load`` import
Keras and TensorFlow when touched.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = {"config", "data", "demo", "download", "errors", "evaluate", "gradcam", "io", "metrics", "models",
               "plots", "predict", "report", "training", "workflow"}

__all__ = ["__version__", "load", "train", *sorted(_SUBMODULES)]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"floranet.{name}")
    if name == "train":
        from floranet.training import train

        return train
    if name == "load":
        from floranet.predict import load

        return load
    raise AttributeError(f"module 'floranet' has no attribute {name!r}")
