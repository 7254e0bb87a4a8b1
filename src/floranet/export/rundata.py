"""The finished run being exported: its files, its model and its decoded images."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from floranet.errors import DatasetError, ModelError
from floranet.export.common import CALIBRATION_IMAGES, CHECK_BATCH, _spread


@dataclass
class _Run:
    path: Path
    class_names: list[str]
    image_size: tuple[int, int]

    @functools.cached_property
    def config(self) -> dict[str, Any]:
        import yaml

        f = self.path / "config.yaml"
        if not f.exists():
            raise ModelError(f"{self.path} is not a finished floranet run: config.yaml is missing.")
        raw = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
        if not isinstance(raw, dict) or not raw.get("data_dir"):
            raise ModelError(f"{f} does not name the run's data_dir.")
        return raw

    def rows(self, subset: str) -> list[Any]:
        from floranet.data import split as split_lib

        f = self.path / "split.csv"
        if not f.exists():
            raise ModelError(f"{self.path} is not a finished floranet run: split.csv is missing.")
        split = split_lib.Split.from_csv(f, class_names=self.class_names)
        return split.train() if subset == "train" else split.validation()

    def data_dir(self) -> Path:
        root = Path(str(self.config["data_dir"]))
        if not root.is_dir():
            raise DatasetError(f"The run's data_dir {str(root)!r} (config.yaml) is not a folder here; the "
                               "agreement check and int8 calibration need its images. Pass max_images=0 to export "
                               "an fp32/fp16 model without the check.")
        return root

    def max_pixels(self) -> int:
        from floranet.data.images import DEFAULT_MAX_PIXELS

        value = self.config.get("max_pixels")
        return int(value) if isinstance(value, int) and value > 0 else DEFAULT_MAX_PIXELS


def _open_run(run_dir: str | os.PathLike[str]) -> tuple[_Run, Any]:
    import keras

    run = Path(run_dir)
    if not run.is_dir():
        raise ModelError(f"Run directory not found. Received: run_dir={str(run_dir)!r}")
    for needed in ("model.keras", "class_names.json"):
        if not (run / needed).exists():
            raise ModelError(f"{run} is not a finished floranet run: {needed} is missing.")
    try:
        model = keras.saving.load_model(run / "model.keras")
    except Exception as e:  # noqa: BLE001 - corrupt file, unsafe content, ...
        raise ModelError(f"Cannot load {run / 'model.keras'}: {e}") from e
    names = json.loads((run / "class_names.json").read_text(encoding="utf-8"))
    shape = model.inputs[0].shape
    if len(shape) != 4 or shape[1] is None or shape[2] is None or shape[3] != 3:
        raise ModelError(f"Expected a model taking [N, H, W, 3] images. Received: input shape={tuple(shape)}")
    # Keras's ONNX export refuses a model that was never called ("The model provided
    # has never called"), which a freshly loaded one is: call it once.
    model(np.zeros((1, int(shape[1]), int(shape[2]), 3), np.float32), training=False)
    return _Run(run, list(names), (int(shape[1]), int(shape[2]))), model


def _decode(run: _Run, rows: Sequence[Any]) -> np.ndarray:
    """Decodes rows exactly as training does; unusable files are skipped (with a warning).

    Uses :func:`pipeline.make_dataset` (the training decoder; pixel-identical to
    :func:`pipeline.decode_and_resize`, which builds a tf.data pipeline per call
    and costs ~0.5 s per image, 100 s for 200 images).
    """
    from floranet.data import pipeline

    if not rows:
        return np.zeros((0, *run.image_size, 3), np.float32)
    root = run.data_dir()
    paths = [os.path.join(root, *r.path.split("/")) for r in rows]
    ds = pipeline.make_dataset(paths, None, image_size=run.image_size, batch_size=CHECK_BATCH,
                               max_pixels=run.max_pixels(), on_error="skip")
    batches = [b.numpy() for b in ds]
    return np.concatenate(batches).astype(np.float32) if batches else np.zeros((0, *run.image_size, 3), np.float32)


def _calibration_images(run: _Run) -> np.ndarray:
    pixels = _decode(run, _spread(run.rows("train"), CALIBRATION_IMAGES))
    if not len(pixels):
        raise DatasetError(f"int8 calibration needs training images; none of {run.path / 'split.csv'}'s training "
                           "images could be decoded.")
    return pixels
