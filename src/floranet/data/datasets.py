"""Datasets: download-and-extract of public image sets, and the bundled sample.

``fetch("flower_photos")`` downloads TensorFlow's flower photos archive into the
Keras cache (``$KERAS_HOME/datasets`` or ``~/.keras/datasets``), checks its
SHA-256, extracts it safely and returns the folder-per-class root. The archive
is kept next to the folder (as Keras does), so a damaged folder is re-extracted
without the network.

Completeness: the extracted folder carries a marker file (:data:`MARKER`, which
holds the archive's SHA-256, and how many files of how many bytes were extracted)
written only after a successful extraction. The archive is extracted into a hidden
temporary sibling folder that is renamed into place at the end, so an interrupted
run never leaves a folder that looks complete. Each fetch counts the folder's files
and bytes again (a walk, no reading): one that changed since (a file deleted,
truncated or added) is not complete. A folder of the set's name that floranet did
not make or that changed since (no marker, another archive's, other counts) is
never deleted, moved or changed: the set is extracted beside it
(``flower_photos-floranet``) and the caller is told.

``fetch("mini_flowers")`` returns the small sample bundled with the package
(60 downsized photos per class, see its ``SOURCE.md``); no network needed.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import importlib.resources
import logging
import os
import shutil
import stat
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from floranet.data import archives
from floranet.data.scan import is_skipped_name
from floranet.errors import ConfigError, DatasetError, OutputError
from floranet.utils import download as download_lib
from floranet.utils import locks
from floranet.utils.files import file_digest

log = logging.getLogger(__name__)
MARKER = ".floranet-complete"
MINI_FLOWERS = "mini_flowers"
MIRROR_ENV = "FLORANET_DATASETS_URL"
_STALE_AFTER_S = 3600.0  # leftovers of an interrupted extraction older than this are removed
_IN_PROGRESS = ".floranet-extracting"  # marks floranet's own temporary extraction folders


@dataclass(frozen=True)
class DatasetSpec:
    """A downloadable folder-per-class image set.

    Attributes:
        name: The name ``fetch`` accepts.
        url: Where the archive (.tgz/.tar.gz/.tar) is published.
        sha256: Its SHA-256 hex digest, or None when unknown (then only
            ``size`` and a full read of the archive check it).
        size: Its size in bytes, or None.
        archive_root: The folder inside the archive that holds the class folders.
    """

    name: str
    url: str
    sha256: str | None
    size: int | None
    archive_root: str

    @property
    def archive_name(self) -> str:
        """File name of the archive in the cache (the last part of ``url``)."""
        return PurePosixPath(urlsplit(self.url).path).name or f"{self.name}.tgz"


DATASETS: dict[str, DatasetSpec] = {
    "flower_photos": DatasetSpec(
        name="flower_photos",
        url="https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz",
        # Size and SHA-256 as recorded by TensorFlow Datasets in
        # tensorflow/datasets: tensorflow_datasets/url_checksums/tf_flowers.txt
        # (commit 333639b37af6c6fedf3610a4a2d42f1c6ef6f7d5):
        # "http://download.tensorflow.org/example_images/flower_photos.tgz 228813984 4c54ace7...5d9c".
        # The same digest appears in several independent projects that pin this archive.
        sha256="4c54ace7911aaffe13a365c34f650e71dd5bf1be0a58b464e5a7183e3e595d9c",
        size=228_813_984,
        archive_root="flower_photos",
    ),
}


def names() -> list[str]:
    """Every name :func:`fetch` accepts: the downloadable sets, then the bundled sample."""
    return [*DATASETS, MINI_FLOWERS]


def mini_flowers_path() -> Path:
    """The bundled sample folder (5 classes x 60 photos) inside the installed package.

    Read-only: copy it before changing anything in it.

    Raises:
        DatasetError: The package was installed without its data files.
    """
    res = importlib.resources.files("floranet.data") / MINI_FLOWERS
    path = Path(str(res))
    if not path.is_dir():
        raise DatasetError(
            f"The bundled sample {MINI_FLOWERS} is missing from the installed package (expected "
            f"{path}). Reinstall floranet from a wheel or source tree that includes "
            "floranet/data/mini_flowers, or pass --data DIR with a folder-per-class image set."
        )
    return path


def fetch(
    name: str = "flower_photos",
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    url: str | None = None,
    timeout: float = 10.0,
    progress: bool = True,
    say: Callable[[str], None] | None = None,
) -> Path:
    """Downloads and extracts a dataset unless a complete copy is cached.

    Args:
        name: One of :func:`names` (``"flower_photos"``, ``"mini_flowers"``).
        cache_dir: Folder that holds the archive and the extracted set
            (default: Keras's cache, ``$KERAS_HOME/datasets`` or ``~/.keras/datasets``).
        url: Download from here instead (a mirror); the checksum still applies.
            Without it, ``$FLORANET_DATASETS_URL`` (a base URL the archive name is
            appended to) is used when set, else the official URL.
        timeout: Seconds allowed to connect and for each read (the status line and headers: 3 times that).
        progress: Show a progress bar on stderr.
        say: Where a notice goes when a folder of the set's name, not made by floranet, is in the way
            (default: a logged warning; floranet never deletes, moves or changes such a folder), or when this
            fetch waits for another one of the same set into the same folder.

    Returns:
        The folder that holds one sub-folder per class, e.g.
        ``~/.keras/datasets/flower_photos``.

    Raises:
        ConfigError: Unknown ``name``.
        DownloadError: The download failed (offline, timeout) or the checksum did
            not match; the message says how to place the archive by hand.
        DatasetError: The archive is corrupt, truncated or unsafe (it is deleted).
    """
    if name == MINI_FLOWERS:
        return mini_flowers_path()
    spec = DATASETS.get(name)
    if spec is None:
        raise ConfigError(f"Unknown dataset: {name!r}. Valid names: {', '.join(names())}. Received: name={name!r}")
    # Before the cache folder is made (its lock makes it): a refused fetch leaves nothing behind.
    download_lib.check_request(url if url is not None else spec.url, timeout)
    root = Path(cache_dir).expanduser() if cache_dir is not None else download_lib.cache_dir("datasets")
    found = _complete_copy(root, spec)
    if found is not None:
        return found
    # One fetch of a set into a folder at a time: a second one waits, then finds the set (two at once appended
    # to one partial file, or failed to move their copies into the same place).
    lock = root / f".{spec.archive_root}.lock"
    fd = locks.acquire(lock, what=f"the fetch of {name} into {root}", wait=True, say=say or log.warning)
    try:
        return _fetch_locked(spec, root, url, timeout, progress, say)
    finally:
        locks.release(lock, fd)


def _fetch_locked(
    spec: DatasetSpec,
    root: Path,
    url: str | None,
    timeout: float,
    progress: bool,
    say: Callable[[str], None] | None,
) -> Path:
    name = spec.name
    found = _complete_copy(root, spec)
    if found is not None:
        return found
    target = _new_target(root, spec)
    if target.name != spec.archive_root:
        (say or log.warning)(
            f"{root / spec.archive_root} exists but is not a complete copy made by floranet "
            f"({_incomplete(root / spec.archive_root, spec)}); it is left exactly as it is, and {name} goes to "
            f"{target} instead."
        )

    archive = root / spec.archive_name
    source = url or _mirror_url(spec) or spec.url
    by_hand = (
        f"download {download_lib.redacted(source)} on a machine with internet and put it at {archive}, "
        "or train on a folder-per-class image set of your own (floranet train DIR)."
    )
    _check_space(root, spec, archive)
    archive = download_lib.download(
        source,
        archive,
        file_hash=spec.sha256,
        size=spec.size,
        timeout=timeout,
        progress=progress,
        manual_hint=f"If this machine is offline, {by_hand}",
    )
    hint = f"Run the command again to download it afresh, or {by_hand}"
    if spec.size is not None and archive.stat().st_size != spec.size:
        got = archive.stat().st_size
        archive.unlink(missing_ok=True)
        raise DatasetError(
            f"The archive downloaded from {source} has {got} bytes, expected {spec.size} "
            f"(truncated or not the {name} archive); it was not kept. {hint}"
        )
    digest = spec.sha256.lower() if spec.sha256 else file_digest(archive)
    _extract(archive, spec, target, digest, source, hint)
    return target


def _check_space(root: Path, spec: DatasetSpec, archive: Path) -> None:
    """Refuses to start when the disk cannot hold the archive and the extracted set (about its size again).

    Raises:
        OutputError: Too little free space, with how much is needed.
    """
    if not spec.size:
        return
    have = archive.stat().st_size if archive.is_file() else 0
    need, free = 2 * spec.size - have + (64 << 20), shutil.disk_usage(root).free
    if free < need:
        raise OutputError(
            root,
            OSError(errno.ENOSPC, f"{free / 2**20:,.0f} MiB free, {spec.name} needs about {need / 2**20:,.0f} MiB"),
        )


def _candidates(root: Path, spec: DatasetSpec) -> list[Path]:
    """Where the set may live: ``<name>``, ``<name>-floranet``, ``<name>-floranet-2``, ... (a folder floranet did
    not make, or that changed since, is never touched: the set goes to the next name)."""
    names = [
        spec.archive_root,
        f"{spec.archive_root}-floranet",
        *(f"{spec.archive_root}-floranet-{i}" for i in range(2, 100)),
    ]
    return [root / n for n in names]


def _complete_copy(root: Path, spec: DatasetSpec) -> Path | None:
    """The first of :func:`_candidates` that is a complete floranet copy (:func:`_incomplete`), else None."""
    return next((path for path in _candidates(root, spec) if not _incomplete(path, spec)), None)


def _new_target(root: Path, spec: DatasetSpec) -> Path:
    """The first of :func:`_candidates` that does not exist: where a fresh copy is extracted.

    Raises:
        DatasetError: All of them exist.
    """
    candidates = _candidates(root, spec)
    for path in candidates:
        if not path.exists() and not path.is_symlink():
            return path
    raise DatasetError(
        f"{root} holds {len(candidates)} folders named like {spec.archive_root!r} that floranet did "
        "not make; pass --cache-dir with another folder."
    )


def _mirror_url(spec: DatasetSpec) -> str | None:
    base = download_lib.env_url(MIRROR_ENV)
    return f"{base.rstrip('/')}/{spec.archive_name}" if base else None


def _incomplete(target: Path, spec: DatasetSpec) -> str:
    """Why ``target`` is not a complete copy of the set ("" when it is): no :data:`MARKER`, another archive's, or
    other files than were extracted (counted again: a walk, no file is read; a marker from before the counts were
    kept is trusted as it was)."""
    marker = target / MARKER
    try:
        lines = marker.read_text(encoding="utf-8").split("\n") if marker.is_file() else []
    except (OSError, UnicodeDecodeError):
        lines = []
    if not lines:
        return f"no {MARKER}"
    if spec.sha256 is not None and lines[0].strip().lower() != spec.sha256.lower():
        return f"its {MARKER} is another archive's"
    recorded = dict(line.split(None, 1) for line in lines[1:] if len(line.split()) == 2)
    if not recorded:
        return ""
    files, size = _contents(target)
    if recorded != {"files": str(files), "bytes": str(size)}:
        was = [f"{int(v):,}" if v.isdigit() else v for v in (recorded.get("files", "?"), recorded.get("bytes", "?"))]
        return (
            f"it changed since floranet extracted it: {files:,} files of {size:,} bytes, "
            f"{was[0]} files of {was[1]} bytes when extracted"
        )
    return ""


def _contents(folder: Path) -> tuple[int, int]:
    """How many regular files are under ``folder`` and their total size, as :data:`MARKER` records them.

    Symbolic links are not followed; hidden and system entries (the marker, a .DS_Store that Finder adds, a NAS's
    @eaDir), which the doctor does not read either, are not counted.
    """
    files = size = 0
    for top, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not is_skipped_name(d)]
        for name in names:
            with contextlib.suppress(OSError):
                info = os.lstat(os.path.join(top, name))
                if stat.S_ISREG(info.st_mode) and not is_skipped_name(name):
                    files, size = files + 1, size + info.st_size
    return files, size


def _extract_budget(spec: DatasetSpec) -> int:
    """Bytes an archive's files may declare: four times the archive (its JPEGs hardly compress; at least 256 MiB),
    else 32 GiB."""
    return max(4 * spec.size, 256 << 20) if spec.size else 32 << 30


def _extract(archive: Path, spec: DatasetSpec, target: Path, digest: str, source: str, hint: str) -> None:
    """Extracts ``archive`` into a temporary sibling of ``target``, then renames it to ``target`` (which does not
    exist: nothing is ever replaced).

    Raises:
        DatasetError: The archive is unsafe, corrupt or not the set's (it is deleted).
        OutputError: The cache folder cannot be written (read-only, or the disk is full).
    """
    root = target.parent
    try:
        _extract_into(archive, spec, target, digest, source, hint)
    except OSError as e:
        raise OutputError(root, e) from None


def _extract_into(archive: Path, spec: DatasetSpec, target: Path, digest: str, source: str, hint: str) -> None:
    root = target.parent
    root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(root, spec.archive_root)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.archive_root}.extracting-", dir=root))
    try:
        (tmp / _IN_PROGRESS).touch()
        try:
            budget = _extract_budget(spec)
            with archives.open_capped(archive, budget) as tar:
                archives.safe_extractall(tar, tmp, max_bytes=budget)
        except archives.UNSAFE as e:
            archive.unlink(missing_ok=True)
            raise DatasetError(
                f"Refused to extract {archive} (from {source}): it contains an unsafe member ({e}); "
                "nothing was written outside the cache and the archive was not kept."
            ) from e
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
            archive.unlink(missing_ok=True)
            raise DatasetError(
                f"The archive {archive} downloaded from {source} is corrupt or truncated "
                f"({type(e).__name__}: {e}); it was not kept and nothing was extracted. {hint}"
            ) from e
        extracted = tmp / spec.archive_root
        if not extracted.is_dir():
            archive.unlink(missing_ok=True)
            raise DatasetError(
                f"The archive {archive} downloaded from {source} has no top-level folder "
                f"{spec.archive_root!r}; it is not the {spec.name} archive and was not kept."
            )
        files, size = _contents(extracted)
        (extracted / MARKER).write_text(f"{digest}\nfiles {files}\nbytes {size}\n", encoding="utf-8")
        if target.exists() or target.is_symlink():  # made meanwhile (the fetch lock keeps floranet out): not ours
            raise DatasetError(f"{target} appeared while {spec.name} was extracted; it was left untouched. Run again.")
        os.rename(extracted, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_leftovers(root: Path, archive_root: str) -> None:
    """Removes floranet's own temporary folders of extractions that were interrupted long ago.

    Only folders that carry :data:`_IN_PROGRESS` (written by :func:`_extract` when it creates them) go.
    """
    now = time.time()
    for p in root.glob(f".{archive_root}.extracting-*"):
        with contextlib.suppress(OSError):
            if (
                p.is_dir()
                and not p.is_symlink()
                and (p / _IN_PROGRESS).is_file()
                and now - p.stat().st_mtime > _STALE_AFTER_S
            ):
                shutil.rmtree(p, ignore_errors=True)
