"""Batch prediction from a run directory: files, folders or globs → top-k rows.

Images are decoded exactly as in training (the same tf.data code path, with
Pillow for EXIF rotation, CMYK, alpha, 16-bit and other formats). A file that
cannot be used gets its error in its row; the batch goes on.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from floranet import runtime
from floranet.data import doctor, images, pipeline
from floranet.errors import ConfigError, DatasetError, ModelError
from floranet.io import atomic_path, atomic_write_text

FORMATS = ("table", "csv", "json")
SMALL_BATCH = 4


@dataclass(frozen=True)
class Prediction:
    """One input's result; ``error`` is set (and ``top_k`` empty) when the file could not be used."""

    file: str
    top_k: tuple[tuple[str, float], ...] = ()
    low_confidence: bool = False
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "top_k": [{"class": c, "probability": p} for c, p in self.top_k],
                "low_confidence": self.low_confidence, "error": self.error}


@dataclass
class Predictor:
    """A loaded run: its model, class names and input size.

    Attributes:
        low_confidence: Rows whose top probability is below this are flagged.
        calibrated: Report temperature-scaled probabilities (``calibration.json``);
            off by default so probabilities equal the model's own output.
        runtime, precision: As in :func:`floranet.runtime.choose`; ``auto`` is resolved per
            job (a handful of images stays on TensorFlow, a folder goes to OpenVINO).
        threads: Most threads OpenVINO may use (None: every core); TensorFlow's are set per process.
        choice: The runtime the last batch ran on.
    """

    run_dir: Path
    model: keras.Model
    class_names: list[str]
    image_size: tuple[int, int]
    temperature: float = 1.0
    batch_size: int = 32
    low_confidence: float = 0.5
    calibrated: bool = False
    max_pixels: int = images.DEFAULT_MAX_PIXELS
    runtime: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    choice: runtime.RuntimeChoice | None = None
    _calls: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        runtime.choose_inference(self.runtime, self.precision, images=1)  # bad settings fail at load time

    def select(self, images: int | None = None) -> runtime.RuntimeChoice:
        """Resolves the runtime for a job of ``images`` images (None: long-running, e.g. a server) and
        compiles the model for it once; later :meth:`probabilities` calls use it."""
        choice = runtime.choose_inference(self.runtime, self.precision, images=images)
        if choice.key not in self._calls:
            # Traced once (TensorFlow) or compiled (OpenVINO): the warm single-image path is one call.
            self._calls[choice.key] = runtime.compile_inference(self.model, choice, threads=self.threads)
        self.choice = choice
        return choice

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """Model probabilities for float32 ``[B, H, W, 3]`` RGB 0..255 already at ``image_size``."""
        if self.choice is None:
            self.select(len(pixels))
        probs = np.asarray(self._calls[self.choice.key](pixels), dtype=np.float32)
        if self.calibrated and self.temperature != 1.0:
            from floranet.evaluate import apply_temperature

            probs = apply_temperature(probs, self.temperature).astype(np.float32)
        return probs

    def predict(self, inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *,
                top_k: int = 3, job_size: int | None = None) -> list[Prediction]:
        """Predicts every image named by ``inputs`` (files, folders, globs), in order.

        Args:
            inputs: Files, folders and globs.
            top_k: Classes per row.
            job_size: When these inputs are one part of a larger job (a distributed worker's
                batch), its total image count: runtime and decode path are then chosen as for
                the whole job, so every row equals the single-process result.
        """
        files, missing = expand_inputs([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)
        rows: dict[int, Prediction] = {}
        total = len(files) if job_size is None else job_size
        if files:
            self.select(total)
        if 0 < len(files) <= SMALL_BATCH and total <= SMALL_BATCH:
            # A handful of files: decode directly; building a tf.data pipeline costs more than the model call.
            for i, f in enumerate(files):
                try:
                    pixels = images.load_image(f, max_pixels=self.max_pixels)
                except DatasetError as e:
                    rows[i] = Prediction(str(f), error=str(e))
                    continue
                resized = tf.image.resize(tf.convert_to_tensor(pixels, tf.float32), self.image_size).numpy()
                rows[i] = self._row(str(f), self.probabilities(resized[None])[0], top_k)
        elif files:
            skipped: list[str] = []
            ds = pipeline.make_dataset([str(f) for f in files], list(range(len(files))), image_size=self.image_size,
                                       batch_size=self.batch_size, max_pixels=self.max_pixels, on_error="skip",
                                       skipped=skipped)
            for batch, index in ds:
                for i, p in zip(index.numpy(), self.probabilities(batch.numpy())):
                    rows[int(i)] = self._row(str(files[i]), p, top_k)
            for i, f in enumerate(files):
                if i not in rows:
                    rows[i] = Prediction(str(f), error=_reason(f, self.max_pixels))
        out = [rows[i] for i in range(len(files))]
        return out + [Prediction(m, error="no such file, folder or matching image") for m in missing]

    def predict_bytes(self, data: bytes, *, name: str = "<upload>", top_k: int = 3) -> Prediction:
        """Predicts one encoded image (for the server); DatasetError when it is not a usable image."""
        pixels = images.decode_image_bytes(data, name=name, max_pixels=self.max_pixels)
        resized = tf.image.resize(tf.convert_to_tensor(pixels, tf.float32), self.image_size).numpy()
        return self._row(name, self.probabilities(resized[None])[0], top_k)

    def _row(self, file: str, probs: np.ndarray, top_k: int) -> Prediction:
        k = max(1, min(int(top_k), len(self.class_names)))
        order = np.argsort(-probs, kind="stable")[:k]
        top = tuple((self.class_names[i], round(float(probs[i]), 6)) for i in order)
        return Prediction(file, top, bool(probs[order[0]] < self.low_confidence), None)


def _reason(path: Path, max_pixels: int) -> str:
    try:
        images.load_image(path, max_pixels=max_pixels)
    except DatasetError as e:
        return str(e)
    return "could not be decoded"


def load(run_dir: str | os.PathLike[str], *, batch_size: int = 32, low_confidence: float = 0.5,
         calibrated: bool = False, safe_mode: bool = True, runtime: str = "auto",
         precision: str = "auto", threads: int | None = None) -> Predictor:
    """Loads a run directory for prediction (``runtime``/``precision``: see :class:`Predictor`).

    Raises:
        ModelError: Not a finished run, or the model file cannot be loaded
            (for instance it contains arbitrary code and ``safe_mode`` is on).
    """
    run = Path(run_dir)
    for needed in ("model.keras", "class_names.json"):
        if not (run / needed).exists():
            raise ModelError(f"{run} is not a finished floranet run: {needed} is missing.")
    if not 0.0 <= low_confidence <= 1.0:
        raise ConfigError(f"low_confidence must be in [0, 1]. Received: low_confidence={low_confidence!r}")
    try:
        model = keras.saving.load_model(run / "model.keras", safe_mode=safe_mode)
    except Exception as e:  # Keras raises ValueError for unsafe content, others for corrupt files
        hint = " It contains code (e.g. a Lambda layer); load it only if you trust it (--unsafe)." \
            if "safe_mode" in str(e) or "Lambda" in str(e) else ""
        raise ModelError(f"Cannot load {run / 'model.keras'}: {e}.{hint}") from e
    names = json.loads((run / "class_names.json").read_text(encoding="utf-8"))
    h, w = model.inputs[0].shape[1:3]
    calib = run / "calibration.json"
    temperature = float(json.loads(calib.read_text())["temperature"]) if calib.exists() else 1.0
    return Predictor(run, model, names, (int(h), int(w)), temperature, batch_size, low_confidence, calibrated,
                     runtime=runtime, precision=precision, threads=threads)


def expand_inputs(inputs: Iterable[str | os.PathLike[str]]) -> tuple[list[Path], list[str]]:
    """Files as given, folders walked (image extensions, hidden entries skipped), globs expanded.

    Returns:
        (files in a stable order, inputs that matched nothing).
    """
    files: list[Path] = []
    missing: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            files.extend(_walk(p))
        elif any(ch in str(item) for ch in "*?["):
            matched = sorted(Path(m) for m in glob.glob(str(item), recursive=True))
            found = [m for m in matched if m.is_file() and m.suffix.lower() in doctor.IMAGE_EXTENSIONS]
            files.extend(found)
            if not found:
                missing.append(str(item))
        else:
            missing.append(str(item))
    return files, missing


def _walk(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / f for f in sorted(filenames)
                   if not f.startswith(".") and Path(f).suffix.lower() in doctor.IMAGE_EXTENSIONS)
    return out


def format_predictions(rows: Sequence[Prediction], fmt: str = "table") -> str:
    """Renders rows as an aligned table, CSV or JSON."""
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}. Received: format={fmt!r}")
    if fmt == "json":
        return json.dumps([r.to_dict() for r in rows], indent=2, ensure_ascii=False) + "\n"
    k = max((len(r.top_k) for r in rows), default=1)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["file", *[c for i in range(1, k + 1) for c in (f"class_{i}", f"probability_{i}")],
                         "low_confidence", "error"])
        for r in rows:
            cells = [c for name, p in r.top_k for c in (name, f"{p:.6f}")]
            cells += [""] * (2 * k - len(cells))
            writer.writerow([r.file, *cells, str(r.low_confidence).lower(), r.error or ""])
        return buf.getvalue()
    lines = []
    width = max((len(r.file) for r in rows), default=4)
    for r in rows:
        if r.error:
            lines.append(f"{r.file:<{width}}  ERROR: {r.error}")
            continue
        top = "  ".join(f"{c} {p:6.1%}" for c, p in r.top_k)
        lines.append(f"{r.file:<{width}}  {top}{'  (low confidence)' if r.low_confidence else ''}")
    return "\n".join(lines) + "\n"


def write_predictions(rows: Sequence[Prediction], fmt: str | None, output: str | os.PathLike[str]) -> None:
    """Writes rows atomically as ``fmt`` (a FORMATS entry or "parquet"; None: from the suffix of
    ``output``, .csv, .json or .parquet, else table)."""
    suffix = Path(output).suffix.lower()
    fmt = fmt or {".parquet": "parquet", ".csv": "csv", ".json": "json"}.get(suffix, "table")
    if fmt != "parquet":
        atomic_write_text(output, format_predictions(rows, fmt))
        return
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ConfigError(f"pyarrow is not installed: pip install 'floranet[ray]'. Received: {e}") from None
    k = max((len(r.top_k) for r in rows), default=1)
    columns: dict[str, Any] = {"file": pa.array([r.file for r in rows], pa.string())}
    for i in range(k):
        columns[f"class_{i + 1}"] = pa.array([r.top_k[i][0] if i < len(r.top_k) else None for r in rows],
                                             pa.string())
        columns[f"probability_{i + 1}"] = pa.array([r.top_k[i][1] if i < len(r.top_k) else None for r in rows],
                                                   pa.float64())
    columns["low_confidence"] = pa.array([r.low_confidence for r in rows], pa.bool_())
    columns["error"] = pa.array([r.error for r in rows], pa.string())
    with atomic_path(output) as tmp:
        pq.write_table(pa.table(columns), tmp)
