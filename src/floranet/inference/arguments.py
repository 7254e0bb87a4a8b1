"""Checks of what the Python API is given (:func:`floranet.inference.load`, :class:`~floranet.inference.Predictor`):
a wrong argument is a :class:`~floranet.errors.ConfigError` naming it and echoing its value, not a traceback from
deep inside."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from floranet.config import InferenceConfig, check_positive_int
from floranet.config.choices import check
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


def run_dir(value: Any) -> str | os.PathLike[str]:
    """``value`` when it is a path (``str`` or ``os.PathLike``) a run directory can be: ``None`` or a bytes path
    failed deep inside ``pathlib`` ("expected str, bytes or os.PathLike object")."""
    check(_is_path(value), "run_dir must be a path to a run directory (str or os.PathLike)", "run_dir", value)
    return value


def paths(name: str, value: Any, *, one: bool) -> list[str | os.PathLike[str]]:
    """``value`` as a list of paths: a path (when ``one``), or any iterable of paths.

    Bytes paths are refused, not read: every step after (``pathlib``, the decoders, the rows' ``file``) takes ``str``.

    Raises:
        ConfigError: Anything else (``None``, a number, bytes, an image object, a list holding one), naming ``name``
            (and the item's index).
    """
    what = f"{name} must be {'a path or ' if one else ''}a list of paths (str or os.PathLike"
    what += "; decode a bytes path with os.fsdecode)"
    if one and _is_path(value):
        return [value]
    if isinstance(value, np.ndarray) and value.dtype.kind != "U":  # pixels: its repr would run over many lines
        raise ConfigError(
            f"{what}; pixels go to Predictor.probabilities. Received: {name}=an array of shape {value.shape} and "
            f"dtype {value.dtype}"
        )
    iterable = isinstance(value, Iterable) and not isinstance(value, str | bytes | bytearray | os.PathLike)
    check(iterable, what, name, value)
    items = list(value)
    for i, item in enumerate(items):
        check(_is_path(item), what, f"{name}[{i}]", item)
    return items


def pixels(value: Any, size: tuple[int, int]) -> np.ndarray:
    """``value`` as float32 ``[B, H, W, 3]`` at ``size`` (a real-valued array of B >= 1 RGB images); a wrong shape
    failed inside OpenVINO with a multi-line RuntimeError, or answered NaN."""
    try:
        array = np.asarray(value)
    except ValueError:  # ragged nested lists
        array = np.asarray(None)
    ok = array.dtype.kind in "fiu" and array.ndim == 4 and array.shape[1:] == (*size, 3) and len(array) >= 1
    if not ok:
        raise ConfigError(
            f"pixels must be an array [B, {size[0]}, {size[1]}, 3] of B >= 1 images (RGB 0..255, float32, at the "
            f"run's image size). Received: pixels of shape {array.shape} and dtype {array.dtype}"
        )
    return array.astype(np.float32, copy=False)


def _is_path(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, os.PathLike) and isinstance(os.fspath(value), str))
