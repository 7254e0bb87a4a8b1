"""floranet: train, evaluate and serve ResNet image classifiers."""

from __future__ import annotations

__version__ = "0.1.0"

from floranet import errors  # noqa: E402
from floranet import models  # noqa: E402

__all__ = ["__version__", "errors", "models"]
