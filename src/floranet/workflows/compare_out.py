"""The comparison folder (``compare --out``): its files, and what ``floranet compare`` refuses before it writes.

``OUT`` holds the shared split (``split.csv``) with the record of the data folder it was made from
(``split.json``), one run folder per backbone, ``comparison.json`` and ``comparison.html``. Nothing else may be
there: nothing of anyone's is written over, and nothing of anyone's is taken for the comparison's own.
"""

from __future__ import annotations

from pathlib import Path

from floranet.config import CompareConfig, load_file
from floranet.errors import ConfigError, ModelError
from floranet.models import registry
from floranet.rundir import RunDir
from floranet.utils.files import file_head
from floranet.workflows.ranking import PAGE_MARK, TABLE_MARK

SPLIT = RunDir.SPLIT  # the shared split, in the comparison folder
SPLIT_SOURCE = RunDir.COMPARISON_SPLIT  # which data folder the shared split was made from
TABLE_JSON = "comparison.json"
PAGE = "comparison.html"


def check_out(config: CompareConfig, out: Path) -> None:
    """Refuses an ``out`` inside the data folder, a file, or a folder holding things a comparison did not write
    (nothing of anyone's is written over): a ``comparison.json`` or ``comparison.html`` is taken for the comparison's
    own only when it starts as floranet writes it (:data:`TABLE_MARK`, :data:`PAGE_MARK`).

    Raises:
        ConfigError: One of those.
    """
    RunDir(out).check_outside(config.data_dir)
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"out must be a folder for the comparison; it is a file. Received: out={str(out)!r}")
    for name, mark in ((TABLE_JSON, TABLE_MARK), (PAGE, PAGE_MARK)):  # replaced at the end: only if floranet's
        head = file_head(out / name, 256)  # None: not a regular file, or unreadable
        if ((out / name).exists() or (out / name).is_symlink()) and (head is None or mark not in head):
            raise ConfigError(
                f"out holds a {name} that floranet compare did not write; choose a new or empty folder, so it is "
                f"not replaced. Received: out={str(out)!r}"
            )
    ours = {SPLIT, SPLIT_SOURCE, TABLE_JSON, PAGE, RunDir.LOCK}

    def started(p: Path) -> bool:  # a run folder of a backbone that was killed before its config.yaml
        return p.name in config.backbones and p.is_dir() and all(c.name == RunDir.LOCK for c in p.iterdir())

    others = sorted(p.name for p in out.iterdir() if p.name not in ours and not RunDir(p).is_run() and not started(p))
    for name in others:
        _check_damaged_run(out / name, config.backbones)
    if others:
        raise ConfigError(
            f"out is a folder that holds things a comparison did not write ({', '.join(others[:3])}"
            f"{', ...' if len(others) > 3 else ''}); choose a new or empty folder. Received: out={str(out)!r}"
        )
    _check_split_source(config, out)


def _check_damaged_run(folder: Path, backbones: tuple[str, ...]) -> None:
    """Refuses a backbone's run folder (one of ``backbones``, or any the registry knows: an earlier comparison's)
    whose ``config.yaml`` is missing or damaged, naming it: what a run writes is there, but not what makes it
    one (it was called a folder of things a comparison did not write).

    Raises:
        ConfigError: ``folder`` is such a run.
    """
    backbone = folder.name in backbones or registry.lookup(folder.name) is not None
    if not backbone or not folder.is_dir() or folder.is_symlink():
        return
    config = folder / RunDir.CONFIG
    if config.exists():
        try:
            damaged = not {"data_dir", "out", "preset"} <= load_file(config).keys()
        except ConfigError:
            damaged = True
        state = "damaged (not the settings a run saves)" if damaged else ""
    else:
        marks = (RunDir.DOCTOR, RunDir.SPLIT, RunDir.STATE, RunDir.MODEL, RunDir.CHECKPOINTS)
        state = "missing" if any((folder / m).exists() for m in marks) else ""
    if state:
        raise ConfigError(
            f"{config} is {state}: {folder} holds a run of {folder.name} that can be neither reused nor resumed. "
            f"Move that run away to train it again, or choose a new --out. Received: out={str(folder.parent)!r}"
        )


def _check_split_source(config: CompareConfig, out: Path) -> None:
    """Refuses an earlier comparison of another data folder: its split lists that folder's files, and this one's
    would be trained on whatever of them it happens to have; and a ``split.csv`` of someone else's.

    Raises:
        ConfigError: The comparison's split was made from another data folder, or ``split.csv`` has no record of
            its data folder and no run of a comparison beside it.
    """
    if not (out / SPLIT).exists():
        return
    try:
        record = RunDir(out).read_json(SPLIT_SOURCE)
        damaged = f"{out / SPLIT_SOURCE} is damaged (no data_dir: which data folder {SPLIT} was made from)"
    except ModelError as e:  # not JSON: named, as the command that writes it (this one) can only start anew
        record, damaged = {}, str(e)
    if record is None:  # made before the record was kept (_shared_split writes it now), or not the comparison's
        if not any(RunDir(p).is_run() for p in out.iterdir() if p.is_dir()):
            raise ConfigError(
                f"out holds a {SPLIT} that floranet compare did not write (no {SPLIT_SOURCE} beside it, and no run "
                "of a comparison); choose a new or empty folder, so that it is not taken for the comparison's "
                f"split. Received: out={str(out)!r}"
            )
        return
    made_from = record.get("data_dir") if isinstance(record, dict) else None
    if not isinstance(made_from, str):
        raise ConfigError(f"{damaged}; choose a new --out. Received: out={str(out)!r}")
    here = str(Path(config.data_dir).resolve())
    if made_from != here:
        raise ConfigError(
            f"out holds a comparison of another data folder: its {SPLIT} was made from {made_from}, not {here}. "
            f"Compare {made_from} there, or choose a new --out for {here}. "
            f"Received: data_dir={config.data_dir!r}, out={str(out)!r}"
        )
