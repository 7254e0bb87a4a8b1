"""The training configuration: presets, YAML files, and the precedence defaults < preset < file < flags."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from floranet.config.choices import (
    AUGMENT_CHOICES,
    CLASS_WEIGHTS,
    DEFAULT_MAX_PIXELS,
    DISTRIBUTE_CHOICES,
    FINE_TUNE_CACHE,
    MAX_CONFIG_BYTES,
    PRESET_FIELDS,
    PRESETS,
    RUNTIMES,
    SCHEDULES,
    TRAIN_PRECISIONS,
    UNKNOWN_METHODS,
    check,
    check_choice,
    check_fraction,
    check_int_at_least,
    check_positive_int,
    cluster_hosts_problem,
    is_int,
    parse_image_size,
)
from floranet.config.yaml12 import Dumper, UniqueKeyLoader, yaml_problem
from floranet.errors import ConfigError
from floranet.utils.files import atomic_write_text, read_capped

# Settings that name files or folders of the user's (recorded absolute).
PATH_FIELDS = ("data_dir", "split_file", "exclude", "relabel")
# Settings a flag (or the file) sets back to None with "none": a config file's split, lists or cluster are then
# not used (a run's config.yaml reused for a new run carries them). A file named "none" is given as ./none.
NONE_WORDS = ("none", "None")
UNSETTABLE = ("weights", "class_weights", "split_file", "exclude", "relabel", "workers", "worker_index")


MAX_HEAD_UNITS = 1 << 16  # 65,536: wider is a typo (100 million units ran out of memory mid-training)


class _FromPreset:
    def __repr__(self) -> str:
        return "<the preset's>"


# The default of each of PRESET_FIELDS: __post_init__ puts the preset's value there, so the one table (PRESETS)
# holds these defaults, TrainConfig() is resolve()'s recommended recipe and TrainConfig(preset="tutorial") the
# tutorial's (a field's default was only the label's before: TrainConfig() trained 5 epochs as "recommended").
FROM_PRESET: Any = _FromPreset()


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run. Validated on creation.

    ``preset`` names the recipe the settings of :data:`PRESET_FIELDS` start from: each of them not given takes
    the preset's value (``TrainConfig(preset="tutorial", epochs=2)`` is the tutorial's recipe with 2 epochs, as
    :func:`resolve` makes it). One given is an override, which :meth:`preset_overrides` names, and config.yaml
    and the model card with it. ``dataclasses.replace(config, preset=...)`` keeps every other value, so it
    applies nothing: those that differ from the new preset become its overrides, and are recorded so.
    """

    data_dir: str = ""
    out: str = "runs/latest"
    preset: str = "recommended"
    backbone: str = FROM_PRESET
    weights: str | None = "imagenet"
    image_size: tuple[int, int] = FROM_PRESET
    batch_size: int = 32
    epochs: int = FROM_PRESET
    fine_tune_epochs: int = FROM_PRESET
    learning_rate: float = FROM_PRESET
    fine_tune_learning_rate: float = FROM_PRESET
    # Stage 2 on the cached outputs of the frozen layers (training/prefix.py): auto (where it fits) | off;
    # views: augmented copies of the training set cached (0: one per epoch, at most stages.AUTO_VIEWS).
    fine_tune_cache: str = "auto"
    fine_tune_views: int = 0
    # Stage 2's learning rate over its epochs, and stage 1's when stage 1 trains the whole model (augmenting);
    # stage 1 on cached features keeps a constant rate (the tutorial's Adam 1e-3).
    schedule: str = FROM_PRESET
    early_stopping_patience: int = FROM_PRESET
    val_split: float = 0.2
    seed: int = 123
    precision: str = "auto"
    runtime: str = "auto"
    augment: str = FROM_PRESET
    class_weights: str | None = None
    head_units: int = FROM_PRESET
    dropout: float = FROM_PRESET
    label_smoothing: float = FROM_PRESET
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
        check_choice("preset", self.preset, PRESETS)
        for name, value in PRESETS[self.preset].items():
            if getattr(self, name) is FROM_PRESET:
                object.__setattr__(self, name, value)
        self._plain_values()
        object.__setattr__(self, "image_size", parse_image_size(self.image_size))
        for name in UNSETTABLE:  # "none" (a flag's or YAML's word for it) unsets a config file's value
            if getattr(self, name) in NONE_WORDS:
                object.__setattr__(self, name, None)
        self._check_training()
        self._check_choices()
        self._check_cluster()

    def _plain_values(self) -> None:
        """NumPy numbers as Python's and paths as text (what config.yaml can hold), the rest checked after.

        Raises:
            ConfigError: A path setting that is neither text nor a path.
        """
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0 and not isinstance(value, bool):
                object.__setattr__(self, f.name, value.item())  # np.int64(5) -> 5 (NumPy not imported here)
            elif isinstance(value, os.PathLike) and f.name in (*PATH_FIELDS, "out", "weights"):
                object.__setattr__(self, f.name, os.fspath(value))
        for name in (*PATH_FIELDS, "out", "backbone"):
            value = getattr(self, name)
            check(value is None or isinstance(value, str), f"{name} must be text (a path or a name)", name, value)
        for name in ("out", "backbone"):  # no default stands in for these later
            value = getattr(self, name)
            check(isinstance(value, str) and bool(value.strip()), f"{name} must be a non-empty text", name, value)

    def _check_training(self) -> None:
        check_positive_int("batch_size", self.batch_size)
        check_int_at_least(self, "epochs", 0)
        check_int_at_least(self, "fine_tune_epochs", 0)
        check_int_at_least(self, "fine_tune_views", 0, " (0: one per epoch)")
        check(self.epochs + self.fine_tune_epochs > 0, "epochs + fine_tune_epochs must be > 0", "epochs", self.epochs)
        for name in ("learning_rate", "fine_tune_learning_rate"):
            check_fraction(self, name, low_open=True)
        check(
            isinstance(self.val_split, float) and 0 < self.val_split < 1,
            "val_split must be a float in (0, 1)",
            "val_split",
            self.val_split,
        )
        check(is_int(self.seed) and 0 <= self.seed < 2**32, "seed must be an int in [0, 2**32)", "seed", self.seed)
        check_int_at_least(self, "head_units", 0)
        check(
            self.head_units <= MAX_HEAD_UNITS,
            f"head_units must be at most {MAX_HEAD_UNITS:,}",
            "head_units",
            self.head_units,
        )
        check_fraction(self, "dropout", low_open=False)
        check_fraction(self, "label_smoothing", low_open=False)
        check_int_at_least(self, "early_stopping_patience", 0, " (0: off)")
        check_positive_int("max_pixels", self.max_pixels)
        check(isinstance(self.audit, bool), "audit must be True or False", "audit", self.audit)
        check_fraction(self, "unknown_keep", low_open=True)

    def _check_choices(self) -> None:
        check_choice("precision", self.precision, TRAIN_PRECISIONS)
        check_choice("runtime", self.runtime, RUNTIMES)
        check_choice("augment", self.augment, AUGMENT_CHOICES)
        check_choice("fine_tune_cache", self.fine_tune_cache, FINE_TUNE_CACHE)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("distribute", self.distribute, DISTRIBUTE_CHOICES)
        check_choice("unknown_method", self.unknown_method, UNKNOWN_METHODS)
        check(
            not self.fine_tune_views or self.augment in ("fine-tune", "all"),
            "fine_tune_views caches augmented views of the training set, which needs augment='fine-tune' or 'all' "
            f"(with augment={self.augment!r} every view is the same image)",
            "fine_tune_views",
            self.fine_tune_views,
        )
        for name in ("exclude", "relabel", "split_file"):
            value = getattr(self, name)
            check(value is None or (isinstance(value, str) and bool(value)), f"{name} must be a file path", name, value)
        check(
            self.weights is None or (isinstance(self.weights, str) and bool(self.weights.strip())),
            "weights must be 'imagenet', 'none' or a weights file path",
            "weights",
            self.weights,
        )
        check(
            self.class_weights is None or self.class_weights in CLASS_WEIGHTS,
            "class_weights must be 'auto' or None ('none')",
            "class_weights",
            self.class_weights,
        )

    def _check_cluster(self) -> None:
        hosts = [h.strip() for h in self.workers.split(",") if h.strip()] if isinstance(self.workers, str) else None
        check(
            self.workers is None or bool(hosts and all(h.count(":") == 1 for h in hosts)),
            "workers must be 'host:port,host:port,...'",
            "workers",
            self.workers,
        )
        why = cluster_hosts_problem(hosts or [])
        check(not why, f"workers must be distinct host:port pairs, ports in [1, 65535]: {why}", "workers", self.workers)
        check(
            self.worker_index is None
            or (is_int(self.worker_index) and hosts is not None and 0 <= self.worker_index < len(hosts)),
            "worker_index must be an int in [0, number of workers) and needs workers",
            "worker_index",
            self.worker_index,
        )
        check(
            self.workers is None or (self.worker_index is not None and self.distribute in ("multi-worker", "auto")),
            "workers needs worker_index and distribute multi-worker (or auto)",
            "workers",
            self.workers,
        )

    def preset_overrides(self) -> dict[str, Any]:
        """The settings of :data:`PRESET_FIELDS` whose values differ from the preset's, by name."""
        base = PRESETS[self.preset]
        return {k: getattr(self, k) for k in PRESET_FIELDS if _plain(getattr(self, k)) != _plain(base[k])}

    def to_dict(self) -> dict[str, Any]:
        """Every setting as plain YAML/JSON values, in field order.

        Returns:
            A new dict of setting name to value (``image_size`` a list, as YAML and JSON keep it).
        """
        d = dataclasses.asdict(self)
        d["image_size"] = list(self.image_size)
        return d

    def preset_text(self) -> str:
        """The preset, then each of :meth:`preset_overrides` with the preset's value: what the recipe was."""
        base = PRESETS[self.preset]
        changed = [f"{k} {_plain(v)} (the preset's {_plain(base[k])})" for k, v in self.preset_overrides().items()]
        return f"{self.preset}, with settings of its own: {', '.join(changed)}" if changed else self.preset

    def to_yaml(self) -> str:
        """The settings as YAML (what config.yaml holds); a comment first names the preset's overrides.

        Returns:
            YAML that :func:`load_file` and :func:`resolve` read back into the same config.
        """
        comment = " ".join(self.preset_text().split())  # one line: no value's line break can end the comment
        head = f"# preset {comment}\n" if self.preset_overrides() else ""
        return head + yaml.dump(self.to_dict(), Dumper=Dumper, sort_keys=False)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the config as YAML, atomically.

        Args:
            path: The file to write (replaced whole, never left half-written).
        """
        atomic_write_text(path, self.to_yaml())


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def load_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads a YAML config file into a dict of known keys (dashes allowed; a key given twice is refused).

    Args:
        path: The YAML file (at most :data:`MAX_CONFIG_BYTES`).

    Returns:
        Setting name (dashes as underscores) to value, as the file gives them (not validated: :func:`resolve`).

    Raises:
        ConfigError: The file is missing, unreadable, not YAML, not a mapping, or names an unknown setting.
    """
    p = Path(path)
    try:
        raw = yaml.load(read_capped(p, MAX_CONFIG_BYTES).decode("utf-8"), Loader=UniqueKeyLoader)  # a SafeLoader
        raw = {} if raw is None else raw  # an empty file; a falsy non-mapping ([], 0, false) is refused below
    except FileNotFoundError as e:
        # The file, as below, not an argument: resolve's is `file`, the CLI's --config.
        raise ConfigError(f"Config file {path} not found.") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"Config file {path} cannot be read: {getattr(e, 'strerror', None) or e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"Config file {path} is not valid YAML: {yaml_problem(e)}") from e
    except RecursionError:  # 3,000 nested brackets in 6 KB: PyYAML's recursive composer
        raise ConfigError(f"Config file {path} nests its values too deeply to be settings") from None
    except ValueError as e:  # an int of over 4,300 digits: Python's own limit on converting it
        raise ConfigError(f"Config file {path} holds a value floranet cannot read: {e}") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"Config file {path} must hold a mapping of settings. Received: {type(raw).__name__}")
    out = {str(k).replace("-", "_"): v for k, v in raw.items()}
    unknown = sorted(set(out) - FIELDS)
    if unknown:
        raise ConfigError(f"Unknown settings in {path}: {', '.join(unknown)}. Valid: {', '.join(sorted(FIELDS))}")
    return {k: _yaml11_float(v) if k in FLOAT_FIELDS else v for k, v in out.items()}


# A float setting given as text ('1e-4', quoted; YAML 1.1 tools read it unquoted as text too) is meant as the number.
_EXPONENT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")
FLOAT_FIELDS = {f.name for f in dataclasses.fields(TrainConfig) if "float" in str(f.type)}


def _yaml11_float(value: Any) -> Any:
    return float(value) if isinstance(value, str) and _EXPONENT.fullmatch(value.strip()) else value


def absolute_paths(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with its :data:`PATH_FIELDS` and a ``weights`` file absolute (relative to the current folder), as
    config.yaml records them: the run's evaluate, audit, export, report and --resume then find them from any
    folder.

    Args:
        values: Settings by name (a config file's, flags, ...); not changed.
    """
    out = dict(values)
    for name in PATH_FIELDS:
        value = out.get(name)
        if (
            isinstance(value, str | os.PathLike)
            and os.fspath(value)
            and not (name in UNSETTABLE and value in NONE_WORDS)
        ):
            out[name] = os.path.abspath(value)
    weights = out.get("weights")  # a file's path, unless it names a source
    if isinstance(weights, str | os.PathLike) and os.fspath(weights) not in ("", "imagenet", *NONE_WORDS):
        out["weights"] = os.path.abspath(weights)
    return out


def resolve(*, file: str | os.PathLike[str] | None = None, **flags: Any) -> TrainConfig:
    """Builds a config: defaults < preset < file < flags (flags set to None are absent).

    Args:
        file: Optional YAML config file (a path: text or ``os.PathLike``).
        **flags: Settings from the command line or Python; ``None`` means "not given".

    Raises:
        ConfigError: Unknown key or invalid value.
    """
    if file is not None and not isinstance(os.fspath(file) if isinstance(file, os.PathLike) else file, str):
        raise ConfigError(f"file must be a YAML file's path (text or os.PathLike). Received: file={file!r}")
    if file is not None and not os.fspath(file).strip():  # `--config ''` was ignored without a word
        raise ConfigError(f"file must be a YAML file path. Received: file={os.fspath(file)!r}")
    from_file = load_file(file) if file is not None else {}
    given = {k: v for k, v in flags.items() if v is not None}
    unknown = sorted(set(given) - FIELDS)
    if unknown:
        raise ConfigError(f"Unknown settings: {', '.join(unknown)}. Valid: {', '.join(sorted(FIELDS))}")
    preset = given.get("preset", from_file.get("preset", TrainConfig.preset))
    try:
        check_choice("preset", preset, PRESETS)
        values: dict[str, Any] = {**from_file, **given, "preset": preset}  # TrainConfig applies the preset
        return TrainConfig(**absolute_paths(values))
    except ConfigError as e:
        if file is not None and any(k not in given for k in from_file):  # the value may be the file's: say which
            # No flags: a run's config.yaml, read by predict, evaluate, report, export, explain, audit, ...
            where = f"settings of the config file {file}, then the flags" if given else f"in the config file {file}"
            raise ConfigError(f"{e} ({where})") from None
        raise
