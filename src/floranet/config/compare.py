"""A backbone comparison's settings (``floranet compare``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from floranet.config.choices import PRECISIONS, RUNTIMES, check, check_choice
from floranet.config.train import FIELDS


@dataclass(frozen=True)
class CompareConfig:
    """A backbone comparison (``floranet compare``): every backbone through the same recipe on one split.

    Attributes:
        data_dir, out, backbones: The labelled folder; the comparison's folder; the backbones to compare.
        weights: Backbone → ``"imagenet"``, None (random init) or a file; others get ``default_weights``.
        fine_tune: Include stage 2; by default only stage 1 runs (on cached features).
        train: Other :class:`TrainConfig` settings shared by every run (image_size, epochs, seed, ...).
        runtime, precision: The one runtime every latency is measured on.
    """

    data_dir: str
    backbones: tuple[str, ...]
    out: str = "runs/compare"
    weights: Mapping[str, str | None] = dataclasses.field(default_factory=dict)
    default_weights: str | None = "imagenet"
    fine_tune: bool = False
    train: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    runtime: str = "auto"
    precision: str = "auto"

    def __post_init__(self) -> None:
        given = self.backbones
        listed = isinstance(given, list | tuple)  # a str would be taken letter by letter
        ok = listed and bool(given) and all(isinstance(n, str) and n.strip() for n in given)
        names = tuple(given) if ok else ()
        object.__setattr__(self, "backbones", names)
        # Distinct as the registry reads them: RESNET20 is resnet20, and would train it twice (the workflow
        # checks the model each name builds: efficientnetb0 is efficientnet_b0)
        ok = ok and len({backbone_key(n) for n in names}) == len(names)
        check(ok, "backbones must be a non-empty list of distinct names", "backbones", given)
        for name in ("weights", "train"):
            check(isinstance(getattr(self, name), Mapping), f"{name} must be a mapping", name, getattr(self, name))
        given_weights = self.weights
        weights = {backbone_key(k) if isinstance(k, str) else k: v for k, v in given_weights.items()}
        object.__setattr__(self, "weights", weights)
        known = {backbone_key(n) for n in names}
        check(set(weights) <= known, "weights may only name compared backbones", "weights", given_weights)
        check(isinstance(self.fine_tune, bool), "fine_tune must be True or False", "fine_tune", self.fine_tune)
        check(
            _weights_value(self.default_weights),
            "default_weights must be 'imagenet', 'none', a weights file or None",
            "default_weights",
            self.default_weights,
        )
        check(
            all(_weights_value(v) for v in weights.values()),
            "weights must map each backbone to 'imagenet', 'none', a weights file or None",
            "weights",
            given_weights,
        )
        own = {"data_dir", "out", "backbone", "weights", "split_file"}
        bad = sorted(set(self.train) - FIELDS | own & set(self.train))
        check(not bad, "train must hold TrainConfig settings that compare does not set itself", "train", bad)
        check_choice("runtime", self.runtime, RUNTIMES)
        check_choice("precision", self.precision, PRECISIONS)
        epochs = self.train.get("epochs")  # said in compare's words: it has no --fine-tune-epochs to add some
        check(
            self.fine_tune or epochs != 0,
            "epochs must be >= 1 without fine_tune (--fine-tune): each run would train nothing",
            "epochs",
            epochs,
        )

    def weights_of(self, backbone: str) -> str | None:
        value = self.weights.get(backbone_key(backbone), self.default_weights)
        return None if value in (None, "none", "None") else value


def _weights_value(value: Any) -> bool:
    """Whether ``value`` can be a backbone's weights setting: None or a non-empty text (an empty one, as
    ``--weights mobilenet_v2=$W`` with W unset gives, trained from random weights, where train refuses it)."""
    return value is None or (isinstance(value, str) and bool(value.strip()))


def backbone_key(name: str) -> str:
    """A backbone's name as the registry looks it up (models.backbones.get: stripped, lower case)."""
    return name.strip().lower()
