"""The audit job: ``floranet audit DATA_DIR|RUN_DIR`` and the audit step at the end of ``train``.

* ``RUN_DIR`` (a folder with ``config.yaml`` and ``split.csv``): the run's classes, split and feature cache.
* ``DATA_DIR``: an audit folder is made (default ``runs/audit-<data folder name>`` under the working
  directory, never inside the data folder) holding what a run would hold before training: ``config.yaml``,
  ``doctor.json``, ``split.csv`` (the split ``floranet train`` makes with the same seed and ``val_split``,
  so "leak" means: across the split training would use), ``class_names.json`` and the ``features/`` cache.
  Running it again reuses the cached features of every unchanged image.

Either way ``audit.json``, ``audit.csv``, ``audit.html`` and ``plots/audit_*.png`` are written into that folder,
and a finished run's ``report.html`` is rebuilt with its audit section. No image file is moved or changed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from floranet.config import TrainConfig, resolve
from floranet.errors import ConfigError, DatasetError, ModelError
from floranet.evaluation.audit import DEFAULT_FOLDS, AuditData, AuditResult, run_audit
from floranet.evaluation.audit_report import write_audit
from floranet.evaluation.card_facts import SHAPES, mismatch
from floranet.models import weights as weights_lib
from floranet.rundir import RunDir
from floranet.training import data as run_data
from floranet.training.embeddings import stage1_features
from floranet.utils.files import file_digest
from floranet.utils.text import printable, some_names

Say = Callable[[str], None]


@dataclass
class AuditOutcome:
    """An audit and where it was written.

    Attributes:
        run: The run or audit folder.
        result: What the audit found.
        data_dir: The data folder the paths are relative to.
    """

    run: RunDir
    result: AuditResult
    data_dir: Path


def default_audit_dir(data_dir: str | os.PathLike[str]) -> Path:
    """``runs/audit-<data folder name>`` under the working directory."""
    return Path("runs") / f"audit-{Path(data_dir).resolve().name}"


def is_run_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a run (or audit) folder rather than a data folder (a ``config.yaml`` of another tool
    at the top of a data folder does not make it one)."""
    return (Path(path) / RunDir.SPLIT).is_file() and RunDir(path).is_run()


def audit(
    target: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    folds: int = DEFAULT_FOLDS,
    duplicate_similarity: float | None = None,
    progress: bool = False,
    say: Say = print,
    rebuild_report: bool = True,
    held: bool = False,
    **settings: Any,
) -> AuditOutcome:
    """Audits a data folder or a run (see the module docstring).

    Args:
        target: A data folder (folder per class) or a run directory.
        out: The audit folder for a data folder (default :func:`default_audit_dir`); not for a run.
        folds: k of the out-of-fold head training.
        duplicate_similarity: Whitened cosine similarity at or above which two images are near-duplicates
            (None: the set's own, :func:`floranet.evaluation.duplicates.duplicate_threshold`).
        progress: Show progress bars.
        say: Where one-line status messages go.
        rebuild_report: Rebuild a finished run's ``report.html`` with the audit section.
        held: The caller holds the folder's lock (``train``); else it is taken here.
        **settings: :class:`floranet.config.TrainConfig` fields for a data folder (``backbone``, ``weights``,
            ``image_size``, ``preset``, ...): the features and the head the audit uses.

    Raises:
        ConfigError: ``out`` or ``settings`` given with a run, ``out`` inside the data folder or a folder that
            holds other things, bad settings.
        DatasetError: The data folder cannot be used.
        RunLockedError: Another process is writing the run or audit folder.
    """
    if folds < 2:
        raise ConfigError(f"folds must be an int >= 2. Received: folds={folds!r}")
    if is_run_dir(target):
        if out is not None or settings:
            given = {**({"out": out} if out is not None else {}), **settings}
            raise ConfigError(
                f"{target} is a run: its own settings and folder are used. Received: "
                + ", ".join(f"{k}={v!r}" for k, v in given.items())
            )
        run, fresh = RunDir(target), None
    else:
        run, fresh = _audit_folder(target, out, settings)
    # One writer per folder, as train/evaluate/report; a run's audit has no --out to write elsewhere.
    with contextlib.nullcontext() if held else run.lock(hint="wait for it to finish" if fresh is None else None):
        if fresh is None:
            config = run.config()
            run.check_outside(config.data_dir)  # its audit's plots would become images of a class
            data = _run_data(run, config, progress, say, rehash=not held)  # train's split is fresh
        else:
            config, data = fresh, _data_folder(fresh, run, progress, say)
        data_dir = Path(config.data_dir)
        if not data.paths:  # nothing to audit: say so, and leave an earlier audit as it was
            raise DatasetError(
                f"no image of the audit could be read under {printable(str(data_dir))!r} (the data folder "
                f"{'the run was trained on, from its config.yaml' if fresh is None else 'given'}): is it there, "
                "and readable?"
            )
        copies = _left_out_conflicts(run, data)
        result = run_audit(
            data, config, folds=folds, duplicate_similarity=duplicate_similarity, left_out_copies=copies, say=say
        )
        write_audit(run, result, data_dir, config.max_pixels)
        if rebuild_report and run.exists(RunDir.MODEL) and run.exists(RunDir.PREDICTIONS):
            from floranet.evaluation.report import build_report

            build_report(run.path, say=say)
    return AuditOutcome(run, result, data_dir)


def _audit_folder(target: str | os.PathLike[str], out: Any, settings: dict[str, Any]) -> tuple[RunDir, TrainConfig]:
    """The audit folder of a data folder (outside it, and new, empty or an earlier audit: nothing else is
    written over) and the audit's settings, with the backbone's weights to be had (offline, said before an
    earlier audit's settings and split are replaced, as ``train`` says it before reading any data)."""
    data_dir = Path(target)
    if not data_dir.is_dir():  # before anything is written for it
        raise DatasetError(
            f"data_dir must be an existing folder of class sub-folders. Received: data_dir={printable(str(data_dir))!r}"
        )
    folder = Path(out) if out is not None else default_audit_dir(data_dir)
    run = RunDir(folder)
    run.check_outside(data_dir)
    run.check_new_output()
    if run.is_training_run():  # its config, split and report would be replaced by the audit's
        raise ConfigError(
            f"out holds a training run; a data folder's audit needs its own folder (`floranet audit {folder}` audits "
            f"that run in place). Received: out={str(folder)!r}"
        )
    if out is None:  # a folder named with --out is the user's choice; the default is shared by name
        _check_same_data(run, data_dir)
    config = resolve(**{**settings, "data_dir": str(data_dir), "out": str(folder)})  # bad settings: said now too
    weights_lib.ensure_available(config.backbone, config.weights)
    return run, config


def _check_same_data(run: RunDir, data_dir: Path) -> None:
    """Refuses to replace, in the default folder, an earlier audit of another data folder (two folders of one name
    share ``runs/audit-<name>``, and the later audit replaced the earlier one, hand-edited audit.csv and all).

    Raises:
        ConfigError: ``run`` holds the audit of another folder.
    """
    if not run.is_run():
        return
    earlier = run.saved_settings().get("data_dir")
    if earlier is not None and Path(str(earlier)).resolve() != data_dir.resolve():
        raise ConfigError(
            f"out holds the audit of another data folder ({printable(str(earlier))!r}); give this one its own "
            f"--out, or move that audit away. Received: out={str(run.path)!r}"
        )


def _data_folder(config: TrainConfig, run: RunDir, progress: bool, say: Say) -> AuditData:
    """A data folder's split and features, its settings saved as ``config.yaml``."""
    # Before config.yaml, as training writes a fresh state.json first: a mark that makes the folder floranet's from
    # its first second (RunDir.is_run; alone, rundir._ours), until the scan writes the doctor's report over it. An
    # audit killed in its scan left config.yaml alone, and every later audit into the folder was refused.
    run.write_json(RunDir.DOCTOR, {"complete": False})
    run.write_config(config)
    # A fresh split each time: the one `floranet train` would make of these files with these settings.
    prepared = run_data.prepare(config, run, resume=False, progress=progress, say=say)
    rows = list(prepared.split.rows)
    feats = stage1_features(
        run,
        config,
        prepared.paths(rows),
        [r.sha256 for r in rows],
        tf_decodable=[prepared.tf_decodable.get(r.path, False) for r in rows],
        progress=progress,
        say=say,
    )
    return _audit_data(rows, prepared.split.class_names, feats)


def _run_data(run: RunDir, config: TrainConfig, progress: bool, say: Say, *, rehash: bool) -> AuditData:
    """A run's images as its split names them; with ``rehash``, each keyed by its content now (the feature cache
    is keyed by sha256: a file changed since training kept its old key, and its new content took the old one's
    place, so the audit spoke of an image the run never saw as if it had)."""
    names = run.class_names()
    split = run.split(names)
    rows = list(split.rows)
    root = Path(config.data_dir)
    if rehash:
        current, changed, gone = _current(rows, root)
        if changed:
            say(f"Audit: {changed} file(s) changed since the run's split was written; audited as they are now.")
        if gone:  # the rest was audited without a word on what was missing
            shown = some_names(gone)
            say(
                f"Audit: {len(gone)} of the split's {len(rows)} file(s) are gone from {printable(str(root))} "
                f"(moved, deleted or unreadable: {shown}); the {len(current)} left are audited."
            )
        rows = current
    feats = stage1_features(
        run, config, [str(root / r.path) for r in rows], [r.sha256 for r in rows], progress=progress, say=say
    )
    return _audit_data(rows, tuple(names), feats)


def _left_out_conflicts(run: RunDir, data: AuditData) -> list[list[tuple[str, str]]]:
    """The doctor's groups of byte-identical files in different classes (``doctor.json``), as (path, label), that
    the split left out (a group that ``--exclude`` or ``--relabel`` settled is in it, and audited there)."""
    try:
        doctor = run.read_json(RunDir.DOCTOR)
    except ModelError:  # damaged: the audit goes on without its conflicts
        return []
    if not isinstance(doctor, dict) or mismatch(doctor, SHAPES[RunDir.DOCTOR]):
        return []
    labels = {f["path"]: f.get("label") for f in doctor["files"]}
    audited = set(data.paths)
    groups = []
    for group in (g for g in doctor.get("duplicates", []) if isinstance(g, list)):
        members = [(p, labels[p]) for p in group if isinstance(p, str) and isinstance(labels.get(p), str)]
        if len({label for _, label in members}) > 1 and not audited & {p for p, _ in members}:
            groups.append(members)
    return groups


def _current(rows: list[Any], root: Path) -> tuple[list[Any], int, list[str]]:
    """``rows`` with the sha256 of each file as it is now, how many changed, and the paths of those gone (or
    unreadable: left out)."""
    current, changed, gone = [], 0, []
    for row in rows:
        try:
            sha = file_digest(root / row.path)
        except OSError:  # gone or unreadable: left out, as the feature pass would
            gone.append(row.path)
            continue
        changed += bool(row.sha256) and sha != row.sha256
        current.append(dataclasses.replace(row, sha256=sha))
    return current, changed, gone


def _audit_data(rows: list[Any], class_names: tuple[str, ...], feats: dict[str, np.ndarray]) -> AuditData:
    kept = [r for r in rows if r.sha256 in feats]
    index = {n: i for i, n in enumerate(class_names)}
    return AuditData(
        tuple(r.path for r in kept),
        np.asarray([index[r.label] for r in kept], np.int64),
        tuple(r.split for r in kept),
        tuple(r.sha256 for r in kept),
        np.stack([feats[r.sha256] for r in kept]) if kept else np.zeros((0, 1), np.float32),
        class_names,
    )
