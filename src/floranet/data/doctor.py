"""The dataset doctor: checks every file of a folder-per-class image set.

``diagnose(data_dir)`` walks the class folders, decodes every image (in a
thread pool; Pillow releases the GIL) and returns a :class:`DoctorReport`
saying which files are usable, which are not and why, which are exact
duplicates, and whether the set can be trained on at all. It never raises on
a bad file, only on a bad ``data_dir``, and it never changes the data.
"""

from __future__ import annotations

import hashlib
import os
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from floranet.config import DEFAULT_MAX_PIXELS, check_positive_int
from floranet.data import formats, images
from floranet.data.scan import IMAGE_EXTENSIONS, Candidate, FileFinding, Scan, case_twins, same_looking
from floranet.errors import ConfigError, DatasetError
from floranet.utils.files import check_replaceable, write_json
from floranet.utils.optional import require
from floranet.utils.text import map_strings, printable

__all__ = ["IMAGE_EXTENSIONS", "DoctorReport", "FileFinding", "diagnose", "find_leaks"]

_USABLE = ("ok", "note")


@dataclass(frozen=True)
class DoctorReport:
    """Everything :func:`diagnose` found. Build it with :func:`diagnose`."""

    data_dir: str
    classes: dict[str, int]
    files: tuple[FileFinding, ...]
    duplicates: tuple[tuple[str, ...], ...]
    usable: bool
    reason: str
    warnings: tuple[str, ...] = ()  # what may go wrong elsewhere (class names only a letter's case tells apart)

    def usable_files(self) -> list[FileFinding]:
        """The files to train on (status ok or note), in path order."""
        return [f for f in self.files if f.status in _USABLE]

    def summary(self) -> dict[str, Any]:
        """Counts, class imbalance, image sizes and duplicate counts."""
        usable = self.usable_files()
        status = Counter(f.status for f in self.files)
        sizes = [n for n in self.classes.values() if n > 0]
        label_of = {f.path: f.label for f in self.files}
        within = sum(len(g) - 1 for g in self.duplicates if len({label_of.get(p) for p in g}) == 1)

        def stats(values: list[int]) -> dict[str, float | None]:
            if not values:
                return {"min": None, "median": None, "max": None}
            return {"min": min(values), "median": statistics.median(values), "max": max(values)}

        return {
            "num_classes": len(self.classes),
            "num_files": len(self.files),
            "num_usable": len(usable),
            "num_bad": status["bad"],
            "num_notes": status["note"],
            "num_ignored": status["ignored"],
            "num_tf_decodable": sum(f.tf_decodable for f in usable),
            "imbalance_ratio": round(max(sizes) / min(sizes), 3) if sizes else None,
            "empty_classes": [c for c, n in self.classes.items() if n == 0],
            "duplicates_within_class": within,
            "label_conflicts": sum(f.conflict for f in self.files),
            "width": stats([f.width for f in usable if f.width is not None]),
            "height": stats([f.height for f in usable if f.height is not None]),
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (undecodable name bytes shown as ``\\xNN``)."""
        files = [
            {
                "path": f.path,
                "label": f.label,
                "status": f.status,
                "reason": f.reason,
                "sha256": f.sha256,
                "width": f.width,
                "height": f.height,
            }
            for f in self.files
        ]
        return map_strings(
            {
                "data_dir": self.data_dir,
                "classes": dict(self.classes),
                "files": files,
                "duplicates": [list(g) for g in self.duplicates],
                "summary": self.summary(),
                "usable": self.usable,
                "reason": self.reason,
                "warnings": list(self.warnings),
            },
            printable,
        )

    def write_json(self, path: str | os.PathLike) -> None:
        """Writes :meth:`to_dict` as JSON, atomically.

        Raises:
            ConfigError: The folder of ``path`` does not exist, it lies in the data folder, or it is another file.
        """
        write_json(check_json_target(path, self.data_dir), self.to_dict())

    def format_text(self, *, max_rows: int = 50) -> str:
        """A terminal report: bad files, then notes, then classes and summary."""
        s = self.summary()
        problems = [f for f in self.files if f.status == "bad"] + [f for f in self.files if f.status == "note"]
        lines = [f"Dataset doctor: {printable(self.data_dir)}", ""]
        if problems:
            lines.append(f"Problems ({s['num_bad']} bad, {s['num_notes']} with notes):")
            width = min(48, max(len(printable(f.path)) for f in problems[:max_rows]))
            for f in problems[:max_rows]:
                lines.append(f"  {f.status.upper():<5} {printable(f.path):<{width}}  {printable(f.reason)}")
            if len(problems) > max_rows:
                lines.append(f"  ... and {len(problems) - max_rows} more (write the full list with --json FILE)")
            lines.append("")
        lines += _worth_a_look([f for f in self.files if f.worth_a_look], max_rows)
        lines.append("Classes (usable images):")
        name_w = max([len(printable(c)) for c in self.classes] + [5])
        for c, n in self.classes.items():
            lines.append(f"  {printable(c):<{name_w}}  {n:>6}{'  (empty)' if n == 0 else ''}")
        if not self.classes:
            lines.append("  (no class folders)")
        lines += [
            "",
            "Summary:",
            f"  files               {s['num_files']}: {s['num_usable']} usable ({s['num_notes']} with notes), "
            f"{s['num_bad']} bad, {s['num_ignored']} ignored",
            f"  fast tf decoding    {s['num_tf_decodable']} of {s['num_usable']} usable images",
        ]
        if s["imbalance_ratio"] is not None:
            lines.append(f"  class imbalance     {s['imbalance_ratio']:g} (largest / smallest non-empty class)")
        if s["width"]["min"] is not None:
            w, h = s["width"], s["height"]
            lines.append(
                f"  image size          width {w['min']}..{w['max']} (median {w['median']:g}), "
                f"height {h['min']}..{h['max']} (median {h['median']:g})"
            )
        lines.append(
            f"  duplicates          {s['duplicates_within_class']} within a class, "
            f"{s['label_conflicts']} files in label conflicts"
        )
        lines += ["", *(f"Warning: {printable(w)}" for w in self.warnings)]
        lines += ["Verdict: usable" if self.usable else f"Verdict: NOT usable: {printable(self.reason)}"]
        return "\n".join(lines)


def _worth_a_look(files: list[FileFinding], max_rows: int) -> list[str]:
    """The printout's lines on ignored entries that may have been meant as images (the rest are only counted)."""
    if not files:
        return []
    width = min(48, max(len(printable(f.path)) for f in files[:max_rows]))
    lines = [f"Ignored, perhaps meant as images ({len(files)}):"]
    lines += [f"  {printable(f.path):<{width}}  {printable(f.reason)}" for f in files[:max_rows]]
    if len(files) > max_rows:
        lines.append(f"  ... and {len(files) - max_rows} more (write the full list with --json FILE)")
    return [*lines, ""]


def check_json_target(path: str | os.PathLike[str], data_dir: str | os.PathLike[str]) -> str:
    """The absolute path a doctor report of ``data_dir`` may be written to (checked before the scan, and again
    when written): outside the data folder, and new or an earlier doctor report, so nothing of the user's is
    replaced.

    Raises:
        ConfigError: Its folder does not exist, it lies in the data folder, or it is another file.
        OutputError: It cannot be written.
    """
    target = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        raise ConfigError(
            f"Cannot write the doctor report: folder {folder!r} does not exist. Received: path={os.fspath(path)!r}"
        )
    check_replaceable(
        target,
        arg="json",
        ours="a doctor report (floranet doctor --json)",
        is_ours=lambda head: head.startswith(b'{\n  "data_dir": '),
        inside=[("the data folder", Path(data_dir))],
        head=16,
    )
    return target


def check_data_dir(data_dir: str | os.PathLike) -> None:
    """Refuses a ``data_dir`` that does not exist or is a file (what train checks before it makes its run folder).

    Raises:
        DatasetError: Naming which.
    """
    root = os.fsdecode(os.fspath(data_dir))
    if not os.path.exists(root):
        raise DatasetError(f"data_dir does not exist. Received: data_dir={printable(root)!r}")
    if not os.path.isdir(root):
        raise DatasetError(
            f"data_dir must be a folder of class sub-folders, not a file. Received: data_dir={printable(root)!r}"
        )


def diagnose(
    data_dir: str | os.PathLike,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
    progress: bool = False,
) -> DoctorReport:
    """Checks a folder-per-class image set.

    Args:
        data_dir: A folder with one sub-folder of images per class.
        max_pixels: Larger images are bad (decompression-bomb guard).
        workers: Decoding threads; default :func:`~floranet.data.images.decode_threads`.
        progress: Show a progress bar (tqdm) on stderr.

    Returns:
        The :class:`DoctorReport`.

    Raises:
        DatasetError: ``data_dir`` is missing, not a folder or unreadable.
        ConfigError: ``max_pixels`` or ``workers`` is not a positive int.
    """
    root = os.fsdecode(os.fspath(data_dir))
    check_positive_int("max_pixels", max_pixels)  # as every decode checks it: once here, not once per file
    if workers is None:
        workers = images.decode_threads()
    elif isinstance(workers, bool) or not isinstance(workers, int) or workers <= 0:
        raise ConfigError(f"workers must be a positive int or None. Received: workers={workers!r}")
    check_data_dir(root)
    formats.allowed_formats()  # a bad FLORANET_EXTRA_IMAGE_FORMATS is one error, not every file "bad"
    require("simplejpeg", "floranet doctor's check of JPEG data")  # so is a missing simplejpeg
    scan = Scan(root)
    checked = _check_all(scan.candidates, max_pixels, workers, progress)
    files, duplicates = _mark_duplicates(sorted(scan.findings + checked, key=lambda f: f.path))
    counts = Counter(f.label for f in files if f.status in _USABLE)
    classes = {c: counts.get(c, 0) for c in sorted(scan.classes)}
    reason = _unusable_reason(root, classes)
    filled = [c for c, n in classes.items() if n > 0]
    warnings = tuple(
        f"class folders {ascii(a)} and {ascii(b)} differ only by case: two classes here, but one folder on a "
        "case-insensitive file system (macOS and Windows by default), where a copy of this set merges them"
        for a, b in case_twins(filled)
    )
    return DoctorReport(root, classes, tuple(files), duplicates, usable=not reason, reason=reason, warnings=warnings)


def find_leaks(report: DoctorReport, split_of: Mapping[str, str]) -> list[tuple[str, str]]:
    """Pairs ``(train_path, validation_path)`` of files with identical bytes.

    Args:
        report: A doctor report (its sha256 values are used).
        split_of: Maps a file's ``path`` to ``"train"`` or ``"validation"``;
            paths not in it are skipped.

    Returns:
        Sorted pairs; empty when validation shares no bytes with training.

    Raises:
        ConfigError: A value of ``split_of`` is neither "train" nor "validation".
    """
    by_hash: dict[str, dict[str, list[str]]] = defaultdict(lambda: {"train": [], "validation": []})
    for f in report.files:
        subset = split_of.get(f.path)
        if subset is None or f.sha256 is None:
            continue
        if subset not in ("train", "validation"):
            raise ConfigError(
                f"split_of values must be 'train' or 'validation'. Received: split_of[{f.path!r}]={subset!r}"
            )
        by_hash[f.sha256][subset].append(f.path)
    return sorted((t, v) for g in by_hash.values() for t in g["train"] for v in g["validation"])


def _check_all(candidates: list[Candidate], max_pixels: int, workers: int, progress: bool) -> list[FileFinding]:
    from tqdm.auto import tqdm

    def check(c: Candidate) -> FileFinding:
        return _check(c, max_pixels)

    bar = tqdm(total=len(candidates), desc="Checking images", unit="img", disable=not progress)
    try:
        if workers == 1 or len(candidates) < 2:
            results = _tick(map(check, candidates), bar)
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="floranet-doctor") as pool:
                results = _tick(pool.map(check, candidates), bar)
    finally:
        bar.close()
    return results


def _tick(results: Iterable[FileFinding], bar: Any) -> list[FileFinding]:
    out = []
    for r in results:
        out.append(r)
        bar.update(1)
    return out


def _check(c: Candidate, max_pixels: int) -> FileFinding:
    try:
        data = images.read_image_file(c.abs_path, name=c.path, max_pixels=max_pixels)
    except images.UnusableImageError as e:
        return FileFinding(c.path, c.label, "bad", e.detail, kind=e.kind)
    sha = hashlib.sha256(data).hexdigest()
    try:
        info = images.inspect_image_bytes(data, name=c.path, max_pixels=max_pixels)
    except images.UnusableImageError as e:
        return FileFinding(c.path, c.label, "bad", e.detail, sha, kind=e.kind)
    except Exception as e:  # noqa: BLE001 - the doctor reports bad files, it never raises on one
        return FileFinding(c.path, c.label, "bad", f"cannot be decoded ({type(e).__name__}: {e})", sha)
    return FileFinding(
        c.path,
        c.label,
        "note" if info.notes else "ok",
        "; ".join(info.notes),
        sha,
        info.width,
        info.height,
        info.tf_decodable,
    )


def _mark_duplicates(files: list[FileFinding]) -> tuple[list[FileFinding], tuple[tuple[str, ...], ...]]:
    """Within a class: a note on each later copy. Across classes: every copy is bad."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, f in enumerate(files):
        if f.status in _USABLE and f.sha256:
            groups[f.sha256].append(i)
    dup_groups = []
    for members in groups.values():
        if len(members) < 2:
            continue
        dup_groups.append(tuple(files[i].path for i in members))
        first = files[members[0]]
        if len({files[i].label for i in members}) > 1:
            for i in members:
                others = [files[j].path for j in members if files[j].label != files[i].label]
                files[i] = replace(
                    files[i],
                    status="bad",
                    tf_decodable=False,
                    reason=f"label conflict: identical to {', '.join(others)}",
                    conflict=True,
                )
        else:
            for i in members[1:]:
                note = f"duplicate of {first.path}"
                files[i] = replace(files[i], status="note", reason="; ".join(filter(None, [files[i].reason, note])))
    return files, tuple(sorted(dup_groups))


def _unusable_reason(root: str, classes: dict[str, int]) -> str:
    filled = [c for c, n in classes.items() if n > 0]
    twins = same_looking(filled)
    if twins:
        a, b, how = twins
        return (
            f"class folders {ascii(a)} and {ascii(b)} {how}: they look the same in every report and answer; "
            "rename one (or merge them)"
        )
    if len(filled) >= 2:
        return ""
    if not classes:
        return (
            f"no class folders in {printable(root)!r}: a dataset needs at least 2 class folders "
            "(one sub-folder of images per class)"
        )
    if len(filled) == 1:
        return (
            f"only 1 class with usable images ({printable(filled[0])!r}): nothing to classify; "
            "a dataset needs at least 2 class folders"
        )
    return (
        f"no class has usable images ({len(classes)} class folder(s), 0 usable images): "
        "a dataset needs at least 2 class folders with images"
    )
