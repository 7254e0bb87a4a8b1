"""Configuration: every choice floranet offers, validated once, in frozen dataclasses.

* :class:`TrainConfig`: a training run. Precedence, lowest first: dataclass
  defaults < preset < config file < flags (:func:`resolve`). Saved as
  ``RUN_DIR/config.yaml`` by every run.
* :class:`InferenceConfig`: how a finished run is used (predict, evaluate, serve).
* :class:`ServeConfig`: the server's limits.

The CLI takes its choice lists from the constants here.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from floranet.errors import ConfigError
from floranet.utils.files import atomic_write_text

PRESETS: dict[str, dict[str, Any]] = {
    # The tutorial's recipe, preprocessing done right: frozen ResNet50, its head,
    # Adam 1e-3, 5 epochs, 180 px, no fine-tuning, no augmentation.
    "tutorial": {
        "backbone": "resnet50",
        "image_size": (180, 180),
        "epochs": 5,
        "fine_tune_epochs": 0,
        "learning_rate": 1e-3,
        "augment": "off",
        "dropout": 0.0,
        "head_units": 512,
        "label_smoothing": 0.0,
        "early_stopping_patience": 0,
    },
    # Two stages: a regularised head trained on cached features (cheap, so
    # more epochs), then fine-tuning the last stage with augmentation and a
    # cosine schedule, early stopping on validation loss.
    "recommended": {
        "epochs": 20,
        "fine_tune_epochs": 5,
        "learning_rate": 1e-3,
        "fine_tune_learning_rate": 1e-5,
        "augment": "fine-tune",
        "dropout": 0.3,
        "head_units": 512,
        "schedule": "cosine",
        "label_smoothing": 0.1,
    },
}
AUGMENT_CHOICES = ("off", "fine-tune", "all")
DISTRIBUTE_CHOICES = ("none", "auto", "mirrored", "multi-worker")
SCHEDULES = ("cosine", "plateau", "constant")
RUNTIMES = ("auto", "tensorflow", "openvino")
PRECISIONS = ("auto", "fp32", "bf16")
OUTPUT_FORMATS = ("table", "csv", "json", "parquet")
ENGINES = ("local", "ray")
EXPORT_FORMATS = ("keras", "saved_model", "onnx", "openvino", "tflite")
QUANTIZE = ("fp16", "int8")
DEFAULT_MAX_PIXELS = 50_000_000
# Out-of-distribution scores a run can answer "unknown" with (floranet.inference.unknown); the default won the
# leave-one-class-out comparison of benchmarks/bench_unknown.py.
UNKNOWN_METHODS = ("combined", "knn_head", "knn", "energy", "mahalanobis", "class_mean", "msp")
# Smallest model input side: every registered backbone builds at 32 px (CIFAR ResNets' native size).
MIN_IMAGE_SIZE = 32


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _check(ok: bool, message: str, name: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{message}. Received: {name}={value!r}")


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
    square = allow_int and _is_int(value)
    size: Any = (value, value) if square else tuple(value) if isinstance(value, (tuple, list)) else ()
    _check(
        len(size) == 2 and all(_is_int(s) and s >= minimum for s in size),
        f"{name} must be {'an int' if allow_int else 'a pair of ints'} >= {minimum}"
        f"{' or (h, w)' if allow_int else ' (h, w)'}",
        name,
        value,
    )
    return int(size[0]), int(size[1])


def check_choice(name: str, value: Any, choices: tuple[str, ...] | Mapping[str, Any]) -> None:
    """ConfigError unless ``value`` is one of ``choices``."""
    _check(isinstance(value, str) and value in choices, f"{name} must be one of {', '.join(choices)}", name, value)


def check_positive_int(name: str, value: Any) -> int:
    """ConfigError unless ``value`` is an int > 0."""
    _check(_is_int(value) and value > 0, f"{name} must be a positive int", name, value)
    return int(value)


def _check_int_at_least(cfg: Any, name: str, low: int, note: str = "") -> None:
    value = getattr(cfg, name)
    _check(_is_int(value) and value >= low, f"{name} must be an int >= {low}{note}", name, value)


def _check_fraction(cfg: Any, name: str, low_open: bool, high_open: bool = True) -> None:
    value = getattr(cfg, name)
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and (value > 0 if low_open else value >= 0)
        and (value < 1 if high_open else value <= 1)
    )
    interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
    _check(ok, f"{name} must be in {interval}", name, value)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run. Validated on creation."""

    data_dir: str = ""
    out: str = "runs/latest"
    preset: str = "recommended"
    backbone: str = "resnet50"
    weights: str | None = "imagenet"
    image_size: tuple[int, int] = (180, 180)
    batch_size: int = 32
    epochs: int = 5
    fine_tune_epochs: int = 0
    learning_rate: float = 1e-3
    fine_tune_learning_rate: float = 1e-5
    schedule: str = "cosine"
    early_stopping_patience: int = 3
    val_split: float = 0.2
    seed: int = 123
    precision: str = "auto"
    runtime: str = "auto"
    augment: str = "off"
    class_weights: str | None = None
    head_units: int = 512
    dropout: float = 0.0
    label_smoothing: float = 0.0
    split_file: str | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    # Data-parallel training (floranet.training.distribute): none | auto | mirrored | multi-worker.
    # batch_size is per replica; the learning rates are scaled by the number of replicas.
    distribute: str = "none"
    workers: str | None = None  # "host:port,host:port" (sets TF_CONFIG); else TF_CONFIG is used
    worker_index: int | None = None
    # Data curation (floranet.data.curation): files left out (an audit.csv or a list of relative paths) and
    # a relabel file (path,new_label); the user's files are never moved or edited.
    exclude: str | None = None
    relabel: str | None = None
    # The label audit at the end of training, run only when cheap: stage 1 ran on cached features.
    audit: bool = True
    # The "unknown" answer: its score and the share of known validation images its threshold keeps.
    unknown_method: str = "combined"
    unknown_keep: float = 0.95

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", parse_image_size(self.image_size))
        if self.weights in ("none", "None", ""):
            object.__setattr__(self, "weights", None)
        self._check_training()
        self._check_choices()
        self._check_cluster()

    def _check_training(self) -> None:
        check_positive_int("batch_size", self.batch_size)
        _check_int_at_least(self, "epochs", 0)
        _check_int_at_least(self, "fine_tune_epochs", 0)
        _check(self.epochs + self.fine_tune_epochs > 0, "epochs + fine_tune_epochs must be > 0", "epochs", self.epochs)
        for name in ("learning_rate", "fine_tune_learning_rate"):
            _check_fraction(self, name, low_open=True)
        _check(
            isinstance(self.val_split, float) and 0 < self.val_split < 1,
            "val_split must be a float in (0, 1)",
            "val_split",
            self.val_split,
        )
        _check(_is_int(self.seed), "seed must be an int", "seed", self.seed)
        _check_int_at_least(self, "head_units", 0)
        _check_fraction(self, "dropout", low_open=False)
        _check_fraction(self, "label_smoothing", low_open=False)
        _check_int_at_least(self, "early_stopping_patience", 0, " (0: off)")
        check_positive_int("max_pixels", self.max_pixels)
        _check(isinstance(self.audit, bool), "audit must be True or False", "audit", self.audit)
        _check_fraction(self, "unknown_keep", low_open=True)

    def _check_choices(self) -> None:
        check_choice("preset", self.preset, PRESETS)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("runtime", self.runtime, RUNTIMES)
        check_choice("augment", self.augment, AUGMENT_CHOICES)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("distribute", self.distribute, DISTRIBUTE_CHOICES)
        check_choice("unknown_method", self.unknown_method, UNKNOWN_METHODS)
        for name in ("exclude", "relabel"):
            value = getattr(self, name)
            _check(
                value is None or (isinstance(value, str) and bool(value)), f"{name} must be a file path", name, value
            )
        _check(
            self.class_weights in (None, "auto"),
            "class_weights must be 'auto' or None",
            "class_weights",
            self.class_weights,
        )

    def _check_cluster(self) -> None:
        hosts = [h for h in self.workers.split(",") if h.strip()] if isinstance(self.workers, str) else None
        _check(
            self.workers is None or bool(hosts and all(h.count(":") == 1 and h.split(":")[1].isdigit() for h in hosts)),
            "workers must be 'host:port,host:port,...'",
            "workers",
            self.workers,
        )
        _check(
            self.worker_index is None
            or (_is_int(self.worker_index) and hosts is not None and 0 <= self.worker_index < len(hosts)),
            "worker_index must be an int in [0, number of workers) and needs workers",
            "worker_index",
            self.worker_index,
        )
        _check(
            self.workers is None or (self.worker_index is not None and self.distribute in ("multi-worker", "auto")),
            "workers needs worker_index and distribute multi-worker (or auto)",
            "workers",
            self.workers,
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["image_size"] = list(self.image_size)
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the config as YAML, atomically."""
        atomic_write_text(path, self.to_yaml())


@dataclass(frozen=True)
class InferenceConfig:
    """How a finished run is used by predict, evaluate and serve. Validated on creation.

    Attributes:
        runtime, precision: See :func:`floranet.inference.runtime.choose`; ``auto`` is resolved per job.
        batch_size: Images per model call.
        top_k: Classes per answer.
        low_confidence: Answers whose top probability is below this are flagged.
        calibrated: Report temperature-scaled probabilities (``calibration.json``).
        safe_mode: Refuse a model that contains code (Keras safe mode).
        threads: Most threads OpenVINO may use (None: every core).
        unknown: Answer "unknown" for images the run's out-of-distribution score rejects (``ood.json``);
            off: every row says ``unknown: false`` and ``ood_score: null``.
    """

    runtime: str = "auto"
    precision: str = "auto"
    batch_size: int = 32
    top_k: int = 3
    low_confidence: float = 0.5
    calibrated: bool = False
    safe_mode: bool = True
    threads: int | None = None
    unknown: bool = True

    def __post_init__(self) -> None:
        _check(isinstance(self.unknown, bool), "unknown must be True or False", "unknown", self.unknown)
        check_choice("runtime", self.runtime, RUNTIMES)
        check_choice("precision", self.precision, PRECISIONS)
        check_positive_int("batch_size", self.batch_size)
        check_positive_int("top_k", self.top_k)
        _check_fraction(self, "low_confidence", low_open=False, high_open=False)
        if self.threads is not None:
            check_positive_int("threads", self.threads)


@dataclass(frozen=True)
class ServeConfig:
    """The server's limits. Validated on creation.

    Attributes:
        max_upload_bytes: Largest accepted request body.
        max_batch: Most images per model call.
        max_wait_ms: How long the batcher waits after a first image for more.
        top_k: Classes returned per image.
        request_timeout_s: Time allowed to receive a request body.
    """

    max_upload_bytes: int = 20 * 1024 * 1024
    max_batch: int = 32
    max_wait_ms: float = 5.0
    top_k: int = 3
    request_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_batch", "top_k"):
            check_positive_int(name, getattr(self, name))
        for name, positive in (("max_wait_ms", False), ("request_timeout_s", True)):
            value = getattr(self, name)
            ok = (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and (value > 0 if positive else value >= 0)
            )
            _check(ok, f"{name} must be a {'positive' if positive else 'non-negative'} number", name, value)


FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def load_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads a YAML config file into a dict of known keys (dashes allowed)."""
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except FileNotFoundError as e:
        raise ConfigError(f"Config file not found. Received: config={str(path)!r}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"Config file {path} is not valid YAML: {e}") from e
    if not isinstance(raw, Mapping):
        raise ConfigError(f"Config file {path} must hold a mapping of settings. Received: {type(raw).__name__}")
    out = {str(k).replace("-", "_"): v for k, v in raw.items()}
    unknown = sorted(set(out) - FIELDS)
    if unknown:
        raise ConfigError(f"Unknown settings in {path}: {', '.join(unknown)}. Valid: {', '.join(sorted(FIELDS))}")
    return out


def resolve(*, file: str | os.PathLike[str] | None = None, **flags: Any) -> TrainConfig:
    """Builds a config: defaults < preset < file < flags (flags set to None are absent).

    Args:
        file: Optional YAML config file.
        **flags: Settings from the command line or Python; ``None`` means "not given".

    Raises:
        ConfigError: Unknown key or invalid value.
    """
    from_file = load_file(file) if file else {}
    given = {k: v for k, v in flags.items() if v is not None}
    unknown = sorted(set(given) - FIELDS)
    if unknown:
        raise ConfigError(f"Unknown settings: {', '.join(unknown)}. Valid: {', '.join(sorted(FIELDS))}")
    preset = given.get("preset", from_file.get("preset", TrainConfig.preset))
    check_choice("preset", preset, PRESETS)
    values: dict[str, Any] = {**PRESETS[preset], **from_file, **given, "preset": preset}
    return TrainConfig(**values)
