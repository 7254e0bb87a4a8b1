"""Dataset fetching (against a loopback HTTP server only) and the bundled sample."""

from __future__ import annotations

import hashlib
import io
import re
import socket
import tarfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from corpus import snapshot
from floranet.data import datasets
from floranet.data.datasets import MARKER, DatasetSpec
from floranet.errors import ConfigError, DatasetError, DownloadError, FloranetError

NAME = "testflowers"
ARCHIVE = "flower_photos.tgz"
HINT = "on a machine with internet and put it at"


# ---------------------------------------------------------------- helpers


def _jpeg(color: tuple[int, int, int], size: int = 24) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _tgz(entries: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tar.addfile(entry)
                continue
            name, data = entry
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _good_archive() -> bytes:
    entries: list[tarfile.TarInfo | tuple[str, bytes]] = [("flower_photos/LICENSE.txt", b"CC-BY 2.0\n")]
    for c, cls in enumerate(("daisy", "roses")):
        for i in range(4):
            entries.append((f"flower_photos/{cls}/{i:02d}.jpg", _jpeg((60 * c + 10 * i, 120, 200 - 30 * c))))
    return _tgz(entries)


GOOD = _good_archive()
GOOD_SHA = hashlib.sha256(GOOD).hexdigest()


@dataclass
class Server:
    body: bytes
    honour_range: bool = True
    cut_first_after: int | None = None  # first response: announce everything, send this much, hang up
    requests: list[str | None] = field(default_factory=list)  # the Range header of each GET
    url: str = ""


@contextmanager
def serve(body: bytes, **options: object) -> Iterator[Server]:
    """Serves ``body`` at /flower_photos.tgz on 127.0.0.1; honours ``Range: bytes=N-`` with 206."""
    state = Server(body, **options)  # type: ignore[arg-type]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            rng = self.headers.get("Range")
            state.requests.append(rng)
            if self.path != f"/{ARCHIVE}":
                self.send_error(404)
                return
            data, start = state.body, 0
            if rng and state.honour_range and rng.startswith("bytes=") and rng.endswith("-"):
                start = int(rng[len("bytes=") : -1])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            payload = data[start:]
            if state.cut_first_after is not None and len(state.requests) == 1:
                payload = payload[: state.cut_first_after]
                self.close_connection = True
            self.wfile.write(payload)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/{ARCHIVE}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def _use_spec(
    monkeypatch: pytest.MonkeyPatch, url: str, sha256: str | None = GOOD_SHA, size: int | None = len(GOOD)
) -> DatasetSpec:
    spec = DatasetSpec(name=NAME, url=url, sha256=sha256, size=size, archive_root="flower_photos")
    monkeypatch.setitem(datasets.DATASETS, NAME, spec)
    return spec


def _fetch(cache: Path, **kwargs: object) -> Path:
    return datasets.fetch(NAME, cache_dir=cache, progress=False, timeout=5.0, **kwargs)  # type: ignore[arg-type]


def _assert_good(root: Path, cache: Path) -> None:
    assert root == cache / "flower_photos"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["daisy", "roses"]
    assert len(list((root / "daisy").glob("*.jpg"))) == 4
    assert (root / MARKER).read_text().splitlines()[0] == GOOD_SHA
    assert (cache / ARCHIVE).read_bytes() == GOOD  # kept, verified
    assert not list(cache.glob(".flower_photos.*")) and not (cache / f"{ARCHIVE}.part").exists()


def _assert_nothing_extracted(cache: Path) -> None:
    assert not (cache / "flower_photos").exists()
    assert not list(cache.rglob(MARKER))
    assert not list(cache.glob(".flower_photos.*"))  # no temporary extraction folder left


# ---------------------------------------------------------------- download and cache


def test_fetch_extracts_marks_complete_and_then_uses_the_cache(tmp_path, monkeypatch):
    with serve(GOOD) as srv:
        _use_spec(monkeypatch, srv.url)
        root = _fetch(tmp_path)
        _assert_good(root, tmp_path)
        assert srv.requests == [None]
        assert _fetch(tmp_path) == root
        assert len(srv.requests) == 1  # the second call never touched the network


def test_incomplete_folder_is_left_alone_and_the_set_extracted_beside_it_offline(tmp_path, monkeypatch):
    with serve(GOOD) as srv:
        _use_spec(monkeypatch, srv.url)
        root = _fetch(tmp_path)
        (root / MARKER).unlink()  # as if the extraction had been interrupted (or done by hand)
        (root / "junk.txt").write_text("half-extracted leftovers")
        before = snapshot(root)
        said: list[str] = []
        beside = _fetch(tmp_path, say=said.append)
        assert len(srv.requests) == 1  # extracted from the verified archive, no download
    assert snapshot(root) == before  # every byte, mode and mtime of the folder floranet did not finish
    assert beside == tmp_path / "flower_photos-floranet" and (beside / MARKER).read_text().splitlines()[0] == GOOD_SHA
    assert len(list((beside / "daisy").glob("*.jpg"))) == 4
    assert said and "left exactly as it is" in said[0] and str(beside) in said[0]
    assert _fetch(tmp_path) == beside  # and the complete copy is found again next time


def test_a_foreign_folder_of_that_name_keeps_every_byte(tmp_path, monkeypatch):
    """As Keras's own get_file(untar=True) leaves it, relabelled by hand: floranet must not move or delete it."""
    mine = tmp_path / "flower_photos"
    (mine / "roses").mkdir(parents=True)
    (mine / "roses" / "mine.jpg").write_bytes(b"my photo")
    (mine / "LICENSE.txt").write_text("keras's copy")
    before = snapshot(mine)
    with serve(GOOD) as srv:
        _use_spec(monkeypatch, srv.url)
        got = _fetch(tmp_path)
    assert snapshot(mine) == before and got == tmp_path / "flower_photos-floranet"
    assert (got / MARKER).read_text().splitlines()[0] == GOOD_SHA


def test_marker_of_another_archive_version_is_kept_and_a_fresh_copy_made_beside(tmp_path, monkeypatch):
    with serve(GOOD) as srv:
        _use_spec(monkeypatch, srv.url)
        root = _fetch(tmp_path)
        (root / MARKER).write_text("0" * 64 + "\n")
        fresh = _fetch(tmp_path)
    assert fresh == tmp_path / "flower_photos-floranet"
    assert (root / MARKER).read_text().strip() == "0" * 64  # the old copy is untouched
    assert (fresh / MARKER).read_text().splitlines()[0] == GOOD_SHA


def test_a_damaged_copy_is_extracted_afresh_from_the_kept_archive_and_left_as_it_is(tmp_path, monkeypatch):
    """The module said a damaged extracted folder is re-extracted from the kept archive, but only the marker was
    looked at: with a class folder deleted and a photo truncated, fetch returned the damaged folder."""
    with serve(GOOD) as srv:
        _use_spec(monkeypatch, srv.url)
        root = _fetch(tmp_path)
        assert (root / MARKER).read_text().splitlines()[1:] == ["files 9", f"bytes {_bytes(root)}"]
        (root / ".DS_Store").write_bytes(b"Finder's")  # hidden and system files are not counted
        assert _fetch(tmp_path) == root
        (root / "daisy" / "00.jpg").write_bytes(b"cut")
        before = snapshot(root)
        said: list[str] = []
        fresh = _fetch(tmp_path, say=said.append)
        assert len(srv.requests) == 1  # from the archive kept beside it: no download
    assert fresh == tmp_path / "flower_photos-floranet" and len(list((fresh / "daisy").glob("*.jpg"))) == 4
    assert snapshot(root) == before  # the changed folder is the user's now: nothing in it is touched
    assert said and "it changed since floranet extracted it: 9 files of " in said[0]
    assert "left exactly as it is" in said[0]
    assert _fetch(tmp_path) == fresh
    # A marker written before the counts were kept (the digest alone) is trusted as it was.
    (fresh / MARKER).write_text(GOOD_SHA + "\n")
    assert _fetch(tmp_path) == fresh


def _bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and p.name != MARKER)


def test_interrupted_extraction_never_looks_complete(tmp_path, monkeypatch):
    def boom(tar: tarfile.TarFile, dest: Path, *, max_bytes: int) -> None:
        (dest / "flower_photos" / "daisy").mkdir(parents=True)
        (dest / "flower_photos" / "daisy" / "00.jpg").write_bytes(b"half")
        raise KeyboardInterrupt

    with serve(GOOD) as srv:
        _use_spec(monkeypatch, srv.url)
        monkeypatch.setattr(datasets.archives, "safe_extractall", boom)
        with pytest.raises(KeyboardInterrupt):
            _fetch(tmp_path)
        _assert_nothing_extracted(tmp_path)
        monkeypatch.undo()
        _use_spec(monkeypatch, srv.url)
        _assert_good(_fetch(tmp_path), tmp_path)


@pytest.mark.parametrize("known", ["nothing", "size"])
def test_truncated_archive_is_refused_and_not_kept(tmp_path, monkeypatch, known):
    with serve(GOOD[: len(GOOD) // 2]) as srv:
        _use_spec(monkeypatch, srv.url, sha256=None, size=len(GOOD) if known == "size" else None)
        with pytest.raises(FloranetError) as err:
            _fetch(tmp_path)
    msg = str(err.value)
    if known == "nothing":
        assert isinstance(err.value, DatasetError) and "corrupt or truncated" in msg and "not kept" in msg
    else:  # refused as the server announced it, before a byte was written
        assert isinstance(err.value, DownloadError)
        assert f"announces {len(GOOD) // 2:,} bytes, fewer than the file's {len(GOOD):,}; nothing was kept" in msg
    assert not (tmp_path / ARCHIVE).exists()
    _assert_nothing_extracted(tmp_path)


def test_truncated_archive_fails_the_checksum(tmp_path, monkeypatch):
    with serve(GOOD[:-100]) as srv:  # size unknown: only the checksum tells (else refused as too few bytes)
        _use_spec(monkeypatch, srv.url, size=None)
        with pytest.raises(DownloadError, match="Checksum mismatch"):
            _fetch(tmp_path)
    assert not (tmp_path / ARCHIVE).exists() and not (tmp_path / f"{ARCHIVE}.part").exists()
    _assert_nothing_extracted(tmp_path)


def test_wrong_checksum_is_an_error_and_the_file_is_not_kept(tmp_path, monkeypatch):
    tampered = _tgz([("flower_photos/daisy/x.jpg", _jpeg((1, 2, 3)))])
    with serve(tampered) as srv:
        _use_spec(monkeypatch, srv.url, size=None)
        with pytest.raises(DownloadError, match="Checksum mismatch.*not kept"):
            _fetch(tmp_path)
    assert not (tmp_path / ARCHIVE).exists() and not (tmp_path / f"{ARCHIVE}.part").exists()
    _assert_nothing_extracted(tmp_path)


@pytest.mark.parametrize("honour_range", [True, False])
def test_resumes_a_partial_download(tmp_path, monkeypatch, honour_range):
    half = len(GOOD) // 2
    (tmp_path / f"{ARCHIVE}.part").write_bytes(GOOD[:half])
    with serve(GOOD, honour_range=honour_range) as srv:
        _use_spec(monkeypatch, srv.url)
        root = _fetch(tmp_path)
    assert srv.requests == [f"bytes={half}-"]  # asked for the rest only; a 200 restarts cleanly
    _assert_good(root, tmp_path)


def test_a_dropped_connection_keeps_the_part_and_the_next_call_resumes(tmp_path, monkeypatch):
    cut = len(GOOD) // 3
    with serve(GOOD, cut_first_after=cut) as srv:
        _use_spec(monkeypatch, srv.url)
        with pytest.raises(DownloadError, match=HINT):
            _fetch(tmp_path)
        assert (tmp_path / f"{ARCHIVE}.part").stat().st_size == cut
        _assert_nothing_extracted(tmp_path)
        root = _fetch(tmp_path)
    assert srv.requests == [None, f"bytes={cut}-"]
    _assert_good(root, tmp_path)


def test_a_complete_or_stale_part_answered_416_starts_over(tmp_path, monkeypatch):
    (tmp_path / f"{ARCHIVE}.part").write_bytes(GOOD + b"stale tail")
    with serve(GOOD) as srv:
        _use_spec(monkeypatch, srv.url)
        root = _fetch(tmp_path)
    assert srv.requests == [f"bytes={len(GOOD) + 10}-", None]
    _assert_good(root, tmp_path)


def test_mirror_from_the_environment_and_url_argument(tmp_path, monkeypatch):
    with serve(GOOD) as srv:
        _use_spec(monkeypatch, "http://127.0.0.1:9/nowhere/" + ARCHIVE)  # never used
        monkeypatch.setenv(datasets.MIRROR_ENV, srv.url.rsplit("/", 1)[0] + "/")
        _assert_good(_fetch(tmp_path / "env"), tmp_path / "env")
        monkeypatch.delenv(datasets.MIRROR_ENV)
        _assert_good(_fetch(tmp_path / "arg", url=srv.url), tmp_path / "arg")
        assert len(srv.requests) == 2


def test_an_unusable_mirror_variable_is_named(tmp_path, monkeypatch):
    """An unusable FLORANET_DATASETS_URL was refused as 'url must be ...' naming the URL, not the variable."""
    _use_spec(monkeypatch, "http://127.0.0.1:9/nowhere/" + ARCHIVE)
    monkeypatch.setenv(datasets.MIRROR_ENV, "mirror.local/datasets")
    with pytest.raises(ConfigError, match=r"Received: FLORANET_DATASETS_URL='mirror.local/datasets'$"):
        _fetch(tmp_path)


def test_default_cache_is_the_keras_datasets_folder(keras_home, monkeypatch):
    with serve(GOOD) as srv:
        _use_spec(monkeypatch, srv.url)
        root = datasets.fetch(NAME, progress=False)
    _assert_good(root, keras_home / "datasets")


# ---------------------------------------------------------------- offline


def _closed_port() -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def _assert_manual_hint(msg: str, url: str, cache: Path) -> None:
    assert f"offline, download {url} {HINT} {cache / ARCHIVE}, or train on a folder-per-class" in msg
    assert "(floranet train DIR)" in msg  # fetch has no --data option: the hint named one


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--url", "notaurl"], "url must be an http.s.:// or file:// URL. Received: url='notaurl'"),
        (["--url", "http://[::1"], "Received: url='http://\\[::1'"),
        (["--url", "http://127.0.0.1:9/x.tgz", "--timeout", "-1"], "timeout must be a positive number"),
        (["--url", "http://127.0.0.1:9/x.tgz", "--timeout", "nan"], "Received: timeout=nan"),
        # socket.settimeout raised OverflowError (a traceback) past about 9.2e9 s.
        (["--url", "http://127.0.0.1:9/x.tgz", "--timeout", "1e10"], r"at most 86400 \(a day\). Received: timeout=1"),
        (["--url", "http://127.0.0.1:9/x.tgz", "--timeout", "1e308"], r"Received: timeout=1e\+308"),
    ],
)
def test_fetch_arguments_are_checked_not_tracebacks(tmp_path, capsys, args, match) -> None:
    from floranet.cli import main

    assert main(["fetch", "--cache-dir", str(tmp_path / "c"), *args]) == 2
    assert re.search(match, capsys.readouterr().err)
    assert not (tmp_path / "c").exists()  # refused before the cache folder was made (its lock made it)


def test_fetch_into_a_cache_dir_that_is_a_file_names_it(tmp_path, capsys) -> None:
    from floranet.cli import main

    (tmp_path / "afile").write_text("x")
    assert main(["fetch", "--cache-dir", str(tmp_path / "afile"), "--url", "http://127.0.0.1:9/x.tgz"]) == 2
    assert f"Cannot write {tmp_path / 'afile'}" in capsys.readouterr().err


def test_offline_closed_port_fails_fast_with_the_manual_hint(tmp_path, monkeypatch):
    url = f"http://127.0.0.1:{_closed_port()}/{ARCHIVE}"
    _use_spec(monkeypatch, url)
    start = time.monotonic()
    with pytest.raises(DownloadError) as err:
        _fetch(tmp_path)
    assert time.monotonic() - start < 30
    _assert_manual_hint(str(err.value), url, tmp_path)
    _assert_nothing_extracted(tmp_path)


def test_stalled_server_times_out_with_the_manual_hint(tmp_path, monkeypatch):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)  # accepts connections (backlog) and never answers
    try:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/{ARCHIVE}"
        _use_spec(monkeypatch, url)
        start = time.monotonic()
        with pytest.raises(DownloadError) as err:
            datasets.fetch(NAME, cache_dir=tmp_path, progress=False, timeout=1.0)
        elapsed = time.monotonic() - start
    finally:
        sock.close()
    assert elapsed < 30
    assert "timed out" in str(err.value)
    _assert_manual_hint(str(err.value), url, tmp_path)
    _assert_nothing_extracted(tmp_path)


# ---------------------------------------------------------------- unsafe archives


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


@pytest.mark.parametrize("data_filter", [True, False], ids=["filter=data", "fallback"])
@pytest.mark.parametrize(
    "evil",
    [
        ("../evil", b"x"),
        ("flower_photos/../../evil", b"x"),
        _symlink("flower_photos/daisy/evil", "../../../../evil"),
    ],
    ids=["dotdot", "nested-dotdot", "symlink-out"],
)
def test_malicious_archive_is_refused_and_nothing_escapes(tmp_path, monkeypatch, data_filter, evil):
    if data_filter and not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python has no tarfile data filter")
    monkeypatch.setattr(datasets.archives, "HAS_DATA_FILTER", data_filter)
    archive = _tgz([("flower_photos/daisy/a.jpg", _jpeg((9, 9, 9))), evil])
    cache = tmp_path / "a" / "b" / "cache"
    with serve(archive) as srv:
        _use_spec(monkeypatch, srv.url, sha256=hashlib.sha256(archive).hexdigest(), size=None)
        with pytest.raises(DatasetError, match="unsafe member.*not kept"):
            _fetch(cache)
    assert not list(tmp_path.rglob("*evil*"))
    assert not (cache / ARCHIVE).exists()
    _assert_nothing_extracted(cache)


def test_fallback_refuses_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.archives, "HAS_DATA_FILTER", False)
    archive = _tgz([("flower_photos/daisy/a.jpg", b"x"), (str(tmp_path / "abs-evil"), b"x")])
    with serve(archive) as srv:
        _use_spec(monkeypatch, srv.url, sha256=None, size=None)
        with pytest.raises(DatasetError, match="unsafe member"):
            _fetch(tmp_path / "cache")
    assert not (tmp_path / "abs-evil").exists()


def test_archive_without_the_expected_root_is_refused(tmp_path, monkeypatch):
    archive = _tgz([("other/daisy/a.jpg", _jpeg((1, 1, 1)))])
    with serve(archive) as srv:
        _use_spec(monkeypatch, srv.url, sha256=None, size=None)
        with pytest.raises(DatasetError, match="no top-level folder 'flower_photos'"):
            _fetch(tmp_path)
    assert not (tmp_path / ARCHIVE).exists()
    _assert_nothing_extracted(tmp_path)


# ---------------------------------------------------------------- names and the bundled sample


def test_unknown_dataset_name_lists_the_valid_names():
    with pytest.raises(ConfigError) as err:
        datasets.fetch("x")
    assert str(err.value) == "Unknown dataset: 'x'. Valid names: flower_photos, mini_flowers. Received: name='x'"
    assert isinstance(err.value, ValueError) and isinstance(err.value, FloranetError)


def test_flower_photos_spec_is_the_published_archive():
    spec = datasets.DATASETS["flower_photos"]
    assert spec.url == "https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz"
    assert spec.sha256 == "4c54ace7911aaffe13a365c34f650e71dd5bf1be0a58b464e5a7183e3e595d9c"
    assert spec.size == 228_813_984
    assert spec.archive_name == ARCHIVE and spec.archive_root == "flower_photos"


def test_mini_flowers_is_bundled_small_and_readable():
    root = datasets.mini_flowers_path()
    assert datasets.fetch("mini_flowers") == root
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert classes == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    assert sorted(p.name for p in root.iterdir() if p.is_file()) == ["SOURCE.md"]  # top level: no images
    files = sorted(p for p in root.rglob("*") if p.is_file())
    assert sum(p.stat().st_size for p in files) < 3_000_000
    for cls in classes:
        entries = sorted((root / cls).iterdir())
        assert len(entries) == 60 and all(p.suffix == ".jpg" for p in entries)
        for p in entries:
            with Image.open(p) as im:
                assert im.format == "JPEG" and max(im.size) <= 160
                im.load()
    source = (root / "SOURCE.md").read_text(encoding="utf-8")
    assert "CC-BY 2.0" in source and "scripts/make_mini_flowers.py" in source
