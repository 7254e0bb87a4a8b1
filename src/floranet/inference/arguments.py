"""Checks of what the Python API is given (:func:`floranet.inference.load`, :class:`~floranet.inference.Predictor`):
a wrong argument is a :class:`~floranet.errors.ConfigError` naming it and echoing its value, not a traceback from
deep inside."""

from __future__ import annotations

import dataclasses
from typing import Any

from floranet.config import InferenceConfig, check_positive_int
from floranet.errors import ConfigError


def check_top_k(top_k: Any) -> None:
    if top_k is not None:
        check_positive_int("top_k", top_k)


def inference_config(config: Any, settings: dict[str, Any]) -> InferenceConfig:
    """``config``, or one made of ``settings`` (not both: a setting beside a config was ignored).

    Raises:
        ConfigError: Both given, a config of another type, or an unknown setting.
    """
    if config is not None and not isinstance(config, InferenceConfig):
        raise ConfigError(f"config must be an InferenceConfig. Received: config={config!r}")
    if config is not None and settings:
        raise ConfigError(f"give config or settings, not both. Received: settings={sorted(settings)}")
    unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(InferenceConfig)})
    if unknown:
        raise ConfigError(f"Unknown settings: {', '.join(unknown)}. Received: {unknown}")
    return config or InferenceConfig(**settings)
