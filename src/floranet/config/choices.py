"""Every choice floranet offers, and the one set of checks that validate settings (Keras-style messages)."""

from __future__ import annotations

import math
import numbers
import re
import reprlib
from collections.abc import Mapping
from typing import Any, TypeGuard

from floranet.errors import ConfigError

# Each preset gives every setting in PRESET_FIELDS (TrainConfig takes its defaults of them from here): a preset's
# name then says what all of them were before any override.
PRESETS: dict[str, dict[str, Any]] = {
    # The tutorial's recipe, preprocessing done right: frozen ResNet50, its head,
    # Adam 1e-3, 5 epochs, 180 px, no fine-tuning, no augmentation.
    "tutorial": {
        "backbone": "resnet50",
        "image_size": (180, 180),
        "epochs": 5,
        "fine_tune_epochs": 0,
        "learning_rate": 1e-3,
        "fine_tune_learning_rate": 1e-5,
        "augment": "off",
        "dropout": 0.0,
        "head_units": 512,
        "schedule": "cosine",
        "label_smoothing": 0.0,
        "early_stopping_patience": 0,
    },
    # Two stages: a regularised head trained on cached features (cheap, so more epochs), early stopping on
    # validation loss, then fine-tuning the last stage at 1e-4 with a cosine schedule for 2 epochs on the frozen
    # layers' outputs that stage 1's pass already wrote (training/prefix.py). 4 augmented epochs instead: mean
    # validation accuracy 94.8% instead of 94.2% over bench_unknown.py's five 4-class runs of flower_photos
    # (MobileNetV2, 225 px; per_class val_accuracy in results/unknown_recommended.json and
    # unknown_recommended_fine_tune_epochs-4_augment-fine-tune.json). Their train_seconds come from separate
    # runs on a shared machine (the 2-epoch file's note says its cores were busy), so they do not compare.
    "recommended": {
        "backbone": "resnet50",
        "image_size": (180, 180),
        "epochs": 20,
        "fine_tune_epochs": 2,
        "learning_rate": 1e-3,
        "fine_tune_learning_rate": 1e-4,
        "augment": "off",
        "dropout": 0.3,
        "head_units": 512,
        "schedule": "cosine",
        "label_smoothing": 0.1,
        "early_stopping_patience": 3,
    },
}
PRESET_FIELDS = tuple(PRESETS["recommended"])
AUGMENT_CHOICES = ("off", "fine-tune", "all")
CLASS_WEIGHTS = ("auto",)  # or None: every class weighs the same
FINE_TUNE_CACHE = ("auto", "off")
DISTRIBUTE_CHOICES = ("none", "auto", "mirrored", "multi-worker")
SCHEDULES = ("cosine", "plateau", "constant")
RUNTIMES = ("auto", "tensorflow", "openvino")
PRECISIONS = ("auto", "fp32", "bf16")
# Training also takes int8: the frozen layers' inference (stage-1 features, the stage-2 prefix) on OpenVINO int8.
TRAIN_PRECISIONS = (*PRECISIONS, "int8")
OUTPUT_FORMATS = ("table", "csv", "json", "parquet")
ENGINES = ("local", "ray")
EXPORT_FORMATS = ("keras", "saved_model", "onnx", "openvino", "tflite")
QUANTIZE = ("fp16", "int8")
DEFAULT_MAX_PIXELS = 50_000_000
# The MLflow experiment of `train --mlflow` and `track` when neither --experiment nor MLFLOW_EXPERIMENT_NAME names one.
MLFLOW_EXPERIMENT = "floranet"
# Out-of-distribution scores a run can answer "unknown" with (floranet.inference.unknown); the default won the
# leave-one-class-out comparison of benchmarks/bench_unknown.py.
UNKNOWN_METHODS = ("combined", "knn_head", "knn", "energy", "mahalanobis", "class_mean", "msp")
# `--unknown on|off` of predict and serve (InferenceConfig.unknown).
UNKNOWN_SWITCH = ("on", "off")
# Smallest model input side: every registered backbone builds at 32 px (CIFAR ResNets' native size).
MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 8192  # 8192² is 67 MP an image: past any model input floranet trains
MAX_INT = 2**31  # counts and sizes become int32 tensors and TensorFlow arguments
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")  # the Host names a loopback-only server answers to
MAX_CONFIG_BYTES = 1 << 20  # a settings file is a few hundred bytes; a larger one is not a config
# A model name in a URL path: /v2/models/<name>.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
NAME_RULE = "model_name must be 1 to 128 of A-Za-z0-9_-. (the first: A-Za-z0-9)"


def is_name(v: Any) -> bool:
    return isinstance(v, str) and bool(MODEL_NAME.fullmatch(v))


def as_name(text: str) -> str:
    """``text`` (a run folder's name) made a :data:`MODEL_NAME`: other characters become ``_``, a leading
    ``_ . -`` is dropped, and at most 128 are kept; ``"model"`` where nothing is left. KServe clients put the
    name and version in URL paths unquoted (tritonclient quotes the name only): ``my run #1`` → ``my_run__1``."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", text).lstrip("_.-")[:128]
    return name or "model"


def is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_finite_number(v: Any) -> TypeGuard[int | float]:
    """An int or float (not a bool) that is neither NaN nor infinite: what a number read from JSON must be."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_port_text(text: str) -> bool:
    """Whether ``text`` (a ``host:port``'s port) is plain ASCII digits naming a TCP port in [1, 65535]."""
    return text.isascii() and text.isdigit() and len(text) <= 5 and 1 <= int(text) <= 65535


def cluster_hosts_problem(hosts: list[str]) -> str:
    """Why the ``host:port`` list of a multi-worker cluster cannot work ("" when it can): a port outside
    [1, 65535] (TensorFlow's gRPC server then fails to start, with a traceback), or one ``host:port`` twice (two
    workers on one port: the job hung, ignoring SIGTERM).

    Args:
        hosts: The workers' ``host:port`` texts, stripped.
    """
    seen: set[str] = set()
    for host in hosts:
        name, _, port = host.rpartition(":")
        if not is_port_text(port):
            return f"{host!r} has no port in [1, 65535]"
        if not name.strip():
            return f"{host!r} has no host before its port"
        if host.strip().lower() in seen:
            return f"{host!r} is named twice (each worker needs a host:port of its own)"
        seen.add(host.strip().lower())
    return ""


# A value echoed in a message is cut short: a config file can hold a structure far larger than itself.
_ECHO = reprlib.Repr()
_ECHO.maxlevel, _ECHO.maxstring, _ECHO.maxother, _ECHO.maxlong = 3, 200, 200, 60


def check(ok: bool, message: str, name: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{message}. Received: {name}={_echo(value)}")


def _echo(value: Any) -> str:
    """``value`` as a message shows it: shortened, and an int too long to print (Python refuses over 4,300
    digits, even in a repr) by its size."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 1000:
        return f"<an int of {value.bit_length():,} bits>"
    return _ECHO.repr(value)


def parse_image_size(
    value: Any, *, name: str = "image_size", minimum: int = MIN_IMAGE_SIZE, allow_int: bool = True
) -> tuple[int, int]:
    """``180`` or ``(180, 240)`` (or a list) → ``(h, w)``; the one image-size check of floranet.

    Args:
        value: An int or a pair of ints.
        name: The argument's name, for the message.
        minimum: Smallest accepted side: :data:`MIN_IMAGE_SIZE` for models, 1 for plain resizing.
        allow_int: Accept one int for a square (the user-facing settings do; internal APIs take pairs).

    Raises:
        ConfigError: Not an int or pair of ints >= ``minimum``.
    """
    square = allow_int and is_int(value)
    size: Any = (value, value) if square else tuple(value) if isinstance(value, (tuple, list)) else ()
    check(
        len(size) == 2 and all(is_int(s) and minimum <= s <= MAX_IMAGE_SIZE for s in size),
        f"{name} must be {'an int' if allow_int else 'a pair of ints'} in [{minimum}, {MAX_IMAGE_SIZE}]"
        f"{' or (h, w)' if allow_int else ' (h, w)'}",
        name,
        value,
    )
    return int(size[0]), int(size[1])


def check_choice(name: str, value: Any, choices: tuple[str, ...] | Mapping[str, Any]) -> None:
    """ConfigError unless ``value`` is one of ``choices``."""
    check(isinstance(value, str) and value in choices, f"{name} must be one of {', '.join(choices)}", name, value)


def check_positive_int(name: str, value: Any) -> int:
    """ConfigError unless ``value`` is an int in ``(0, 2**31)``."""
    check(is_int(value) and value > 0, f"{name} must be a positive int", name, value)
    check(value < MAX_INT, f"{name} must be below 2**31", name, value)
    return int(value)


def check_int_at_least(cfg: Any, name: str, low: int, note: str = "") -> None:
    value = getattr(cfg, name)
    check(is_int(value) and value >= low, f"{name} must be an int >= {low}{note}", name, value)
    check(value < MAX_INT, f"{name} must be below 2**31", name, value)


def check_fraction(cfg: Any, name: str, low_open: bool, high_open: bool = True) -> None:
    value = getattr(cfg, name)
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and (value > 0 if low_open else value >= 0)
        and (value < 1 if high_open else value <= 1)
    )
    interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
    check(ok, f"{name} must be in {interval}", name, value)
