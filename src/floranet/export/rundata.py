"""The finished run being exported: its files, its model and its decoded images."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from floranet.config import TrainConfig
from floranet.data.split import SplitRow
from floranet.errors import DatasetError, ModelError
from floranet.export.common import CALIBRATION_IMAGES, CHECK_BATCH, spread
from floranet.inference import batch
from floranet.inference.predictor import check_classes
from floranet.rundir import RunDir
from floranet.utils.text import same_under, utf8


@dataclass
class ExportSource:
    """A finished run opened for export.

    Attributes:
        run: The run directory.
        class_names: Label index → name.
        image_size: ``(h, w)`` the model takes.
    """

    run: RunDir
    class_names: list[str]
    image_size: tuple[int, int]

    @property
    def path(self) -> Path:
        return self.run.path

    def config(self) -> TrainConfig:
        if not self.run.exists(RunDir.CONFIG):
            raise ModelError(f"{self.path} is not a finished floranet run: {RunDir.CONFIG} is missing.")
        return self.run.config()

    def rows(self, subset: str) -> list[SplitRow]:
        if not self.run.exists(RunDir.SPLIT):
            raise ModelError(f"{self.path} is not a finished floranet run: {RunDir.SPLIT} is missing.")
        split = self.run.split(self.class_names)
        return split.train() if subset == "train" else split.validation()

    def data_dir(self) -> Path:
        root = Path(self.config().data_dir)
        if not root.is_dir():
            raise DatasetError(
                f"The run's data_dir {str(root)!r} ({RunDir.CONFIG}) is not a folder here; the "
                "agreement check and int8 calibration need its images. Pass --max-images 0 (max_images=0 in "
                "Python) to export an fp32/fp16 model without the check."
            )
        return root


def open_run(run_dir: str | os.PathLike[str]) -> tuple[ExportSource, Any]:
    """The run and its model (called once, so every exporter accepts it).

    Raises:
        ModelError: Not a finished run, a model that does not take ``[N, H, W, 3]`` images, one whose outputs
            are not the run's classes (the export's metadata would name the wrong ones), or class names that are
            one name as exported (:func:`check_distinct`).
    """
    run = RunDir.open(run_dir)
    model = run.load_model()
    shape = model.inputs[0].shape
    if len(shape) != 4 or shape[1] is None or shape[2] is None or shape[3] != 3:
        raise ModelError(f"Expected a model taking [N, H, W, 3] images. Received: input shape={tuple(shape)}")
    names = run.class_names()
    check_classes(run, names, int(model.outputs[0].shape[-1]))
    check_distinct(names)
    # Keras's ONNX export refuses a model that was never called ("The model provided
    # has never called"), which a freshly loaded one is: call it once.
    model(np.zeros((1, int(shape[1]), int(shape[2]), 3), np.float32), training=False)
    return ExportSource(run, names, (int(shape[1]), int(shape[2]))), model


def check_distinct(names: Sequence[str]) -> None:
    """Refuses class names that an export would write as one: it writes each as strict UTF-8 (:func:`utf8`: a
    folder name's bytes that are not UTF-8 as ``\\xNN``), so a folder ``b'caf\\xe9'`` and one named ``caf\\xe9``
    both became ``"caf\\xe9"``, and the export's two columns could not be told apart.

    Raises:
        ModelError: Two names are one as exported.
    """
    twins = next(same_under(names, utf8), None)
    if twins:
        other, name = twins
        raise ModelError(
            f"The class folders {_raw(other)} and {_raw(name)} are both named {utf8(name)!r} "
            "in an export (a folder name's bytes that are not UTF-8 are written as \\xNN): its columns could not "
            "be told apart. Rename one of those class folders and train again."
        )


def _raw(name: str) -> str:
    """A class folder's name as its bytes (``b'caf\\xe9'``), which tells apart what :func:`utf8` makes one."""
    try:
        return repr(os.fsencode(name))
    except UnicodeError:  # a lone surrogate of class_names.json, not of a folder name
        return ascii(name)


def decode_rows(source: ExportSource, rows: Sequence[SplitRow]) -> np.ndarray:
    """The pixels of ``rows``, decoded exactly as training does; unusable files are skipped."""
    if not rows:
        return np.zeros((0, *source.image_size, 3), np.float32)
    root = source.data_dir()
    paths = [os.path.join(root, *r.path.split("/")) for r in rows]
    # The one files → outputs path, with the identity as the model: its outputs are the decoded pixels.
    out = batch.run_on_files(
        lambda x: x,
        paths,
        image_size=source.image_size,
        batch_size=CHECK_BATCH,
        max_pixels=source.config().max_pixels,
        job_size=len(paths) + batch.SMALL_JOB,
    )
    return out.outputs[out.ok].reshape(-1, *source.image_size, 3)


def check_subset(source: ExportSource) -> str:
    """Which images the agreement check reads: ``"validation"``, or ``"training"`` when the split kept none aside."""
    return "validation" if source.rows("validation") else "training"


def check_images(source: ExportSource, max_images: int) -> np.ndarray:
    """Up to ``max_images`` images for the agreement check: validation ones, or training ones when the split kept
    no validation image.

    Raises:
        DatasetError: None of them could be decoded (the check was asked for: it is not skipped silently).
    """
    subset = check_subset(source)
    rows = source.rows("validation" if subset == "validation" else "train")
    pixels = decode_rows(source, spread(rows, max_images))
    if not len(pixels):
        raise DatasetError(
            f"The agreement check needs images of the run, and none of {source.run / RunDir.SPLIT}'s {subset} "
            f"images could be decoded (moved or changed since training?). Pass --max-images 0 to export "
            "without checking the export against model.keras."
        )
    return pixels


def calibration_images(source: ExportSource) -> np.ndarray:
    pixels = decode_rows(source, spread(source.rows("train"), CALIBRATION_IMAGES))
    if not len(pixels):
        raise DatasetError(
            f"int8 calibration needs training images; none of {source.run / RunDir.SPLIT}'s "
            "training images could be decoded."
        )
    return pixels
