"""The entry point: :func:`export_run` and its :class:`ExportResult`, recorded in ``RUN_DIR/exports.json``."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from floranet.errors import ConfigError, DatasetError, ModelError
from floranet.export.check import _Check, _check, _readme
from floranet.export.common import (
    CALIBRATION_IMAGES,
    EXPORTS_DIR,
    EXPORTS_FILE,
    FORMATS,
    QUANTIZE,
    SUPPORTED_QUANTIZE,
    _MARKER,
    _README,
    _export_name,
    _human_size,
    _quiet,
    _spread,
    _versions,
    log,
)
from floranet.export.loaders import load_exported
from floranet.export.rundata import _calibration_images, _decode, _open_run
from floranet.export.writers import _WRITERS
from floranet.io import atomic_write_text, write_json


@dataclass(frozen=True)
class ExportResult:
    """One export and its check against ``model.keras``.

    Attributes:
        name: ``<format>[-<quantize>]``, its key in ``exports.json``.
        format: One of :data:`FORMATS`.
        quantize: ``None``, ``"fp16"`` or ``"int8"``.
        path: The export folder.
        size_bytes: Size of the model file(s) (without class_names.json and README.txt).
        agreement: Fraction of checked validation images whose top-1 class is
            the same for the export and ``model.keras`` (None: not checked).
        max_abs_diff: Largest absolute difference of any class probability.
        latency_ms_batch1: Median warm latency of one image through the export.
        reference_latency_ms_batch1: The same for ``model.keras`` (Keras, traced call).
        num_images: Validation images checked (0 with ``max_images=0``).
        calibration_images: Training images used to calibrate int8 (else None).
        created: UTC time, ISO 8601.
        converter: How the file was written (Keras's own export path, or the fallback used).
        runtime_versions: Versions of the packages that wrote and ran the export.
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

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path)
        return out

    def summary(self) -> str:
        """A few print-ready lines."""
        lines = [f"Exported {self.name} to {self.path} ({_human_size(self.size_bytes)})"]
        if self.converter:
            lines.append(f"  via {self.converter}")
        if self.calibration_images is not None:
            lines.append(f"  int8 calibration: {self.calibration_images} training images")
        if self.agreement is None:
            lines.append("  Agreement check skipped (max_images=0).")
        else:
            lines.append(f"  Agreement with model.keras on {self.num_images} validation images: "
                         f"top-1 {self.agreement:.1%}, max |Δp| {self.max_abs_diff:.2e}")
            lines.append(f"  Latency, batch 1 (median, warm): {self.latency_ms_batch1:.2f} ms "
                         f"(model.keras {self.reference_latency_ms_batch1:.2f} ms)")
        return "\n".join(lines)


def _check_args(fmt: Any, quantize: Any, max_images: Any) -> None:
    if not isinstance(fmt, str) or fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}. Received: format={fmt!r}")
    if quantize is not None and (not isinstance(quantize, str) or quantize not in QUANTIZE):
        raise ConfigError(f"quantize must be one of None, {', '.join(QUANTIZE)}. Received: quantize={quantize!r}")
    if quantize is not None and quantize not in SUPPORTED_QUANTIZE.get(fmt, ()):
        supported = "; ".join(f"{f}: {', '.join(q)}" for f, q in SUPPORTED_QUANTIZE.items())
        raise ConfigError(f"quantize={quantize!r} is not supported for format={fmt!r}. "
                          f"Quantized exports: {supported}. Received: format={fmt!r}, quantize={quantize!r}")
    if isinstance(max_images, bool) or not isinstance(max_images, (int, np.integer)) or max_images < 0:
        raise ConfigError(f"max_images must be an int >= 0 (0 skips the check). Received: max_images={max_images!r}")


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive advisory lock on a folder (POSIX), for read-merge-write of exports.json."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock; the write itself stays atomic
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _record(run: Path, result: ExportResult) -> None:
    """Read-merge-write of ``RUN_DIR/exports.json`` (atomic, under a lock)."""
    target = run / EXPORTS_FILE
    with _locked(run):
        entries: dict[str, Any] = {}
        if target.exists():
            try:
                loaded = json.loads(target.read_text(encoding="utf-8"))
                entries = loaded if isinstance(loaded, dict) else {}
            except (OSError, ValueError) as e:
                log.warning("Replacing unreadable %s: %s", target, e)
        entry = result.to_dict()
        entry.pop("name")
        try:
            entry["path"] = str(result.path.resolve().relative_to(run.resolve()))
        except ValueError:
            entry["path"] = str(result.path.resolve())
        entries[result.name] = entry
        write_json(target, entries)


# --------------------------------------------------------------------------- main entry


def _is_export_folder(folder: Path) -> bool:
    readme = folder / _README
    try:
        return readme.is_file() and readme.read_text(encoding="utf-8").startswith(_MARKER)
    except OSError:
        return False


def _place(tmp: Path, final: Path) -> None:
    """Renames the finished temp folder onto ``final``, replacing an older export only now."""
    if not final.exists():
        os.replace(tmp, final)
        return
    old = final.with_name(f".{final.name}.old-{os.getpid()}-{time.monotonic_ns()}")
    os.replace(final, old)
    try:
        os.replace(tmp, final)
    except OSError:
        os.replace(old, final)  # put the old export back
        raise
    shutil.rmtree(old, ignore_errors=True)


def _make_readable(folder: Path) -> None:
    """mkdtemp/mkstemp create 0700/0600 entries; give the export the usual umask permissions."""
    mask = os.umask(0)
    os.umask(mask)
    folder.chmod(0o777 & ~mask)
    for p in folder.rglob("*"):
        p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


def _model_size(folder: Path) -> int:
    """Bytes of the model file(s): everything but the top-level class_names.json and README.txt."""
    extras = {folder / "class_names.json", folder / _README}
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and f not in extras)


def export_run(
    run_dir: str | os.PathLike[str],
    format: str,  # noqa: A002 - the CLI's and Keras's name for it
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
        The :class:`ExportResult`, also stored under its name in ``RUN_DIR/exports.json``.

    Raises:
        ConfigError: A bad format, quantize, combination, ``max_images`` or ``out``.
        ModelError: Not a finished run, or a needed package is not installed,
            or the conversion failed.
        DatasetError: The run's images are not available (agreement check, int8).
    """
    _check_args(format, quantize, max_images)
    say: Callable[[str], None] = (lambda m: print(m, file=sys.stderr, flush=True)) if progress else log.info
    fmt, name = format, _export_name(format, quantize)
    run, model = _open_run(run_dir)
    final = Path(out) if out is not None else run.path / EXPORTS_DIR / name
    if final.exists() and not (final.is_dir() and _is_export_folder(final)):
        raise ConfigError(f"out exists and is not a floranet export folder; refusing to replace it. "
                          f"Received: out={str(final)!r}")

    calib = None
    if quantize == "int8":
        say(f"Decoding up to {CALIBRATION_IMAGES} training images for int8 calibration...")
        calib = _calibration_images(run)
    pixels = None
    if max_images:
        say(f"Decoding up to {max_images} validation images for the agreement check...")
        pixels = _decode(run, _spread(run.rows("validation"), int(max_images)))

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        say(f"Exporting {name}...")
        try:
            with _quiet(progress):
                converter = _WRITERS[fmt](model, run, tmp, quantize, calib)
        except (ModelError, ConfigError, DatasetError):
            raise
        except Exception as e:  # noqa: BLE001 - converter failures come in every type
            raise ModelError(f"Exporting {run.path / 'model.keras'} as format={fmt!r}"
                             f"{f', quantize={quantize!r}' if quantize else ''} failed: {type(e).__name__}: {e}") from e
        shutil.copy2(run.path / "class_names.json", tmp / "class_names.json")
        exported = load_exported(tmp)
        check = _Check()
        if pixels is not None:
            say(f"Checking {name} against model.keras on {len(pixels)} validation images...")
            with _quiet(progress):
                check = _check(model, exported, pixels)
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        calibration = len(calib) if calib is not None else None
        atomic_write_text(tmp / _README, _readme(run, fmt, quantize, exported, check, calibration, created,
                                                 converter))
        _make_readable(tmp)
        size = _model_size(tmp)
        runtime = exported.runtime
        del exported  # release file handles before the rename
        _place(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

    result = ExportResult(
        name=name, format=fmt, quantize=quantize, path=final, size_bytes=size,
        agreement=check.agreement, max_abs_diff=check.max_abs_diff, latency_ms_batch1=check.latency,
        reference_latency_ms_batch1=check.reference_latency, num_images=check.num_images,
        calibration_images=calibration, created=created, converter=converter,
        runtime_versions=_versions(fmt, quantize, runtime),
    )
    _record(run.path, result)
    return result
