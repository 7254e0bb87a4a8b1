"""The entry point: :func:`export_run` and its :class:`ExportResult`, recorded in ``RUN_DIR/exports.json``."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from floranet.errors import ConfigError, DatasetError, FloranetError, ModelError, OutputError
from floranet.export import metadata
from floranet.export.check import Check, agrees, check_export, readme, tolerance_text
from floranet.export.common import (
    CALIBRATION_IMAGES,
    EXPORTS_DIR,
    FORMATS,
    QUANTIZE,
    README_FILE,
    SUPPORTED_QUANTIZE,
    export_name,
    human_size,
    log,
    quiet,
    versions,
)
from floranet.export.folders import check_out, check_replaceable, holding, listing, place, source_run
from floranet.export.loaders import load_exported
from floranet.export.record import forget_export, record_export
from floranet.export.rundata import ExportSource, calibration_images, check_images, check_subset, open_run
from floranet.export.unknown import FILES as UNKNOWN_FILES
from floranet.export.unknown import carry_unknown
from floranet.export.writers import WRITERS, check_line_names
from floranet.inference import compiled
from floranet.inference.unknown import UnknownDetector, needs_features
from floranet.rundir import RunDir
from floranet.utils.files import atomic_write_text, seal_folder, temp_folder_beside, write_json
from floranet.utils.text import figure_text, utf8


@dataclass(frozen=True)
class ExportResult:
    """One export and its check against ``model.keras``.

    Attributes:
        name: ``<format>[-<quantize>]``.
        format: One of :data:`FORMATS`.
        quantize: ``None``, ``"fp16"`` or ``"int8"``.
        path: The export folder (its key in ``exports.json``: relative to the run when inside it).
        size_bytes: Size of the model file(s) (without class_names.json and README.txt).
        agreement: Fraction of checked validation images whose top-1 class is
            the same for the export and ``model.keras`` (None: not checked).
        max_abs_diff: Largest absolute difference of any class probability.
        latency_ms_batch1: Median warm latency of one image through the export.
        reference_latency_ms_batch1: The same for ``model.keras`` (Keras, traced call).
        num_images: Images checked (0 with ``max_images=0``).
        images_from: Which: ``"validation"``, or ``"training"`` where the split kept no validation image.
        calibration_images: Training images used to calibrate int8 (else None).
        created: UTC time, ISO 8601.
        converter: How the file was written (Keras's own export path, or the fallback used).
        runtime_versions: Versions of the packages that wrote and ran the export.
        metadata: Class names, input size and floranet version as read back from the model file with
            the format's own runtime (``read_with`` says how); None only for results made before it existed.
    """

    name: str
    format: str
    quantize: str | None
    path: Path
    size_bytes: int
    agreement: float | None
    max_abs_diff: float | None
    latency_ms_batch1: float | None
    reference_latency_ms_batch1: float | None
    num_images: int
    calibration_images: int | None
    created: str
    converter: str = ""
    runtime_versions: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] | None = None
    images_from: str = "validation"

    @property
    def agrees(self) -> bool | None:
        """Within :data:`floranet.export.check.TOLERANCE` for its quantization; None: not checked."""
        return agrees(self.quantize, self.agreement, self.max_abs_diff)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path)
        out["agrees"] = self.agrees
        return out

    def summary(self) -> str:
        """A few print-ready lines."""
        lines = [f"Exported {self.name} to {self.path} ({human_size(self.size_bytes)})"]
        if self.converter:
            lines.append(f"  via {self.converter}")
        if self.calibration_images is not None:
            lines.append(f"  int8 calibration: {self.calibration_images} training images")
        if self.metadata:
            lines.append(f"  Metadata in the file ({self.metadata['read_with']}): {self.metadata['summary']}")
        if self.agreement is None:
            lines.append("  Agreement check skipped (max_images=0).")
        else:
            verdict = "agrees" if self.agrees else "DOES NOT AGREE: check it before you use it"
            lines.append(
                f"  Agreement with model.keras on {self.num_images} {self.images_from} images: "
                f"top-1 {figure_text(self.agreement, '.1%')}, max |Δp| {self.max_abs_diff:.2e}: {verdict} "
                f"(needs {tolerance_text(self.quantize)})"
            )
            lines.append(
                f"  Latency, batch 1 (median, warm): {self.latency_ms_batch1:.2f} ms "
                f"(model.keras {self.reference_latency_ms_batch1:.2f} ms)"
            )
        return "\n".join(lines)


_NOT_OURS = (errno.EROFS, errno.EACCES, errno.EPERM)  # a run this process may not write: exported, left as it is


def _check_args(fmt: Any, quantize: Any, max_images: Any) -> None:
    if not isinstance(fmt, str) or fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}. Received: format={fmt!r}")
    if quantize is not None and (not isinstance(quantize, str) or quantize not in QUANTIZE):
        raise ConfigError(f"quantize must be one of None, {', '.join(QUANTIZE)}. Received: quantize={quantize!r}")
    if quantize is not None and quantize not in SUPPORTED_QUANTIZE.get(fmt, ()):
        supported = "; ".join(f"{f}: {', '.join(q)}" for f, q in SUPPORTED_QUANTIZE.items())
        raise ConfigError(
            f"quantize={quantize!r} is not supported for format={fmt!r}. "
            f"Quantized exports: {supported}. Received: format={fmt!r}, quantize={quantize!r}"
        )
    if isinstance(max_images, bool) or not isinstance(max_images, (int, np.integer)) or max_images < 0:
        raise ConfigError(f"max_images must be an int >= 0 (0 skips the check). Received: max_images={max_images!r}")


# --------------------------------------------------------------------------- main entry


def _model_size(folder: Path) -> int:
    """Bytes of the model file(s): everything but the top-level class_names.json and README.txt."""
    extras = {folder / RunDir.CLASS_NAMES, folder / README_FILE, *(folder / n for n in UNKNOWN_FILES)}
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and f not in extras)


def export_run(
    run_dir: str | os.PathLike[str],
    format: str,
    *,
    quantize: str | None = None,
    out: str | os.PathLike[str] | None = None,
    max_images: int = 200,
    progress: bool = False,
) -> ExportResult:
    """Exports a run's model and checks the export against ``model.keras``.

    Args:
        run_dir: A finished run (``model.keras``, ``class_names.json``,
            ``split.csv``, ``config.yaml``).
        format: One of :data:`FORMATS`.
        quantize: ``None``, or ``"fp16"`` / ``"int8"`` for ``tflite`` and ``openvino``.
            int8 is calibrated on up to 200 training images of ``split.csv``.
        out: The export folder; default ``RUN_DIR/exports/<format>[-<quantize>]``.
            An existing folder is replaced (after success) only if it is a
            floranet export.
        max_images: Validation images for the agreement check (0 skips it).
        progress: Print steps and the converters' own output.

    Returns:
        The :class:`ExportResult`, also stored in ``RUN_DIR/exports.json`` under its folder.

    Raises:
        ConfigError: A bad format, quantize, combination, ``max_images`` or ``out`` (``out`` may lie in the run
            only under its ``exports/``, and in no other run).
        ModelError: Not a finished run, or a needed package is not installed,
            or the conversion failed.
        DatasetError: The run's images are not available (agreement check, int8).
    """
    _check_args(format, quantize, max_images)
    say: Callable[[str], None] = (lambda m: print(m, file=sys.stderr, flush=True)) if progress else log.info
    with contextlib.ExitStack() as held:
        # One writer per run; a file system that cannot lock is refused, as for every command that writes a run.
        ours = True
        if Path(run_dir).is_dir():  # else open_run names what is missing, and no folder is made
            try:  # held by another process: the run exported is the one held, so another --out would not help
                held.enter_context(RunDir(run_dir).lock(hint="wait for it to finish"))
            except OutputError as e:
                if e.errno not in _NOT_OURS:
                    raise
                ours = False
        return _export(run_dir, format, quantize, out, max_images, say, progress, ours=ours)


def _export(
    run_dir: str | os.PathLike[str],
    format: str,
    quantize: str | None,
    out: str | os.PathLike[str] | None,
    max_images: int,
    say: Callable[[str], None],
    progress: bool,
    *,
    ours: bool,
) -> ExportResult:
    """:func:`export_run` once its arguments are checked and the run is held (``ours``; else it is not writable)."""
    name = export_name(format, quantize)
    source, model = open_run(run_dir)
    final = Path(out).resolve() if out is not None else source.path / EXPORTS_DIR / name  # "." has no name
    check_out(final, source.path)
    # Held from the check of what the folder holds to the record of what replaced it: two exports of two runs into
    # one --out each read the folder's owner before building, and the later left the earlier run listing it.
    with holding(final):
        result, pixels = _export_into(final, source, model, format, quantize, max_images, say, progress)
        if ours:
            _record(source, final, result)
    if not ours:
        log.warning("The export is complete in %s; the run is not writable here, so it was left as it was.", final)
        return result
    try:  # and mends the run's own inference model, which reads the unknown answer again: damage there is said
        _compile_if_missing(source, model, pixels, say)
    except FloranetError as e:
        log.warning("The export is complete in %s, but the run's inference model was not compiled: %s", final, e)
    except OSError as e:  # a full disk
        why = OutputError(source.run / RunDir.COMPILED, e)
        log.warning("The export is complete in %s, but the run's inference model was not compiled: %s", final, why)
    return result


def _export_into(
    final: Path,
    source: ExportSource,
    model: Any,
    format: str,
    quantize: str | None,
    max_images: int,
    say: Callable[[str], None],
    progress: bool,
) -> tuple[ExportResult, np.ndarray | None]:
    """Builds the export beside ``final`` and puts it there (under ``final``'s lock); returns it and the images
    it was checked on."""
    check_replaceable(final)  # an earlier export is replaced, an empty folder (made for it) filled; nothing else
    earlier = source_run(final)  # the run whose export that is: its exports.json stops listing the folder
    RunDir(final).check_outside(source.run.config().data_dir)  # else the export's files join the training images
    check_line_names(format, source.class_names)
    calib = None
    if quantize == "int8":
        say(f"Decoding up to {CALIBRATION_IMAGES} training images for int8 calibration...")
        calib = calibration_images(source)
    pixels = None
    if max_images:
        say(f"Decoding up to {max_images} images of the run for the agreement check...")
        pixels = check_images(source, int(max_images))
    try:
        tmp = temp_folder_beside(final)
    except OSError as e:  # a file in the way, a read-only run or disk
        raise OutputError(final, e) from None
    try:
        result = _build(model, source, tmp, format, quantize, calib, pixels, say=say, progress=progress)
        place(tmp, final)
    except OSError as e:  # a full disk while the metadata, labels or README are written
        raise OutputError(final, e) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if earlier is not None and earlier.resolve() != source.path.resolve():
        _forget(earlier, final)
    return dataclasses.replace(result, path=final), pixels


def _record(source: ExportSource, final: Path, result: ExportResult) -> None:
    """Lists the complete export in the run's exports.json (a failure is said, not raised)."""
    try:
        record_export(source.path, result.path, result.to_dict())
    except OutputError as e:
        log.warning("The export is complete in %s, but the run could not record it: %s", final, e)


def _forget(earlier: Path, final: Path) -> None:
    """Says that ``final`` held another run's export, and drops it from that run's exports.json."""
    try:
        listed = forget_export(earlier, final)
    except (OutputError, OSError) as e:
        why = e if isinstance(e, OutputError) else OutputError(earlier / RunDir.EXPORTS, e)
        log.warning("%s held an export of the run %s, whose exports.json still lists it: %s", final, earlier, why)
        return
    dropped = "; its exports.json no longer lists it" if listed else ""
    log.warning("%s held an export of another run, %s, now replaced%s.", final, earlier, dropped)


def _compile_if_missing(
    source: ExportSource, model: Any, pixels: np.ndarray | None, say: Callable[[str], None]
) -> None:
    """Compiles the run's inference model when it has none usable: a run from before compiled models (or before
    their features output), or a replaced model.keras."""
    try:
        features = needs_features(source.run.path)
    except ModelError:  # a damaged unknown answer (said already): a compiled model is then judged without it
        features = False
    if compiled.usable(source.run, features=features) is None:
        if pixels is None:  # with no image to check it against, it could never be used
            say(f"The run's inference model ({source.run / RunDir.COMPILED}) was not made: --max-images 0.")
            return
        info = compiled.compile_run(source.run, model, pixels, UnknownDetector.load(source.run.path))
        if info is not None:
            say(
                f"Also compiled the run's inference model ({source.run / RunDir.COMPILED}): "
                f"{'agrees' if info['agrees'] else 'does not agree'} with model.keras."
            )


def _build(
    model: Any,
    source: ExportSource,
    folder: Path,
    fmt: str,
    quantize: str | None,
    calib: np.ndarray | None,
    pixels: np.ndarray | None,
    *,
    say: Callable[[str], None],
    progress: bool,
) -> ExportResult:
    """Writes the export into ``folder`` (model, class names, README), checks it, and describes it."""
    name = export_name(fmt, quantize)
    say(f"Exporting {name}...")
    try:
        with quiet(progress):
            converter = WRITERS[fmt](model, source, folder, quantize, calib)
    except (ModelError, ConfigError, DatasetError):
        raise
    except Exception as e:
        raise ModelError(
            f"Exporting {source.run.model_file} as format={fmt!r}"
            f"{f', quantize={quantize!r}' if quantize else ''} failed: {type(e).__name__}: {e}"
        ) from e
    # Strict UTF-8, as the metadata carries them (the run's own file keeps a folder name's raw bytes).
    write_json(folder / RunDir.CLASS_NAMES, [utf8(n) for n in source.class_names])
    say(f"Writing labels, preprocessing and the unknown answer's summary into the {fmt} file and reading them back...")
    meta = metadata.embed_and_verify(fmt, folder, source)
    unknown_note = carry_unknown(source.run, folder, meta["unknown"], fmt)
    exported = load_exported(folder)
    check = Check()
    if pixels is not None:
        subset = check_subset(source)
        say(f"Checking {name} against {RunDir.MODEL} on {len(pixels)} {subset} images...")
        with quiet(progress):
            check = check_export(model, exported, pixels, images_from=subset)
    created = datetime.now(UTC).isoformat(timespec="seconds")
    calibration = len(calib) if calib is not None else None
    atomic_write_text(
        folder / README_FILE,
        readme(source, fmt, quantize, exported, check, calibration, created, converter)
        + unknown_note
        + "\n"
        + listing(folder),
    )
    seal_folder(folder)
    runtime = exported.runtime
    del exported  # release file handles before the folder is renamed
    return ExportResult(
        name=name,
        format=fmt,
        quantize=quantize,
        path=folder,
        size_bytes=_model_size(folder),
        agreement=check.agreement,
        max_abs_diff=check.max_abs_diff,
        latency_ms_batch1=check.latency,
        reference_latency_ms_batch1=check.reference_latency,
        num_images=check.num_images,
        images_from=check.images_from,
        calibration_images=calibration,
        created=created,
        converter=converter,
        runtime_versions=versions(fmt, quantize, runtime),
        metadata=meta,
    )
