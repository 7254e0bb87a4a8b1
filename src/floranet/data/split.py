"""The split manifest: which image is in train and which in validation.

A split is decided once (deterministically, stratified per class, duplicates
kept together) and written as a small CSV next to a run, so training,
evaluation and later re-runs all see exactly the same partition even when
files are added to the dataset folder afterwards.

CSV format (UTF-8, header row)::

    path,label,split,sha256
    daisy/100080576_f52e8ee070_n.jpg,daisy,train,3f1c...

``path`` is relative to the dataset folder, with ``/`` separators. File names
that are not valid UTF-8 arrive here as ``str`` with surrogate escapes (the
doctor decodes them with ``os.fsdecode``); they are written back with
``errors="surrogateescape"`` so the bytes survive a round trip.
"""

from __future__ import annotations

import csv
import errno
import io
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from floranet.data.scan import same_looking
from floranet.errors import ConfigError, DatasetError
from floranet.utils.files import atomic_write_text, read_capped
from floranet.utils.text import csv_text, formula_safe, unquote_formula

SPLIT_COLUMNS = ("path", "label", "split", "sha256")
SPLITS = ("train", "validation")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_LISTED = 10
MAX_MANIFEST_BYTES = 1 << 30  # ~10 million rows; checked before reading


@dataclass(frozen=True)
class SplitRow:
    """One image of a split manifest.

    Attributes:
        path: Path relative to the dataset folder, POSIX separators.
        label: Class name.
        split: ``"train"`` or ``"validation"``.
        sha256: Hex digest of the file's bytes (``""`` when unknown).
    """

    path: str
    label: str
    split: str
    sha256: str


@dataclass(frozen=True)
class Split:
    """A train/validation partition of a dataset folder.

    Attributes:
        rows: All images, sorted by path.
        class_names: Class names; a label's index is its position. Sorted
            unless explicit ``class_names`` were given (e.g. a trained model's).
    """

    rows: tuple[SplitRow, ...]
    class_names: tuple[str, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows", tuple(sorted(self.rows, key=lambda r: r.path)))
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if len(set(self.class_names)) != len(self.class_names):
            raise ConfigError(f"class_names must be unique. Received: class_names={list(self.class_names)}")
        object.__setattr__(self, "_index", {name: i for i, name in enumerate(self.class_names)})
        for row in self.rows:
            if row.split not in SPLITS:
                raise DatasetError(f"split must be one of {SPLITS}. Received: split={row.split!r} for {row.path!r}")
            if row.label not in self._index:
                raise DatasetError(
                    f"Label {row.label!r} of {row.path!r} is not one of class_names={list(self.class_names)}"
                )

    def train(self) -> list[SplitRow]:
        """Returns the training rows, sorted by path."""
        return [r for r in self.rows if r.split == "train"]

    def validation(self) -> list[SplitRow]:
        """Returns the validation rows, sorted by path."""
        return [r for r in self.rows if r.split == "validation"]

    def label_index(self, label: str) -> int:
        """Returns the integer class index of ``label``.

        Raises:
            DatasetError: ``label`` is not one of ``class_names``.
        """
        try:
            return self._index[label]
        except KeyError:
            raise DatasetError(
                f"Unknown label: not one of class_names={list(self.class_names)}. Received: label={label!r}"
            ) from None

    def counts(self) -> dict[str, dict[str, int]]:
        """Returns ``{label: {"train": n, "validation": m}}`` for every class."""
        out = {name: dict.fromkeys(SPLITS, 0) for name in self.class_names}
        for row in self.rows:
            out[row.label][row.split] += 1
        return out

    def balanced_weights(self) -> dict[str, float]:
        """Each class's weight for ``class_weights: auto``, from its training images: scikit-learn's "balanced",
        ``n / (classes x the class's training images)`` over the classes that have any (what training weighs the
        loss with, and what the model card shows)."""
        train = {name: c["train"] for name, c in self.counts().items() if c["train"]}
        return {name: sum(train.values()) / (len(train) * n) for name, n in train.items()}

    def to_csv(self, path: str | os.PathLike[str]) -> None:
        """Writes the manifest atomically (temp file in the same folder, then rename).

        Args:
            path: Destination CSV file. Parent folders are created.
        """
        # A name that starts like a spreadsheet formula gets a leading quote (as every floranet CSV of names).
        rows = ((formula_safe(r.path), formula_safe(r.label), r.split, r.sha256) for r in self.rows)
        text = csv_text([SPLIT_COLUMNS, *rows])
        # surrogateescape (in atomic_write_text): non-UTF-8 file names round-trip byte for byte.
        atomic_write_text(path, text)

    @classmethod
    def from_csv(cls, path: str | os.PathLike[str], *, class_names: Sequence[str] | None = None) -> Split:
        """Reads a manifest written by :meth:`to_csv` (or by hand).

        Args:
            path: The CSV file. Extra columns are ignored.
            class_names: The label order to use (e.g. a trained model's);
                every label in the file must be one of them. Default: the
                sorted labels found in the file.

        Returns:
            The split.

        Raises:
            DatasetError: The file is missing or unreadable, a column is
                missing, or a row is invalid (the message names file and line).
        """
        src = Path(path)
        try:  # capped: a device (/dev/zero) or a huge file is refused, never read whole
            data = read_capped(src, MAX_MANIFEST_BYTES)
        except OSError as e:
            why = "not a split manifest" if e.errno == errno.EFBIG else "cannot be read"
            raise DatasetError(f"Split manifest {str(src)!r} {why}: {e.strerror or e}") from e
        try:  # utf-8-sig: accept a BOM from spreadsheet exports
            text = data.decode("utf-8-sig", errors="surrogateescape")
            rows = _read_rows(src, io.StringIO(text, newline=""), class_names)
        except csv.Error as e:
            raise DatasetError(f"Malformed CSV in split manifest {str(src)!r}: {e}") from e
        names = tuple(class_names) if class_names is not None else tuple(sorted({r.label for r in rows}))
        return cls(rows=tuple(rows), class_names=names)


def _read_rows(src: Path, f: Any, class_names: Sequence[str] | None) -> list[SplitRow]:
    reader = csv.DictReader(f)
    header = reader.fieldnames
    if header is None:
        raise DatasetError(f"Split manifest {str(src)!r} is empty; expected header {','.join(SPLIT_COLUMNS)}")
    missing = [c for c in SPLIT_COLUMNS if c not in header]
    if missing:
        raise DatasetError(
            f"Split manifest {str(src)!r} line 1: missing column(s) {missing}; "
            f"expected {','.join(SPLIT_COLUMNS)}. Received header: {','.join(header)}"
        )
    allowed = set(class_names) if class_names is not None else None
    rows: list[SplitRow] = []
    seen: dict[str, int] = {}
    for record in reader:
        line = reader.line_num

        def bad(msg: str, line: int = line) -> DatasetError:
            return DatasetError(f"Split manifest {str(src)!r} line {line}: {msg}")

        values = [record.get(c) for c in SPLIT_COLUMNS]
        if any(v is None for v in values) or None in record:
            raise bad(f"expected {len(header)} fields")
        p, raw_label, split, sha = (unquote_formula(str(v)) for v in values)
        split, sha = split.strip(), sha.strip()
        # A class folder's name may start or end with a space (floranet writes labels as they are); spaces
        # around a label are dropped only where that names a class (a hand-written file).
        label = raw_label if allowed is None or raw_label in allowed else raw_label.strip()
        # A backslash is a character of the name (split.csv is written from the folder's own names), not a separator.
        if not p or PurePosixPath(p).is_absolute() or ".." in PurePosixPath(p).parts:
            raise bad(f"path must be relative to the dataset folder, with '/' separators. Received: path={p!r}")
        p = str(PurePosixPath(p))  # ./a/1.jpg and a//1.jpg (as find writes them) name a/1.jpg, as in a list
        if p in seen:
            raise bad(f"duplicate path {p!r} (first on line {seen[p]})")
        if not label.strip():
            raise bad(f"label is empty for path={p!r}")
        if allowed is not None and label not in allowed:
            raise bad(f"label must be one of class_names={list(class_names or [])}. Received: label={label!r}")
        if split not in SPLITS:
            raise bad(f"split must be one of {SPLITS}. Received: split={split!r}")
        if sha and not _SHA256.fullmatch(sha):
            raise bad(f"sha256 must be 64 lowercase hex digits or empty. Received: sha256={sha!r}")
        seen[p] = line
        rows.append(SplitRow(path=p, label=label, split=split, sha256=sha or ""))
    return rows


def _check_val_split(val_split: float) -> float:
    if isinstance(val_split, bool) or not isinstance(val_split, (int, float, np.floating)):
        raise ConfigError(f"val_split must be a number in (0, 1). Received: val_split={val_split!r}")
    v = float(val_split)
    if not (0.0 < v < 1.0) or math.isnan(v):
        raise ConfigError(f"val_split must be in (0, 1). Received: val_split={val_split!r}")
    return v


def make_split(
    items: Sequence[tuple[str, str, str]],
    *,
    val_split: float = 0.2,
    seed: int = 123,
    class_names: Sequence[str] | None = None,
) -> Split:
    """Splits images into train and validation, stratified per class.

    Each class gets ``round(n_c * val_split)`` validation images (capped at
    ``n_c - 1`` so every class keeps a training image; a class of one image
    goes to train, and at 0.2 one of two images too: ``round(0.4)`` is 0;
    train names such classes, whose figures are then not measured).
    Images with the same non-empty ``sha256`` form one unit
    that lands entirely on one side, so exact duplicates never leak from train
    into validation; a class made of duplicate groups may then miss its target
    by the size of a group. Items are sorted by path before a seeded
    ``numpy.random.default_rng(seed)`` picks, so the result never depends on
    input order.

    Args:
        items: ``(path, label, sha256)`` triples; paths must be unique.
        val_split: Fraction of each class for validation, in (0, 1).
        seed: Seed of the random choice.
        class_names: Label order to use; every label must be one of them.
            Default: sorted labels of ``items``.

    Returns:
        The split.

    Raises:
        ConfigError: ``val_split`` is out of range or ``class_names`` is invalid.
        DatasetError: Duplicate paths, empty labels, or labels outside ``class_names``.
    """
    v = _check_val_split(val_split)
    ordered = sorted(((str(p), str(lab), str(sha or "")) for p, lab, sha in items), key=lambda t: t[0])
    dup_paths = sorted({p for (p, _, _), (q, _, _) in zip(ordered, ordered[1:], strict=False) if p == q})
    if dup_paths:
        raise DatasetError(f"make_split got duplicate paths: {dup_paths[:_MAX_LISTED]}")
    if any(not lab for _, lab, _ in ordered):
        raise DatasetError("make_split got an item with an empty label")
    names = tuple(class_names) if class_names is not None else tuple(sorted({lab for _, lab, _ in ordered}))
    unknown = sorted({lab for _, lab, _ in ordered} - set(names))
    if unknown:
        raise DatasetError(f"Labels {unknown[:_MAX_LISTED]} are not in class_names={list(names)}")

    # Units: duplicate groups by sha256 (in first-path order), singletons otherwise.
    units: list[list[int]] = []
    by_sha: dict[str, int] = {}
    for i, (_, _, sha) in enumerate(ordered):
        if sha and sha in by_sha:
            units[by_sha[sha]].append(i)
        else:
            if sha:
                by_sha[sha] = len(units)
            units.append([i])

    # A unit belongs to the class of its first member; a cross-class group
    # (a label conflict) still moves as one.
    class_units: dict[str, list[int]] = {name: [] for name in names}
    for u, members in enumerate(units):
        class_units[ordered[members[0]][1]].append(u)
    class_sizes = dict.fromkeys(names, 0)
    for _, lab, _ in ordered:
        class_sizes[lab] += 1

    rng = np.random.default_rng(seed)
    in_val = [False] * len(units)
    for name in names:  # fixed class order keeps the RNG stream reproducible
        n = class_sizes[name]
        target = min(round(n * v), max(n - 1, 0))
        chosen = 0
        for u in rng.permutation(len(class_units[name])):
            if chosen >= target:
                break
            unit = class_units[name][u]
            size = sum(1 for i in units[unit] if ordered[i][1] == name)
            if chosen + size <= target:  # all-singleton classes hit the target exactly
                in_val[unit] = True
                chosen += size

    rows = [
        SplitRow(path=p, label=lab, split="validation" if in_val[u] else "train", sha256=sha)
        for u, members in enumerate(units)
        for p, lab, sha in (ordered[i] for i in members)
    ]
    return Split(rows=tuple(rows), class_names=names)


def check_split_against(split: Split, report_files: Any) -> None:
    """Checks that every file a manifest names is still usable and unchanged.

    Args:
        split: The manifest.
        report_files: The doctor's usable files: a ``DoctorReport`` (anything
            with ``usable_files()``) or an iterable of findings with ``path``,
            ``label`` and ``sha256`` attributes.

    Raises:
        DatasetError: Files are missing/unusable now, changed (sha256 differs)
            or moved class; up to 10 are named.
    """
    findings: Iterable[Any] = report_files.usable_files() if hasattr(report_files, "usable_files") else report_files
    current = {f.path: f for f in findings}
    problems: list[str] = []
    for row in split.rows:
        f = current.get(row.path)
        if f is None:
            problems.append(f"{row.path!r} (missing or unusable)")
        elif row.sha256 and getattr(f, "sha256", "") and f.sha256 != row.sha256:
            problems.append(f"{row.path!r} (contents changed)")
        elif getattr(f, "label", row.label) != row.label:
            problems.append(f"{row.path!r} (label is now {f.label!r}, manifest says {row.label!r})")
    if problems:
        more = f" and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        raise DatasetError(
            f"The split manifest no longer matches the dataset: {len(problems)} file(s) are not usable as recorded: "
            f"{', '.join(problems[:_MAX_LISTED])}{more}. Re-run the split or restore the files."
        )


def check_look_distinct(class_names: Sequence[str], given: dict[str, Any]) -> None:
    """Refuses two classes that look the same, as the doctor refuses two such folders: a relabel target or a split
    file's label made one (a full-width or NFD twin of a class) with only a note.

    Args:
        class_names: The classes to train.
        given: Where their labels came from (setting -> value), echoed in the message.

    Raises:
        ConfigError: Naming both.
    """
    twins = same_looking(class_names)
    if twins is not None:
        received = ", ".join(f"{k}={str(v)!r}" for k, v in given.items() if v)
        raise ConfigError(
            f"classes {ascii(twins[0])} and {ascii(twins[1])} {twins[2]}: they look the same in every report and "
            f"answer; write each label one way. Received: {received}"
        )
