"""Configuration: every choice floranet offers, validated once, in frozen dataclasses.

* :class:`TrainConfig`: a training run. Precedence, lowest first: dataclass
  defaults < preset < config file < flags (:func:`resolve`). Saved as
  ``RUN_DIR/config.yaml`` by every run.
* :class:`InferenceConfig`: how a finished run is used (predict, evaluate, serve).
* :class:`ServeConfig`: the server's limits.
* :class:`CompareConfig`: a backbone comparison.

The CLI takes its choice lists from the constants here.
"""

from floranet.config.choices import (
    AUGMENT_CHOICES,
    CLASS_WEIGHTS,
    DEFAULT_MAX_PIXELS,
    DISTRIBUTE_CHOICES,
    ENGINES,
    EXPORT_FORMATS,
    FINE_TUNE_CACHE,
    LOOPBACK_HOSTS,
    MAX_CONFIG_BYTES,
    MIN_IMAGE_SIZE,
    MLFLOW_EXPERIMENT,
    OUTPUT_FORMATS,
    PRECISIONS,
    PRESETS,
    QUANTIZE,
    RUNTIMES,
    SCHEDULES,
    TRAIN_PRECISIONS,
    UNKNOWN_METHODS,
    UNKNOWN_SWITCH,
    as_name,
    check_choice,
    check_positive_int,
    is_finite_number,
    is_int,
    is_port_text,
    parse_image_size,
)
from floranet.config.compare import CompareConfig
from floranet.config.train import FIELDS, TrainConfig, load_file, resolve
from floranet.config.use import MAX_HEADER_BYTES, InferenceConfig, ServeConfig

__all__ = [
    "AUGMENT_CHOICES",
    "CLASS_WEIGHTS",
    "FINE_TUNE_CACHE",
    "DEFAULT_MAX_PIXELS",
    "DISTRIBUTE_CHOICES",
    "ENGINES",
    "EXPORT_FORMATS",
    "FIELDS",
    "LOOPBACK_HOSTS",
    "MAX_CONFIG_BYTES",
    "MAX_HEADER_BYTES",
    "MIN_IMAGE_SIZE",
    "MLFLOW_EXPERIMENT",
    "OUTPUT_FORMATS",
    "PRECISIONS",
    "PRESETS",
    "QUANTIZE",
    "RUNTIMES",
    "SCHEDULES",
    "TRAIN_PRECISIONS",
    "UNKNOWN_METHODS",
    "UNKNOWN_SWITCH",
    "as_name",
    "CompareConfig",
    "InferenceConfig",
    "ServeConfig",
    "TrainConfig",
    "check_choice",
    "check_positive_int",
    "is_finite_number",
    "is_int",
    "is_port_text",
    "load_file",
    "parse_image_size",
    "resolve",
]
