"""Models: the backbone registry, our ResNet family, weights and the classifier (submodules load on use)."""

from __future__ import annotations

import importlib
from typing import Any

_SUBMODULES = {"backbones", "classifier", "mobilenet", "registry", "resnet", "weights"}
__all__ = sorted(_SUBMODULES)


def __dir__() -> list[str]:
    """The module's names with the submodules, which load on first use (``dir`` missed them until then)."""
    return sorted({*globals(), *__all__})


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"floranet.models.{name}")
    raise AttributeError(f"module 'floranet.models' has no attribute {name!r}")
