"""Training configuration: one frozen dataclass, presets, YAML, precedence.

Precedence, lowest first: dataclass defaults < preset < config file < flags.
The resolved config is saved as ``RUN_DIR/config.yaml`` by every run.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from floranet.errors import ConfigError

PRESETS: dict[str, dict[str, Any]] = {
    # The tutorial's recipe, preprocessing done right: frozen ResNet50, its head,
    # Adam 1e-3, 5 epochs, 180 px, no fine-tuning, no augmentation.
    "tutorial": {
        "backbone": "resnet50", "image_size": (180, 180), "epochs": 5, "fine_tune_epochs": 0,
        "learning_rate": 1e-3, "augment": "off", "dropout": 0.0, "head_units": 512,
        "label_smoothing": 0.0, "early_stopping_patience": 0,
    },
    # Two stages: a regularised head trained on cached features (cheap, so
    # more epochs), then fine-tuning the last stage with augmentation and a
    # cosine schedule, early stopping on validation loss.
    "recommended": {
        "epochs": 20, "fine_tune_epochs": 5, "learning_rate": 1e-3, "fine_tune_learning_rate": 1e-5,
        "augment": "fine-tune", "dropout": 0.3, "head_units": 512, "schedule": "cosine",
        "label_smoothing": 0.1,
    },
}
AUGMENT_CHOICES = ("off", "fine-tune", "all")
DISTRIBUTE_CHOICES = ("none", "auto", "mirrored", "multi-worker")


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
    max_pixels: int = 50_000_000
    # Data-parallel training (floranet.training.distribute): none | auto | mirrored | multi-worker.
    # batch_size is per replica; the learning rates are scaled by the number of replicas.
    distribute: str = "none"
    workers: str | None = None  # "host:port,host:port" (sets TF_CONFIG); else TF_CONFIG is used
    worker_index: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        original = size = self.image_size
        if isinstance(size, int) and not isinstance(size, bool):
            size = (size, size)
        if isinstance(size, list):
            size = tuple(size)
        object.__setattr__(self, "image_size", size)
        if self.weights in ("none", "None", ""):
            object.__setattr__(self, "weights", None)
        _check(isinstance(size, tuple) and len(size) == 2 and all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 32 for s in size),
            "image_size must be an int >= 32 or (h, w)", "image_size", original)
        _check(self.preset in PRESETS, f"preset must be one of {', '.join(PRESETS)}", "preset", self.preset)
        _positive_int(self, "batch_size")
        _check(_is_int(self.epochs) and self.epochs >= 0, "epochs must be an int >= 0", "epochs", self.epochs)
        _check(_is_int(self.fine_tune_epochs) and self.fine_tune_epochs >= 0,
               "fine_tune_epochs must be an int >= 0", "fine_tune_epochs", self.fine_tune_epochs)
        _check(self.epochs + self.fine_tune_epochs > 0, "epochs + fine_tune_epochs must be > 0",
               "epochs", self.epochs)
        for name in ("learning_rate", "fine_tune_learning_rate"):
            value = getattr(self, name)
            _check(isinstance(value, (int, float)) and 0 < value < 1, f"{name} must be in (0, 1)", name, value)
        _check(isinstance(self.val_split, float) and 0 < self.val_split < 1,
               "val_split must be a float in (0, 1)", "val_split", self.val_split)
        _check(_is_int(self.seed), "seed must be an int", "seed", self.seed)
        _check(self.precision in ("fp32", "bf16", "auto"), "precision must be fp32, bf16 or auto",
               "precision", self.precision)
        _check(self.runtime in ("auto", "tensorflow", "openvino"), "runtime must be auto, tensorflow or openvino",
               "runtime", self.runtime)
        _check(self.augment in AUGMENT_CHOICES, f"augment must be one of {', '.join(AUGMENT_CHOICES)}",
               "augment", self.augment)
        _check(self.class_weights in (None, "auto"), "class_weights must be 'auto' or None",
               "class_weights", self.class_weights)
        _check(self.schedule in ("cosine", "plateau", "constant"), "schedule must be cosine, plateau or constant",
               "schedule", self.schedule)
        _check(_is_int(self.head_units) and self.head_units >= 0, "head_units must be an int >= 0",
               "head_units", self.head_units)
        _check(isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1, "dropout must be in [0, 1)",
               "dropout", self.dropout)
        _check(isinstance(self.label_smoothing, (int, float)) and 0 <= self.label_smoothing < 1,
               "label_smoothing must be in [0, 1)", "label_smoothing", self.label_smoothing)
        _check(_is_int(self.early_stopping_patience) and self.early_stopping_patience >= 0,
               "early_stopping_patience must be an int >= 0 (0: off)", "early_stopping_patience",
               self.early_stopping_patience)
        _positive_int(self, "max_pixels")
        _check(self.distribute in DISTRIBUTE_CHOICES, f"distribute must be one of {', '.join(DISTRIBUTE_CHOICES)}",
               "distribute", self.distribute)
        hosts = [h for h in (self.workers or "").split(",") if h.strip()] if isinstance(self.workers, str) else None
        _check(self.workers is None or (hosts and all(h.count(":") == 1 and h.split(":")[1].isdigit()
                                                     for h in hosts)),
               "workers must be 'host:port,host:port,...'", "workers", self.workers)
        _check(self.worker_index is None or (_is_int(self.worker_index) and hosts is not None
                                             and 0 <= self.worker_index < len(hosts)),
               "worker_index must be an int in [0, number of workers) and needs workers", "worker_index",
               self.worker_index)
        _check(self.workers is None or (self.worker_index is not None and self.distribute in ("multi-worker", "auto")),
               "workers needs worker_index and distribute multi-worker (or auto)", "workers", self.workers)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["image_size"] = list(self.image_size)
        if not d["extra"]:
            d.pop("extra")
        return d

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the config as YAML, atomically."""
        from floranet.io import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check(ok: bool, message: str, name: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{message}. Received: {name}={value!r}")


def _positive_int(cfg: TrainConfig, name: str) -> None:
    value = getattr(cfg, name)
    _check(_is_int(value) and value > 0, f"{name} must be a positive int", name, value)


FIELDS = {f.name for f in dataclasses.fields(TrainConfig)} - {"extra"}


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
    if preset not in PRESETS:
        raise ConfigError(f"preset must be one of {', '.join(PRESETS)}. Received: preset={preset!r}")
    values: dict[str, Any] = {**PRESETS[preset], **from_file, **given, "preset": preset}
    return TrainConfig(**values)
