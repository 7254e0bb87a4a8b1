"""The data side of a run: doctor, split manifest, datasets and predictions aligned with it."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from floranet.config import TrainConfig
from floranet.data import curation, decode, doctor, pipeline
from floranet.data import split as split_lib
from floranet.data.augment import Augment
from floranet.errors import DatasetError
from floranet.rundir import RunDir
from floranet.utils.figures import image_grid
from floranet.utils.text import printable, some_names

log = logging.getLogger(__name__)
# int8 quantization calibrates on this many training images (NNCF's default subset size).
CALIBRATION_IMAGES = 300


@dataclass
class Prepared:
    """A checked dataset with its split, ready to feed a model."""

    data_dir: Path
    split: split_lib.Split
    tf_decodable: dict[str, bool]
    config: TrainConfig
    notes: list[str] = field(default_factory=list)

    def abs_path(self, rel: str) -> Path:
        return self.data_dir / rel

    def rows(self, subset: str) -> list[split_lib.SplitRow]:
        if subset == "train":
            return self.split.train()
        if subset == "validation":
            return self.split.validation()
        return list(self.split.rows)

    def paths(self, rows: list[split_lib.SplitRow]) -> list[str]:
        return [str(self.abs_path(r.path)) for r in rows]

    def labels(self, rows: list[split_lib.SplitRow]) -> np.ndarray:
        return np.asarray([self.split.label_index(r.label) for r in rows], dtype=np.int64)

    def calibration_images(self, precision: str, n: int = CALIBRATION_IMAGES) -> np.ndarray | None:
        """``n`` training images (a seeded sample, not augmented) that int8 quantization calibrates on, or None
        for any other precision."""
        if precision != "int8":
            return None
        for pixels, _ in self.dataset("train", shuffle=True, batch_size=n).take(1):
            return np.asarray(pixels.numpy(), np.float32)
        return None

    def dataset(
        self,
        subset: str,
        *,
        shuffle: bool = False,
        augment: bool = False,
        batch_size: int | None = None,
        seed: int | None = None,
        with_index: bool = False,
    ) -> Any:
        """A batched tf.data stream of (images 0..255, labels), or of (images, row positions) ``with_index``.

        ``seed`` (default: the config's) seeds shuffling and augmentation: another seed, another random view.
        """
        rows = self.rows(subset)
        return pipeline.make_dataset(
            self.paths(rows),
            list(range(len(rows))) if with_index else self.labels(rows).tolist(),
            image_size=self.config.image_size,
            batch_size=batch_size or self.config.batch_size,
            tf_decodable=[self.tf_decodable.get(r.path, False) for r in rows],
            shuffle=shuffle,
            augment=Augment() if augment else None,
            seed=self.config.seed if seed is None else seed,
            max_pixels=self.config.max_pixels,
            on_error="skip",
        )


@contextlib.contextmanager
def unknown_length() -> Iterator[None]:
    """Keras's "Your input ran out of data; interrupting training" left unsaid: :meth:`Prepared.dataset`'s streams
    skip images that fail to decode, so their length is unknown, and a pass over one ends that way."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        yield


def prepare(
    config: TrainConfig, run: RunDir, *, resume: bool, progress: bool, say: Callable[[str], None] = print
) -> Prepared:
    """Runs the doctor, makes or reuses the split, writes the data files of the run directory."""
    data_dir = Path(config.data_dir)
    split_path = run / RunDir.SPLIT
    resumed = resume and split_path.exists()
    # The lists and a given split are read first: a malformed one is said before the doctor reads every image.
    # A resumed run keeps the split its curation made: the lists are not read again, the run's record of them is.
    records = tuple(str(run / n) if run.exists(n) else None for n in (RunDir.EXCLUDED, RunDir.RELABELED))
    curate = curation.Curation.load(*(records if resumed else (config.exclude, config.relabel)))
    if not resumed:  # a list of another folder's files (or read otherwise than meant) is refused, not trained past
        curate.check_found(data_dir, config.exclude, config.relabel)
    given = split_lib.Split.from_csv(config.split_file) if config.split_file and not resumed else None
    report = doctor.diagnose(data_dir, max_pixels=config.max_pixels, progress=progress)
    run.write_json(RunDir.DOCTOR, report.to_dict())
    if not report.usable:
        raise DatasetError(f"{data_dir}: {report.reason}")
    usable, settled = report.usable_files(), _settled_conflicts(report.files, curate)
    notes = _left_out_by_doctor(report, settled, run, say)
    if settled:
        usable = sorted([*usable, *settled], key=lambda f: f.path)
        say(f"Curation: settles the label conflicts of {len(settled)} byte-identical file(s) (see doctor.json).")
    curate = curate.resolved([f.path for f in usable])
    tf_decodable = {f.path: f.tf_decodable for f in usable}
    if resumed:  # in the order the weights were trained in (a --split-file's relabelled classes come last)
        split = run.split(run.class_names() if run.exists(RunDir.CLASS_NAMES) else None)
    elif given is not None:
        split = curate.apply_split(given)
        say(f"Using the split from {config.split_file}.")
    else:
        items = curate.apply_items([(f.path, str(f.label), f.sha256 or "") for f in usable])
        # Classes with no usable image cannot be learned: leave them out of the label set.
        names = sorted({label for _, label, _ in items})
        split = split_lib.make_split(items, val_split=config.val_split, seed=config.seed, class_names=names)
    if not resumed:  # the doctor refuses such folders; a relabel target or a split file's label can make one
        lists = {k: v for k, v in (("relabel", config.relabel), ("split_file", config.split_file)) if v}
        split_lib.check_look_distinct(split.class_names, lists or {"data_dir": config.data_dir})
    _note_unlisted(split, usable, curate, notes, say)
    split = _checked_against(split, usable, data_dir, notes, say)
    _note_unvalidated(split, None if config.split_file else config.val_split, notes, say)
    if resumed:  # the run's record stays as it was; files gone since are left out of what remains to train
        _check_classes_kept(run, split)
    else:
        run.write_class_names(split.class_names)
        notes += _record_curation(run, curate, usable, split, say)
        # Last: a resume takes split.csv for "the data files are written" (a kill between it and class_names.json
        # left a run whose resume failed for good: "class_names.json is missing").
        split.to_csv(split_path)
    if resumed and (config.exclude or config.relabel):
        say(f"Curation: as the run recorded it ({RunDir.EXCLUDED}, {RunDir.RELABELED}); the lists are not read again.")
    prepared = Prepared(data_dir, split, tf_decodable, config, notes)
    _sample_grid(prepared, run)
    per_class = ", ".join(f"{k} {v['train'] + v['validation']}" for k, v in split.counts().items())
    say(
        f"Data: {len(split.rows)} images, {len(split.class_names)} classes ({per_class}); "
        f"train {len(split.train())}, validation {len(split.validation())}."
    )
    return prepared


def _left_out_by_doctor(
    report: doctor.DoctorReport, settled: list[doctor.FileFinding], run: RunDir, say: Callable[[str], None]
) -> list[str]:
    """Says what the doctor's verdicts leave out of the run, and returns its notes: unusable files, ignored files
    that look like images (a JPEG under another extension, an image beside the class folders), and class folders
    without a usable image, which get no output in the model (a label the user made, dropped without a word)."""
    notes = []
    bad = report.summary()["num_bad"] - len(settled)
    if bad:
        notes.append(f"{bad} unusable files skipped (see doctor.json)")
        say(f"Doctor: {bad} unusable file(s) will be skipped; details in {run / RunDir.DOCTOR}.")
    looks = [f.path for f in report.files if f.worth_a_look]
    if looks:
        notes.append(f"{len(looks)} ignored files look like images ({some_names(looks)}; see doctor.json)")
        say(
            f"Doctor: {len(looks)} file(s) ignored that look like images ({some_names(looks)}): see "
            f"{run / RunDir.DOCTOR}, or floranet doctor {printable(report.data_dir)}."
        )
    have = {f.label for f in [*report.usable_files(), *settled]}
    empty = [c for c in report.classes if c not in have]
    if empty:
        folders = (
            f"Class folder {some_names(empty)} has" if len(empty) == 1 else f"Class folders {some_names(empty)} have"
        )
        notes.append(f"{folders} no usable image: left out of the model")
        say(f"Doctor: {notes[-1]} (see {run / RunDir.DOCTOR}).")
    return notes


def _record_curation(
    run: RunDir,
    curate: curation.Curation,
    usable: list[doctor.FileFinding],
    split: split_lib.Split,
    say: Callable[[str], None],
) -> list[str]:
    """Writes a new run's record of its curation (``excluded.txt``, ``relabel.csv``; none, and a failed earlier
    attempt's removed, without one), says what it did, and returns its notes."""
    for name in (RunDir.EXCLUDED, RunDir.RELABELED):
        (run / name).unlink(missing_ok=True)
    if not curate:
        return []
    found = {f.path for f in usable}
    unmatched = curate.unmatched(sorted(found))
    changes = curate.class_changes([str(f.label) for f in usable], [r.label for r in split.rows])
    applied = curate.applied(found)  # the record holds what changed the split, the notes say what did not
    run.write_text(RunDir.EXCLUDED, applied.excluded_text())
    run.write_text(RunDir.RELABELED, applied.relabel_text())
    say(
        f"Curation: {len(applied.exclude)} file(s) left out, {len(applied.relabel)} relabelled (files untouched)"
        + "".join(f"; {n}" for n in unmatched)
        + "."
    )
    for note in changes:
        say(f"Curation: {note}.")
    return unmatched + changes


def _settled_conflicts(files: Sequence[doctor.FileFinding], curate: curation.Curation) -> list[doctor.FileFinding]:
    """The files of each label conflict (byte-identical copies in different classes, all bad to the doctor) that
    the curation settles: once its exclusions and relabels leave the group's copies one label, they are usable
    again (the excluded ones left out by the curation as any file; the rest kept on one side of the split)."""
    groups: dict[str, list[doctor.FileFinding]] = defaultdict(list)
    for f in files:
        if f.conflict and f.sha256:
            groups[f.sha256].append(f)
    if not groups or not curate:
        return []
    resolved = curate.resolved([f.path for members in groups.values() for f in members])
    gone = set(resolved.exclude)
    settled = []
    for members in groups.values():
        kept = [f for f in members if f.path not in gone]
        if kept and len({resolved.relabel.get(f.path, str(f.label)) for f in kept}) == 1:
            reason = "label conflict settled by the run's --exclude/--relabel"
            settled += [dataclasses.replace(f, status="note", reason=reason, conflict=False) for f in members]
    return settled


def _check_classes_kept(run: RunDir, split: split_lib.Split) -> None:
    """Refuses a resume whose data no longer has an image of each class the run was trained on: the saved
    weights have an output per class, and a label set without one would shift every label after it.

    Raises:
        DatasetError: A class has no usable image left.
    """
    trained = run.class_names() if run.exists(RunDir.CLASS_NAMES) else list(split.class_names)
    gone = [c for c in trained if c not in split.class_names]  # _checked_against keeps the classes with images
    if gone:
        raise DatasetError(
            f"--resume: the run in {run.path} was trained on {len(trained)} classes, and {', '.join(map(repr, gone))} "
            "has no usable image in the data folder now; put its images back, or start a new run with another --out."
        )


def _note_unlisted(
    split: split_lib.Split,
    usable: list[doctor.FileFinding],
    curate: curation.Curation,
    notes: list[str],
    say: Callable[[str], None],
) -> None:
    """Says what a split made elsewhere (``--resume``, ``--split-file``, a comparison's) does with the data folder
    as it is now: usable images it does not list are not trained on, and a row may label a file otherwise than its
    folder (or the curation) does; its label is used. Neither is an error; a split made here has neither."""
    listed = {r.path for r in split.rows}
    left_out = set(curate.exclude)
    unlisted = [f for f in usable if f.path not in listed and f.path not in left_out]
    if unlisted:
        new = sorted({curate.relabel.get(f.path, str(f.label)) for f in unlisted} - set(split.class_names))
        among = f"; {len(new)} class(es) the split does not have among them: {', '.join(new)}" if new else ""
        notes.append(f"{len(unlisted)} usable images of the data folder are not in the split and were not used{among}")
        say(f"Split: {notes[-1]}.")
    label_of = {f.path: curate.relabel.get(f.path, str(f.label)) for f in usable}
    other = [r for r in split.rows if r.path in label_of and r.label != label_of[r.path]]
    if other:
        notes.append(
            f"{len(other)} rows of the split label their file otherwise than its folder (or --relabel) does "
            f"(e.g. {printable(other[0].path)} as {printable(other[0].label)!r}); the split's labels are used"
        )
        say(f"Split: {notes[-1]}.")


def _checked_against(
    split: split_lib.Split,
    usable: list[doctor.FileFinding],
    data_dir: Path,
    notes: list[str],
    say: Callable[[str], None],
) -> split_lib.Split:
    """The split's rows that are usable now, each with the sha256 of the file as it is now.

    A split file may carry no hashes (hand-written) or stale ones (files edited since); the feature cache is
    keyed by hash, so a hash taken on trust would give many images one cached feature vector.
    """
    hashes = {f.path: f.sha256 or "" for f in usable}
    kept = [r for r in split.rows if r.path in hashes]
    if not kept:
        raise DatasetError(f"None of the files in the split manifest are usable in {data_dir}.")
    if len(kept) < len(split.rows):
        notes.append(f"{len(split.rows) - len(kept)} files of the split are missing or unusable now and were left out")
        say(f"Split: {notes[-1]}.")
    changed = sum(1 for r in kept if r.sha256 and r.sha256 != hashes[r.path])
    if changed:
        notes.append(f"{changed} files of the split changed since it was written (their sha256 differs)")
        say(f"Split: {notes[-1]}; their current content is used.")
    rows = tuple(dataclasses.replace(r, sha256=hashes[r.path]) for r in kept)
    labels = sorted({r.label for r in rows})
    if len(labels) < 2:
        raise DatasetError(
            f"Only {len(labels)} class left to train on in {data_dir} ({', '.join(labels) or 'none'}) after the "
            "split file, --exclude and --relabel were applied; a classifier needs at least 2."
        )
    if not any(r.split == "train" for r in rows):
        raise DatasetError(f"The split has no training images left in {data_dir}; every usable row is validation.")
    if not any(r.split == "validation" for r in rows):
        say(
            "Split: no validation images: early stopping, calibration, the unknown threshold and evaluation have "
            "nothing to measure on."
        )
    gone = [c for c in split.class_names if c not in labels]
    if gone:  # a class of the split file with no usable image now: no output for what was never trained
        notes.append(f"{len(gone)} class(es) of the split have no usable image and were left out: {', '.join(gone)}")
        say(f"Split: {notes[-1]}.")
    return split_lib.Split(rows=rows, class_names=tuple(c for c in split.class_names if c in labels))


def _note_unvalidated(
    split: split_lib.Split, val_split: float | None, notes: list[str], say: Callable[[str], None]
) -> None:
    """Says which classes the split kept no validation image of (a class of 1 or 2 images at 0.2: see
    :func:`~floranet.data.split.make_split`): their precision, recall and F1 are not measured (null in
    ``metrics.json``, n/a in the report and the card). A split with no validation image at all is said elsewhere.

    Args:
        split: The split the run trains on.
        val_split: The fraction that made it, or None for a split made elsewhere (``--split-file``).
        notes: The run's notes, appended to.
        say: Where the line goes.
    """
    counts = split.counts()
    missing = [c for c, n in counts.items() if not n["validation"]]
    if not missing or len(missing) == len(counts):
        return
    why = ""
    if val_split is not None:
        # make_split's rule: round(n * val_split) validation images (half to even: 0.5 is 0), never a class's last.
        least = max(2, math.floor(0.5 / val_split) + 1)
        while round(least * val_split) < 1:
            least += 1
        if all(counts[c]["train"] < least for c in missing):
            why = f" (classes under {least} images at val_split {val_split:g})"
    notes.append(f"no validation image for: {some_names(missing, 10)}{why}: their figures are not measured")
    say(f"Split: {notes[-1]}.")


def _sample_grid(prepared: Prepared, run: RunDir, n: int = 9) -> None:
    rng = np.random.default_rng(prepared.config.seed)
    rows = prepared.split.train()
    picks = [rows[i] for i in rng.choice(len(rows), size=min(n, len(rows)), replace=False)]
    images, titles = [], []
    for r in picks:
        try:
            path, size = str(prepared.abs_path(r.path)), prepared.config.image_size
            images.append(decode.decode_and_resize(path, size, max_pixels=prepared.config.max_pixels))
            titles.append(r.label)
        except DatasetError:
            continue
    image_grid(images, titles, run.plot("samples.png"), columns=3, font_size=14)  # the tutorial's first figure


def class_weights(prepared: Prepared, config: TrainConfig, run: RunDir) -> dict[int, float] | None:
    """Balanced class weights (:meth:`~floranet.data.split.Split.balanced_weights`, by label index) when
    ``class_weights: auto``, from ``split.csv`` as the run recorded it: a resume after files went missing trains on
    with the weights the run began with, which the model card shows (they changed between its processes)."""
    if config.class_weights != "auto":
        return None
    split = prepared.split
    recorded = run.split(split.class_names) if run.exists(RunDir.SPLIT) else split
    return {split.label_index(name): w for name, w in recorded.balanced_weights().items()}
