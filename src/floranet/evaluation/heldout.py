"""The labelled images an evaluation scores: the run's validation files as they were at training, or the images of
another labelled folder that the run did not train on (:func:`rows_to_evaluate`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from floranet.data import doctor
from floranet.data.scan import same_looking
from floranet.data.split import Split, SplitRow
from floranet.errors import DatasetError
from floranet.rundir import RunDir
from floranet.utils.files import file_digest
from floranet.utils.text import quoted


def as_trained(root: Path, rows: list[SplitRow]) -> tuple[list[SplitRow], dict[str, int]]:
    """The validation rows whose files are still there and unchanged (split.csv's sha256), and the counts of
    those that are not: a file removed or replaced since training would be scored silently (a replaced one under
    its old label)."""
    kept, missing, changed = [], 0, 0
    for r in rows:
        path = root / r.path
        if not path.is_file():
            missing += 1
        elif r.sha256 and file_digest(path) != r.sha256:
            changed += 1
        else:
            kept.append(r)
    return kept, {"recorded": len(rows), "missing": missing, "changed": changed, "evaluated": len(kept)}


def rows_to_evaluate(
    run: RunDir,
    names: list[str],
    data_dir: str | os.PathLike[str] | None,
    max_pixels: int,
    progress: bool,
    facts: dict[str, Any],
) -> tuple[Path, list[SplitRow]]:
    """The folder and the labelled images to evaluate on (their counts recorded in ``facts``): the run's
    validation files as they were, or the images of ``data_dir`` that the run did not train on.

    Raises:
        DatasetError: None is left, with why.
    """
    if data_dir is None:
        root = Path(run.config().data_dir)
        rows, files = as_trained(root, run.split(names).validation())
        facts["validation_files"] = files
        if not rows and files["recorded"]:
            raise DatasetError(
                f"none of the run's {files['recorded']} validation images is in {root} as it was at training "
                f"({files['missing']} missing, {files['changed']} changed): was the data folder moved, renamed or "
                "changed? Evaluate on other labelled images: --data OTHER"
            )
    else:
        root = Path(data_dir)
        rows, left_out = labelled_rows(root, names, max_pixels, progress)
        facts.update(left_out)
        # An image the model trained on (the same bytes) says nothing of how it does on new ones: left out, counted.
        trained = {r.sha256 for r in run.split(names).train() if r.sha256}
        unseen = [r for r in rows if r.sha256 not in trained]
        facts["training_images_left_out"] = len(rows) - len(unseen)
        if rows and not unseen:
            raise DatasetError(
                f"every image of {root} is one the run trained on (the same file as in {RunDir.SPLIT}'s training "
                "side): nothing to evaluate that the model has not seen. Evaluate on other labelled images."
            )
        rows = unseen
    if not rows:
        where = f"{run.path / RunDir.SPLIT}: every image is on the training side" if data_dir is None else root
        raise DatasetError(
            f"no images to evaluate ({where}). Evaluate on other labelled images: "
            f"floranet evaluate {run.path} --data OTHER"
        )
    return root, rows


def labelled_rows(
    root: Path, names: list[str], max_pixels: int, progress: bool
) -> tuple[list[SplitRow], dict[str, int]]:
    """Every usable image of ``root``'s class folders, and how many files the doctor found unusable, by why:
    ``too_large_left_out`` (over ``max_pixels``), ``label_conflicts_left_out`` (the same bytes in two class
    folders: which label is right is unknown) and ``unreadable_left_out`` (every other reason)."""
    report = doctor.diagnose(root, max_pixels=max_pixels, progress=progress)
    usable = report.usable_files()
    if not usable:
        bad = report.summary().get("num_bad", 0)
        raise DatasetError(
            f"data_dir has no usable images in class folders ({bad} unusable files; `floranet doctor` says which "
            f"and why). Received: data_dir={str(root)!r}"
        )
    unknown = sorted({str(f.label) for f in usable} - set(names))
    if unknown:
        raise DatasetError(
            f"{root} has classes the model was not trained on: {', '.join(_unknown_name(n, names) for n in unknown)}. "
            f"Known: {', '.join(map(quoted, names))}"
        )
    split = Split(
        rows=tuple(SplitRow(f.path, str(f.label), "validation", f.sha256 or "") for f in usable),
        class_names=tuple(names),
    )
    bad = [f for f in report.files if f.status == "bad"]
    too_large, conflicts = sum(f.kind == "too_large" for f in bad), sum(f.conflict for f in bad)
    left_out = {"too_large_left_out": too_large, "label_conflicts_left_out": conflicts}
    return list(split.rows), {"unreadable_left_out": len(bad) - too_large - conflicts, **left_out}


def _unknown_name(name: str, known: list[str]) -> str:
    """A class folder's name the run does not know, quoted (a trailing space shows), with why it may look like a
    known one: the same name in another Unicode form or white space (never taken for it), or its letters as
    escapes where it is not ASCII (a Cyrillic "а" in "dаisy")."""
    for twin in known:
        alike = same_looking([twin, name])
        if alike:
            return f"{quoted(name)} (it and the known {quoted(twin)} {alike[2]})"
    return quoted(name) if name.isascii() else f"{quoted(name)} (written {ascii(name)})"
