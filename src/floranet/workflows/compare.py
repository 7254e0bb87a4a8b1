"""``floranet compare``: which backbone for *this* data? Every backbone through the same recipe on one split.

The doctor runs once and one split is made and saved (``OUT/split.csv``, and in ``OUT/split.json`` the data
folder it was made from: an ``OUT`` of another data folder is refused); each backbone is then trained as a
normal run directory (``OUT/<backbone>/``, with ``split_file`` pointing at that split) with the same settings:
the ``recommended`` preset's stage 1 on cached features by default, stage 2 as well with ``fine_tune``. Each
finished run is measured the same way: validation accuracy and ECE (from its ``metrics.json``), the size of
``model.keras``, the training time, and batch-1 / batch-32 latency of the model on this machine, all on one
runtime (:func:`floranet.inference.runtime.choose_inference`, as a server picks it unless told). A backbone
whose weights cannot be had offline is skipped with the reason. The ranking (accuracy, then ECE; a run trained on
other classes or validation images than most, one reused from before the data folder changed, is listed apart,
not ranked: :func:`floranet.workflows.ranking.mark_other_data`) is printed, and written as
``OUT/comparison.json`` and a self-contained ``OUT/comparison.html``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from floranet.config import CompareConfig, InferenceConfig, TrainConfig, is_finite_number, resolve
from floranet.data import doctor
from floranet.data import split as split_lib
from floranet.errors import ConfigError, DatasetError, ModelError, OutputError, WeightsError
from floranet.inference import load
from floranet.inference.runtime import choose_inference
from floranet.models import backbones, registry
from floranet.models import weights as weights_lib
from floranet.rundir import RunDir
from floranet.training.opening import settings_changed
from floranet.utils.files import atomic_write_text, write_json
from floranet.workflows.compare_out import PAGE, SPLIT, SPLIT_SOURCE, TABLE_JSON, check_out
from floranet.workflows.ranking import Comparison, Entry, mark_other_data, page
from floranet.workflows.train import train

__all__ = ["Comparison", "Entry", "compare", "latency", "page"]

WARMUP = 3
BIG_BATCH = 32


def compare(config: CompareConfig, *, progress: bool = False, say: Callable[[str], None] = print) -> Comparison:
    """Trains every backbone of ``config`` on one saved split and ranks them.

    Args:
        config: What to compare and how.
        progress: Progress bars of the training runs.
        say: Where one-line status messages go.

    Returns:
        The comparison, also written as ``OUT/comparison.json`` and ``OUT/comparison.html``.

    Raises:
        DatasetError: The data cannot be trained on.
        ConfigError: A bad setting, or an ``OUT/<backbone>`` run of other settings (not an interrupted one's).
        WeightsError: A backbone's weights file is missing or cannot be read (before anything is written).
    """
    out = Path(config.out)
    _check_distinct(config.backbones)
    check_out(config, out)
    choose_inference(config.runtime, config.precision)  # latency's runtime: said missing before anything trains
    # Held while it decides which runs are new, unfinished or done, and writes them: two compares into one OUT
    # decided at once, then each failed on a run the other had begun ("already holds a run", "Nothing to resume").
    with RunDir(out).lock(hint="another floranet compare is writing it: wait for it to finish, or give another --out"):
        return _compare_in(config, out, progress, say)


def _compare_in(config: CompareConfig, out: Path, progress: bool, say: Callable[[str], None]) -> Comparison:
    """:func:`compare`'s work, under ``OUT``'s lock."""
    # Every backbone's settings before anything is written or trained: a typo in the last name fails at once.
    runs = [(b, _with_own_split(_settings(config, b, out, out / SPLIT))) for b in config.backbones]
    earlier = {b: _earlier_run(b, s) for b, s in runs}  # an interrupted comparison continues where it stopped
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(out, e) from None
    _shared_split(config, out, say)  # out/split.csv, which every run's settings name
    runtime = ""
    entries = []
    for backbone, run_settings in runs:
        entry, choice = _one(config, backbone, run_settings, earlier[backbone], progress=progress, say=say)
        entries.append(entry)
        runtime = runtime or choice
    for note in mark_other_data(entries):
        say(note)
    settings = {"data_dir": config.data_dir, "fine_tune": config.fine_tune, **dict(config.train)}
    result = Comparison(entries, runtime or "nothing (every backbone was skipped)", out, settings)
    write_json(out / TABLE_JSON, result.to_dict())
    atomic_write_text(out / PAGE, page(result))
    return result


def _shared_split(config: CompareConfig, out: Path, say: Callable[[str], None]) -> Path:
    """One split for every run, made once (or reused from an earlier comparison in ``out``)."""
    path = out / SPLIT
    data_dir = str(Path(config.data_dir).resolve())
    if path.exists():
        if not (out / SPLIT_SOURCE).exists():  # made before the record was kept: now it is
            write_json(out / SPLIT_SOURCE, {"data_dir": data_dir})
            say(f"{path} has no record of the data folder it was made from; taking it for {data_dir}.")
        say(
            f"Using the comparison's split {path}, made from {data_dir}: images added there since are not in it "
            "(each run that trains says how many); a new --out splits the data folder as it is now."
        )
        return path
    settings = resolve(data_dir=config.data_dir, **dict(config.train))
    report = doctor.diagnose(config.data_dir, max_pixels=settings.max_pixels)
    if not report.usable:
        raise DatasetError(f"{config.data_dir}: {report.reason}")
    items = [(f.path, str(f.label), f.sha256 or "") for f in report.usable_files()]
    names = sorted({label for _, label, _ in items})
    split = split_lib.make_split(items, val_split=settings.val_split, seed=settings.seed, class_names=names)
    write_json(out / SPLIT_SOURCE, {"data_dir": data_dir})  # first: a split.csv always has its record
    split.to_csv(path)
    say(f"Split: {len(split.train())} training and {len(split.validation())} validation images -> {path}")
    return path


def _weights_label(weights: str | None) -> str:
    if weights is None:
        return "random (none)"
    return weights if weights == "imagenet" else f"file {Path(weights).name}"


def _check_distinct(names: tuple[str, ...]) -> None:
    """Refuses two names of one model (CompareConfig refuses two spellings of one name): efficientnetb0 is
    efficientnet_b0, as the registry strips underscores to find a Keras model, and would train it twice.

    Raises:
        ConfigError: Two names of one model; both are named.
    """
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        model = registry.identity(name)
        first = seen.setdefault(model, i)
        if first != i:
            raise ConfigError(
                f"backbones must name distinct models; {names[first]!r} and {name!r} are both {model}. "
                f"Received: backbones={names!r}"
            )


def _earlier_run(backbone: str, settings: TrainConfig) -> str:
    """What ``OUT/<backbone>`` holds: ``"new"`` (nothing yet), ``"finished"`` (a complete run of these settings,
    reused) or ``"incomplete"`` (resumed).

    Raises:
        ConfigError: It holds a run of other settings (its model answers another question).
    """
    run = RunDir(settings.out)
    if not run.is_run():
        return "new"
    changed = settings_changed(run, settings)
    if changed:
        raise ConfigError(
            f"out already holds a run of {backbone} with other settings ({', '.join(changed)}); choose a new folder, "
            f"or move that run away to train it again. Received: out={str(run.path.parent)!r}"
        )
    return "finished" if run.is_finished() else "incomplete"  # one killed in its report or audit is resumed


def _with_own_split(settings: TrainConfig) -> TrainConfig:
    """``settings`` with the ``split_file`` its earlier run in ``OUT/<backbone>`` saved, when that was its
    comparison's own split where the comparison then lay: an OUT moved or copied since is the same comparison
    (its runs' ``config.yaml`` name the old ``OUT/split.csv``; a resumed run reads its own ``split.csv``)."""
    run = RunDir(settings.out)
    if not run.is_run():
        return settings
    saved = run.saved_settings()
    split, was = saved.get("split_file"), saved.get("out")
    if not isinstance(split, str) or not isinstance(was, str) or Path(was).name != run.path.name:
        return settings
    # split_file was made absolute where it trained, out kept as given (perhaps relative to that folder).
    made = Path(os.path.abspath(split)).parts
    own = Path(os.path.normpath(Path(was).parent / SPLIT)).parts
    if made == own or (not Path(was).is_absolute() and made[-len(own) :] == own):
        return dataclasses.replace(settings, split_file=os.path.abspath(split))
    return settings


def _settings(config: CompareConfig, backbone: str, out: Path, split_file: Path) -> TrainConfig:
    """One backbone's training settings: the comparison's, on its shared split, into ``out/<backbone>``.

    Raises:
        ConfigError: An unknown backbone name, or a bad setting.
        WeightsError: A weights file that is missing or cannot be read.
    """
    backbones.get(backbone)  # the registry's lookup: an unknown name fails here, before anything trains
    weights = config.weights_of(backbone)
    overrides = dict(config.train)
    if not config.fine_tune:
        overrides["fine_tune_epochs"] = 0
    settings = resolve(
        data_dir=config.data_dir,
        out=str(out / backbone),
        backbone=backbone,
        weights=weights if weights is not None else "none",
        split_file=str(split_file),
        **overrides,
    )
    backbones.check_input_size(backbone, settings.image_size)  # Keras's Inception at 32 px: now, not after others
    if settings.weights != "imagenet":  # a missing file is a typo to fix, not weights to skip for (as train checks)
        weights_lib.ensure_available(backbone, settings.weights)
    return settings


def _one(
    config: CompareConfig,
    backbone: str,
    settings: TrainConfig,
    earlier: str,
    *,
    progress: bool,
    say: Callable[[str], None],
) -> tuple[Entry, str]:
    """Trains (``earlier``: ``"new"``), resumes (``"incomplete"``) or reuses (``"finished"``) one backbone's run and
    measures it; (its entry, the runtime its latency ran on)."""
    entry = Entry(backbone, _weights_label(config.weights_of(backbone)))
    say(f"== {backbone} ({entry.weights}) -> {settings.out}" + {"new": "", "incomplete": " (resumed)"}.get(earlier, ""))
    run = RunDir(settings.out)
    if earlier == "finished":
        say(f"Reusing the finished run of {backbone} in {run.path} (same settings).")
    else:
        made_here = not run.path.exists()
        try:
            train(settings, resume=earlier == "incomplete", progress=progress, say=say)
        except WeightsError as e:
            # Its first sentence: not cut at a ". " inside the weights file's path the message echoes.
            entry.skipped = _first_sentence(f"no weights: {e}", settings.weights, config.weights_of(backbone))
            say(f"Skipping {backbone}: {e}")
            if made_here:  # a half-made run (a weights file that does not fit) would block a retry with others
                shutil.rmtree(run.path, ignore_errors=True)
            return entry, ""
    metrics = run.metrics()
    entry.run_dir = str(run.path)
    # What it was trained and measured on: a run reused from before the data folder changed differs.
    val_images = _metric(run, metrics, "num_examples")
    entry.classes, entry.val_images = run.class_names(), None if val_images is None else int(val_images)
    entry.accuracy = _metric(run, metrics, "accuracy")
    entry.ece = _metric(run, metrics, "calibration", "ece")
    entry.size_bytes = run.model_file.stat().st_size
    # As its metrics.json records it: the whole train command (of the last invocation, for a resumed run).
    timings = [_metric(run, metrics, "timings_s", k) for k in ("training", "total")]  # training alone, first
    entry.train_s = round(next((t for t in timings if t is not None), 0.0), 1)
    b1, b32, choice = latency(run.path, config.runtime, config.precision)
    entry.latency_ms_batch1, entry.latency_ms_batch32 = b1, b32
    return entry, choice


def _first_sentence(text: str, *values: str | None) -> str:
    """``text`` up to its first ``". "``, not counting one inside an echoed ``values`` (a path may hold one)."""
    inside: set[int] = set()
    for value in {v for given in values if given for v in (given, str(Path(given)))}:
        for found in re.finditer(re.escape(value), text):
            inside.update(range(found.start(), found.end()))
    end = next((m.start() for m in re.finditer(r"\. ", text) if m.start() not in inside), len(text))
    return text[:end]


def _metric(run: RunDir, metrics: dict[str, Any], *keys: str) -> float | None:
    """``metrics[keys[0]][keys[1]]...`` (``metrics.json``'s), a finite number; None when a key is absent (a run with
    no validation image has no accuracy).

    Raises:
        ModelError: A value of another type (``"0.9"``, null), naming the file and the field.
    """
    value: Any = metrics
    for i, key in enumerate(keys):
        if not isinstance(value, dict):
            _damaged_metric(run, ".".join(keys[:i]), "an object", value)
        if key not in value:
            return None
        value = value[key]
    if not is_finite_number(value):
        _damaged_metric(run, ".".join(keys), "a number", value)
    return float(value)


def _damaged_metric(run: RunDir, field: str, kind: str, value: Any) -> NoReturn:
    raise ModelError(
        f"{run / RunDir.METRICS} is damaged: {field} must be {kind}; move that run away to train it again. "
        f"Received: {field}={json.dumps(value)[:40]}"
    )


def latency(
    run_dir: str | Path, runtime: str = "auto", precision: str = "auto", calls: int = 20
) -> tuple[float, float, str]:
    """Median warm latency of one call at batch 1 and at batch 32 (ms), and the runtime it ran on."""
    predictor = load(run_dir, InferenceConfig(runtime=runtime, precision=precision, batch_size=BIG_BATCH))
    choice = predictor.select(None)  # as a server resolves it: the same runtime whatever the job size
    h, w = predictor.image_size
    pixels = np.random.default_rng(0).uniform(0, 255, (BIG_BATCH, h, w, 3)).astype(np.float32)
    medians = []
    for batch, n in ((pixels[:1], calls), (pixels, max(3, calls // 4))):
        for _ in range(WARMUP):
            predictor.probabilities(batch)
        times = []
        for _ in range(n):
            started = time.perf_counter()
            predictor.probabilities(batch)
            times.append((time.perf_counter() - started) * 1000)
        medians.append(round(float(np.median(times)), 3))
    return medians[0], medians[1], f"{choice.runtime} {choice.precision}"
