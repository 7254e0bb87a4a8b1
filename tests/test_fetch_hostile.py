"""Downloads and archives as hostile input: endless or trickling servers, broken HTTP, planted links, files of the
user's in the way, concurrent fetches, and archives that are bombs or not plain files (loopback servers only)."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import tarfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

import httpserver
from floranet.data import archives, datasets
from floranet.errors import ConfigError, DatasetError, DownloadError, OutputError
from floranet.utils import download
from test_datasets import ARCHIVE, GOOD, NAME, _assert_good, _fetch, _tgz, _use_spec, serve


@contextmanager
def raw_server(respond) -> Iterator[str]:
    """A loopback server whose every connection is handed to ``respond(conn)`` (anything HTTP or not)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            threading.Thread(target=_answer, args=(conn,), daemon=True).start()

    def _answer(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            with suppress(OSError):
                respond(conn, stop)

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/{ARCHIVE}"
    finally:
        stop.set()
        sock.close()


def _endless(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
    while not stop.is_set():
        conn.sendall(b"\0" * 65536)


def _trickle(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
    while not stop.is_set():
        conn.sendall(b"x")
        time.sleep(0.05)


def test_a_server_that_never_stops_sending_is_cut_at_the_files_size(tmp_path, monkeypatch) -> None:
    """No size limit: the .part grew past the archive's known size until the disk was full."""
    with raw_server(_endless) as url:
        _use_spec(monkeypatch, url)
        with pytest.raises(DownloadError, match=f"sent more than the file's {len(GOOD):,} bytes; nothing was kept"):
            _fetch(tmp_path)
    assert not list(tmp_path.glob("*.part"))


def test_a_server_announcing_more_than_the_file_is_refused_at_once(tmp_path, monkeypatch) -> None:
    with serve(GOOD + b"\0" * 5000) as srv:
        _use_spec(monkeypatch, srv.url)
        with pytest.raises(DownloadError, match=f"announces {len(GOOD) + 5000:,} bytes, more than the file's"):
            _fetch(tmp_path)


def test_a_server_announcing_fewer_bytes_than_the_file_is_refused_as_clearly(tmp_path, monkeypatch) -> None:
    """A Content-Length under the known size was taken: its bytes downloaded, then a bare 'Checksum mismatch'."""

    def short(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\n" + GOOD)

    with raw_server(short) as url:
        _use_spec(monkeypatch, url)
        with pytest.raises(DownloadError, match=f"announces 100 bytes, fewer than the file's {len(GOOD):,}; nothing"):
            _fetch(tmp_path)
    assert not list(tmp_path.glob("*.part"))


def test_a_checksum_mismatch_shows_what_was_received_and_no_offline_hint(tmp_path, monkeypatch) -> None:
    """The message gave no evidence (only the expected digest), and told an online user what to do offline."""
    bad = bytearray(GOOD)
    bad[-1] ^= 1
    got = hashlib.sha256(bad).hexdigest()
    with serve(bytes(bad)) as srv:
        spec = _use_spec(monkeypatch, srv.url)
        with pytest.raises(DownloadError) as err:
            _fetch(tmp_path)
    msg = str(err.value)
    assert f"Checksum mismatch for {srv.url}: received {len(GOOD):,} bytes, sha256 {got}; " in msg
    assert f"expected {len(GOOD):,} bytes, sha256 {spec.sha256}. The file was not kept" in msg
    assert "offline" not in msg and "machine with internet" not in msg


def test_a_file_url_that_fails_gets_no_offline_hint(tmp_path, monkeypatch) -> None:
    """The hint "If this machine is offline, download ..." followed the failure of a file:// URL (no network)."""
    _use_spec(monkeypatch, (tmp_path / "missing" / ARCHIVE).as_uri())
    with pytest.raises(DownloadError, match="Could not download file://") as err:
        _fetch(tmp_path / "cache")
    assert "offline" not in str(err.value)


@pytest.mark.parametrize("size_known", [True, False])
def test_a_complete_part_left_by_a_kill_before_the_rename_is_kept(tmp_path, monkeypatch, size_known) -> None:
    """A .part as long as the file (a run killed just before its rename) was deleted and downloaded again when the
    server answered its Range request with 416, as servers do past the end."""
    (tmp_path / f"{ARCHIVE}.part").write_bytes(GOOD)
    with serve(GOOD) as srv:
        _use_spec(monkeypatch, srv.url, size=len(GOOD) if size_known else None)
        root = _fetch(tmp_path)
    # Size known: checked before any request. Unknown: checked when the server says the range is past the end.
    assert srv.requests == ([] if size_known else [f"bytes={len(GOOD)}-"])
    _assert_good(root, tmp_path)


def test_a_part_of_the_files_size_but_other_bytes_is_downloaded_afresh(tmp_path, monkeypatch) -> None:
    (tmp_path / f"{ARCHIVE}.part").write_bytes(b"x" * len(GOOD))
    with serve(GOOD) as srv:
        _use_spec(monkeypatch, srv.url)
        root = _fetch(tmp_path)
    assert srv.requests == [f"bytes={len(GOOD)}-", None]  # 416, then from the start
    _assert_good(root, tmp_path)


def test_a_trickling_server_stops_with_the_part_kept(tmp_path, monkeypatch) -> None:
    """A byte every 50 ms never trips the per-read timeout: the transfer ran on for ever."""
    monkeypatch.setattr(download, "RATE_WINDOW_S", 0.5)
    monkeypatch.setattr(download, "MIN_BYTES", 1024)
    with raw_server(_trickle) as url:
        _use_spec(monkeypatch, url, size=None)
        start = time.monotonic()
        with pytest.raises(DownloadError, match="slower than 1 KiB in 0.5 s .the partial file is kept"):
            _fetch(tmp_path)
    assert time.monotonic() - start < 5 and (tmp_path / f"{ARCHIVE}.part").exists()


def test_a_body_cut_short_without_a_length_keeps_the_part(tmp_path, monkeypatch) -> None:
    """An HTTP/1.0 body with no Content-Length that ended early was called a checksum mismatch and the partial
    file deleted, though the file's size is known; with a length it was kept and resumed."""

    def cut(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n" + GOOD[:500])  # then the connection closes

    with raw_server(cut) as url:
        _use_spec(monkeypatch, url)
        with pytest.raises(DownloadError, match=f"connection closed after 500 of {len(GOOD)} bytes .the partial"):
            _fetch(tmp_path)
    assert (tmp_path / f"{ARCHIVE}.part").stat().st_size == 500


@pytest.mark.parametrize("length", ["\u00b2", "9" * 5000], ids=["superscript-two", "5000-digits"])
def test_a_content_length_that_is_no_plain_number_is_no_length(tmp_path, monkeypatch, length) -> None:
    """str.isdigit() took "²" (and 5,000 digits) for a length, and int() then raised a ValueError traceback."""

    def odd(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: " + length.encode("latin-1") + b"\r\n\r\n" + GOOD)

    with raw_server(odd) as url:
        _use_spec(monkeypatch, url)
        assert _fetch(tmp_path).is_dir()  # the body is the archive: read to its end, checked by its sha256


@pytest.mark.parametrize(
    "answer",
    [b"garbage\r\n\r\n", b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 150 + b"\r\n", b"HTTP/1.1 200 " + b"x" * 70000],
    ids=["bad-status-line", "too-many-headers", "line-too-long"],
)
def test_broken_http_is_a_download_error_and_the_demo_falls_back(tmp_path, monkeypatch, answer) -> None:
    """http.client's own exceptions escaped as tracebacks, and the demo crashed instead of using its sample."""
    from floranet.workflows import demo

    with raw_server(lambda conn, stop: conn.sendall(answer)) as url:
        _use_spec(monkeypatch, url)
        with pytest.raises(DownloadError, match="Could not download"):
            _fetch(tmp_path)
        monkeypatch.setenv("FLORANET_DATASETS_URL", url.rsplit("/", 1)[0])
        monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
        path, offline = demo._data(None, lambda _: None)
    assert offline and path == datasets.mini_flowers_path()


def test_a_planted_link_at_the_partial_file_is_never_written_through(tmp_path, monkeypatch) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / f"{ARCHIVE}.part").symlink_to(victim)
    with serve(GOOD) as srv:
        _use_spec(monkeypatch, srv.url)
        with pytest.raises(DownloadError, match="is a symbolic link"):
            _fetch(cache)
    assert victim.read_text() == "precious"


def test_a_file_of_the_users_at_the_archives_place_is_named_and_kept(tmp_path, monkeypatch) -> None:
    """It was replaced silently online, and offline the hint told the user to put the file where it already was."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / ARCHIVE).write_bytes(b"my own archive")
    with serve(GOOD) as srv:
        _use_spec(monkeypatch, srv.url)
        with pytest.raises(DownloadError, match=r"exists but is not the expected file \(14 bytes, sha256 [0-9a-f]{64}"):
            _fetch(cache)
    assert (cache / ARCHIVE).read_bytes() == b"my own archive"


def test_two_fetches_at_once_both_get_the_set(tmp_path, monkeypatch) -> None:
    """Two fetches appended to one partial file (a verified archive changed after its check) or failed to move
    their copies into the same place."""
    with serve(GOOD) as srv:
        _use_spec(monkeypatch, srv.url)
        results: list[object] = []
        threads = [threading.Thread(target=lambda: results.append(_fetch(tmp_path))) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results == [tmp_path / "flower_photos"] * 3
    _assert_good(tmp_path / "flower_photos", tmp_path)


def test_a_server_sending_its_headers_a_byte_at_a_time_is_cut_at_the_deadline(tmp_path, monkeypatch) -> None:
    """Each byte restarted the per-read timeout and the speed check starts with the body: a server sending its
    headers a byte every 2 s kept fetch and demo waiting for ever."""

    def drip(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-A: ")
        for _ in range(200):  # 10 s of headers, then the archive: it was downloaded after the wait
            if stop.is_set():
                return
            conn.sendall(b"a")
            time.sleep(0.05)
        conn.sendall(b"\r\nContent-Length: %d\r\n\r\n" % len(GOOD) + GOOD)

    with raw_server(drip) as url:
        _use_spec(monkeypatch, url)
        with pytest.raises(DownloadError, match=r"no complete response \(status line and headers\) within 0.9 s"):
            datasets.fetch(NAME, cache_dir=tmp_path, progress=False, timeout=0.3)
    assert not (tmp_path / ARCHIVE).exists() and not (tmp_path / f"{ARCHIVE}.part").exists()


def test_a_fetch_waiting_for_another_says_so_once(tmp_path, monkeypatch) -> None:
    """A second fetch of the same set waited on the first one's lock without a word."""
    from floranet.utils import locks

    monkeypatch.setattr(locks, "WAIT_NOTICE_S", 0.05)
    lock = tmp_path / ".flower_photos.lock"
    fd = locks.acquire(lock, what="a test holding the fetch")
    said: list[str] = []
    with serve(GOOD) as srv:
        _use_spec(monkeypatch, srv.url)
        waiting = threading.Thread(target=lambda: _fetch(tmp_path, say=said.append))
        waiting.start()
        for _ in range(200):
            if said:
                break
            time.sleep(0.05)
        locks.release(lock, fd)
        waiting.join()
    assert said == [
        f"Waiting for another floranet process (pid {os.getpid()}) to finish the fetch of testflowers "
        f"into {tmp_path} (lock file {lock})."
    ]
    _assert_good(tmp_path / "flower_photos", tmp_path)


def test_a_web_page_instead_of_the_archive_is_said_and_never_kept(tmp_path, monkeypatch) -> None:
    """A captive portal's 52-byte page (200, text/html, no length) was kept as the .part, 'resumed' on the next
    try, and blamed on a dropped connection."""
    page = b"<html><body>Please log in to the Wi-Fi</body></html>"

    def portal(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + page)

    part = tmp_path / f"{ARCHIVE}.part"
    with raw_server(portal) as url:
        _use_spec(monkeypatch, url)
        with pytest.raises(DownloadError, match=r"sent a web page \(text/html; charset=utf-8\) instead of the file"):
            _fetch(tmp_path)
        assert not part.exists()
        part.write_bytes(GOOD[:500])  # an earlier try's partial file: kept as it was
        with pytest.raises(DownloadError, match="a captive portal or a proxy that wants a login"):
            _fetch(tmp_path)
    assert part.read_bytes() == GOOD[:500]


def test_a_resume_answered_from_another_offset_starts_over(tmp_path, monkeypatch) -> None:
    """A 206 whose Content-Range starts at 0 (not where the .part ends) was appended to the .part."""
    answers = [
        b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-%d/%d\r\n" % (len(GOOD) - 1, len(GOOD)),
        b"HTTP/1.1 200 OK\r\n",
    ]

    def wrong_range(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(answers.pop(0) + b"Content-Length: %d\r\n\r\n" % len(GOOD) + GOOD)

    (tmp_path / f"{ARCHIVE}.part").write_bytes(GOOD[:500])
    with raw_server(wrong_range) as url:
        _use_spec(monkeypatch, url)
        root = _fetch(tmp_path)
    assert answers == []
    _assert_good(root, tmp_path)


def _tar_of(members: list[tarfile.TarInfo]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for m in members:
            tar.addfile(m, io.BytesIO(b"x" * m.size) if m.isfile() else None)
    return buf.getvalue()


def _member(name: str, size: int = 1, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.linkname, info.mode = (size if kind == tarfile.REGTYPE else 0), kind, link, 0o644
    return info


@pytest.mark.parametrize(
    ("members", "why"),
    [
        ([_member("flower_photos/a.jpg"), _member("flower_photos/a.jpg")], "appears twice"),
        ([_member("flower_photos/r/a.jpg"), _member("flower_photos/r/../r/a.jpg")], "appears twice"),
        (
            [_member("flower_photos/a"), _member("flower_photos/a/b.jpg")],
            "is under, or is, a name the archive also has",
        ),
        ([_member("flower_photos/roses/x.jpg", kind=tarfile.SYMTYPE, link="../../flower_photos.tgz")], "is a link"),
        ([_member("flower_photos/up", kind=tarfile.SYMTYPE, link="..")], "is a link"),
        ([_member("flower_photos/big.bin", size=4 * 40_000 + 1)], "more than the 160,000 bytes"),
        # These failed at extraction as an OutputError on the cache folder, and the archive was kept.
        ([_member("flower_photos/a.jpg"), _member("")], "'' is a file without a name"),
        ([_member("flower_photos/a.jpg"), _member("flower_photos/..")], "'flower_photos/..' is a file without a name"),
        ([_member("flower_photos/" + "/".join(["d" * 200] * 30) + "/x.jpg")], "at a path longer than 4,000 bytes"),
    ],
    ids=[
        "duplicate",
        "duplicate-through-dotdot",
        "file-and-folder",
        "link-to-the-archive",
        "link-up",
        "bomb",
        "no-name",
        "dot-name",
        "path-too-long",
    ],
)
def test_archives_with_links_clashes_or_too_much_data_are_refused(tmp_path, monkeypatch, members, why) -> None:
    body = _tar_of(members)
    with serve(body) as srv:
        spec = _use_spec(monkeypatch, srv.url, sha256=hashlib.sha256(body).hexdigest(), size=None)
        monkeypatch.setattr(datasets, "_extract_budget", lambda s: 4 * 40_000 if s is spec else 0)
        with pytest.raises(DatasetError, match=f"unsafe member.*{why}"):
            _fetch(tmp_path)
    assert not (tmp_path / "flower_photos").exists() and not (tmp_path / ARCHIVE).exists()


def test_names_that_differ_only_in_case_are_refused_where_the_disk_folds_case(tmp_path, monkeypatch) -> None:
    """roses/a.jpg and Roses/A.jpg are one file on macOS's and Windows' disks: the second replaced the first without
    a word. Where the disk tells them apart (Linux), both are extracted."""
    from floranet.data import archives

    assert archives.folds_case(tmp_path) is False  # this machine's disk tells them apart
    assert not list(tmp_path.iterdir())  # the probe is gone
    members = [_member("flower_photos/roses/a.jpg"), _member("flower_photos/Roses/A.jpg")]
    buf = io.BytesIO(_tar_of(members))
    with tarfile.open(fileobj=buf) as tar:
        assert len(archives.checked_members(tar, 100, dest=tmp_path)) == 2
    monkeypatch.setattr(archives, "folds_case", lambda folder: True)  # as on such a disk
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tar, pytest.raises(archives.UnsafeMember, match="differ only in case"):
        archives.checked_members(tar, 100, dest=tmp_path)


def test_a_dot_folder_as_tar_c_dir_dot_writes_is_not_extracted_over_the_destination(tmp_path, monkeypatch) -> None:
    dot = _member("./", kind=tarfile.DIRTYPE)
    dot.mode = 0o000  # were it applied to the extraction folder, nothing more could be written there
    body = _tar_of([dot, _member("./flower_photos/a/x.jpg"), _member("./flower_photos/b/y.jpg")])
    with serve(body) as srv:
        _use_spec(monkeypatch, srv.url, sha256=hashlib.sha256(body).hexdigest(), size=None)
        root = _fetch(tmp_path)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["a", "b"]


def test_an_archive_of_too_many_members_stops_at_the_bound(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(archives, "MAX_MEMBERS", 5)
    body = _tgz([(f"flower_photos/d/{i}.jpg", b"x") for i in range(8)])
    with serve(body) as srv:
        _use_spec(monkeypatch, srv.url, sha256=hashlib.sha256(body).hexdigest(), size=None)
        with pytest.raises(DatasetError, match="more than 5 members"):
            _fetch(tmp_path)


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT], ids=["gnu-long-name", "pax"])
def test_a_huge_name_header_is_refused_before_it_is_read_whole(tmp_path, monkeypatch, fmt) -> None:
    """tarfile reads a GNU long-name or pax header whole, before any member check: a 300 MiB name in a 1.4 MB
    archive held 2.5 GB of memory. Now no read of the decompressed stream may exceed archives.MAX_READ."""
    monkeypatch.setattr(archives, "MAX_READ", 64 << 10)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=fmt) as tar:
        tar.addfile(_member("flower_photos/" + "a" * (200 << 10)), io.BytesIO(b"x"))
    body = buf.getvalue()
    with serve(body) as srv:
        _use_spec(monkeypatch, srv.url, sha256=hashlib.sha256(body).hexdigest(), size=None)
        with pytest.raises(DatasetError, match=r"unsafe member \(a header or name of [\d,]+ bytes \(more than 65,536"):
            _fetch(tmp_path)
    assert not (tmp_path / "flower_photos").exists() and not (tmp_path / ARCHIVE).exists()


def test_a_member_name_no_file_system_takes_is_named_not_blamed_on_the_cache(tmp_path, monkeypatch) -> None:
    """A 300-byte file name failed at extraction as 'Cannot write <cache>: File name too long' (an OutputError
    on the cache folder, and the archive kept, so every rerun failed the same way)."""
    body = _tgz([("flower_photos/roses/" + "r" * 300 + ".jpg", b"x")])
    with serve(body) as srv:
        _use_spec(monkeypatch, srv.url, sha256=hashlib.sha256(body).hexdigest(), size=None)
        with pytest.raises(DatasetError, match="has a name part longer than 255 bytes"):
            _fetch(tmp_path)
    assert not (tmp_path / ARCHIVE).exists()


class _Usage:
    total, used, free = 100 << 30, 99 << 30, 1 << 30


def test_too_little_disk_space_is_said_before_the_download(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(datasets.shutil, "disk_usage", lambda p: _Usage())
    with serve(GOOD) as srv:
        _use_spec(monkeypatch, srv.url, size=10 << 30)
        with pytest.raises(OutputError, match=r"MiB free, testflowers needs about 20,544 MiB"):
            _fetch(tmp_path)
        assert srv.requests == []


def test_urls_with_spaces_or_passwords_are_refused_or_hidden(tmp_path) -> None:
    with pytest.raises(ConfigError, match="url must be ASCII without spaces"):
        download.download("http://127.0.0.1:1/a b.tgz", tmp_path / "x")
    with pytest.raises(DownloadError) as e:
        download.download("http://user:secret@127.0.0.1:1/x.tgz", tmp_path / "x", timeout=2)
    assert "secret" not in str(e.value) and "user:***@127.0.0.1:1" in str(e.value)


def test_a_mirror_with_a_password_is_asked_with_it_and_never_shows_it(tmp_path, monkeypatch) -> None:
    """urllib took ``user:password@`` for part of the host name ("Name or service not known"), so such a mirror never
    worked; and the offline hint after the redacted URL repeated it with its password."""
    import base64

    body = b"weights" * 100
    with httpserver.serve({"/m/w.bin": body}, redirects={"/m/moved": "/m/w.bin"}) as srv:
        url = srv.url.replace("http://", "http://alice:S3cret%40x@") + "/m/w.bin"
        got = download.download(url, tmp_path / "w.bin", file_hash=hashlib.sha256(body).hexdigest(), timeout=5)
        assert got.read_bytes() == body
        assert srv.authorizations == ["Basic " + base64.b64encode(b"alice:S3cret@x").decode()]
        # Not carried on by a redirect (its target may be another host).
        download.download(url.replace("/w.bin", "/moved"), tmp_path / "v.bin", timeout=5)
        assert srv.authorizations[1:] == ["Basic " + base64.b64encode(b"alice:S3cret@x").decode(), None]
    monkeypatch.setenv("FLORANET_DATASETS_URL", "http://alice:S3cret@127.0.0.1:1/m")
    monkeypatch.setattr(datasets, "_check_space", lambda *a: None)
    with pytest.raises(DownloadError) as e:
        datasets.fetch("flower_photos", cache_dir=tmp_path / "cache", timeout=2, progress=False)
    assert "S3cret" not in str(e.value) and str(e.value).count("alice:***@127.0.0.1:1/m/") == 2, str(e.value)


def test_the_temporary_cache_is_private_to_its_user(tmp_path, monkeypatch) -> None:
    """On a home that cannot be written, everyone shared /tmp/.keras: another user's planted link or data set."""
    monkeypatch.setattr(download.tempfile, "gettempdir", lambda: str(tmp_path))
    path = Path(download._private_temp_folder())
    assert path == tmp_path / f".keras-{os.getuid()}" and (path.stat().st_mode & 0o777) == 0o700
    path.chmod(0o777)
    with pytest.raises(OutputError, match="not a private folder of this user"):
        download._private_temp_folder()


def test_a_keras_home_is_made_where_it_is_set_or_named(tmp_path, monkeypatch) -> None:
    """A KERAS_HOME whose parent did not exist was silently replaced by /tmp/.keras-<uid>."""
    home = tmp_path / "new" / "deeper" / "keras"
    monkeypatch.setenv("KERAS_HOME", str(home))
    assert download.cache_dir("datasets") == home / "datasets" and home.is_dir()
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "afile" / "keras"))
    with pytest.raises(OutputError, match=f"Cannot write {tmp_path / 'afile' / 'keras'}: .*it is KERAS_HOME"):
        download.cache_dir("datasets")


def test_a_redirect_is_followed_to_http_only(tmp_path) -> None:
    """urllib follows a redirect to ftp:// by itself: a hostile server could send floranet to an inner host."""
    body = b"weights" * 100
    digest = hashlib.sha256(body).hexdigest()
    with httpserver.serve({"/w.bin": body}, redirects={"/moved": "/w.bin", "/ftp": "ftp://127.0.0.1:1/w.bin"}) as srv:
        got = download.download(f"{srv.url}/moved", tmp_path / "w.bin", file_hash=digest, timeout=5)
        assert got.read_bytes() == body
        with pytest.raises(DownloadError, match="refused a redirect to ftp:// URL"):
            download.download(f"{srv.url}/ftp", tmp_path / "x.bin", file_hash=digest, timeout=5)
    assert not (tmp_path / "x.bin").exists()
