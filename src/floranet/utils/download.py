"""Downloads that never hang: timeouts, resume, checksum, atomic rename.

Used for ImageNet weights and datasets. A partial download is kept as
``<dest>.part`` and resumed with an HTTP Range request when the server allows
it; the final file only appears (by rename) once its checksum matches.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import logging
import os
import re
import stat
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from floranet.errors import ConfigError, DownloadError, OutputError
from floranet.utils import locks, opener
from floranet.utils.files import current_umask, file_digest
from floranet.utils.opener import check_timeout, url_problem

log = logging.getLogger(__name__)

CHUNK = 1 << 20
DEFAULT_TIMEOUT = 10.0
# A transfer that brings fewer than MIN_BYTES in RATE_WINDOW_S seconds stops: a server trickling a byte at a time
# never trips the per-read timeout.
MIN_BYTES = 64 << 10
RATE_WINDOW_S = 60.0
# The status line and headers must be complete within this many timeouts of the request (connecting included):
# a server sending them a byte at a time never trips the per-read timeout, and the speed check starts with the body.
HEAD_TIMEOUTS = 3


def _algorithm_for(file_hash: str) -> str:
    # Keras publishes md5 (32 hex) for application weights; we use sha256 (64 hex).
    return {32: "md5", 64: "sha256"}.get(len(file_hash), "sha256")


def verify(path: Path, file_hash: str | None) -> bool:
    """True when ``path`` exists and matches ``file_hash`` (md5 or sha256 hex)."""
    if not path.is_file():
        return False
    if file_hash is None:
        return True
    return file_digest(path, _algorithm_for(file_hash)) == file_hash.lower()


def download(
    url: str,
    dest: str | os.PathLike[str],
    *,
    file_hash: str | None = None,
    size: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool = True,
    manual_hint: str = "",
) -> Path:
    """Downloads ``url`` to ``dest`` unless a verified copy is already there.

    One process at a time downloads a file (``.<name>.lock`` beside it; a second one waits, then finds it).

    Args:
        url: http(s) or file URL.
        dest: Final path. Parent folders are created.
        file_hash: Expected md5 or sha256 hex digest; checked before the file is renamed into place.
        size: Expected bytes, when known: a server that announces another size, or sends more, is refused at once
            (a mirror or captive portal streaming without end would otherwise fill the disk before the checksum).
        timeout: Seconds allowed for connecting and for each read; the status line and headers must be complete
            within :data:`HEAD_TIMEOUTS` times that, and a transfer slower than :data:`MIN_BYTES` in
            :data:`RATE_WINDOW_S` seconds stops too (the partial file is kept).
        progress: Show a progress bar on stderr.
        manual_hint: Appended to the messages of the network's failures (unreachable, timed out, cut off, an
            HTTP error, a web page instead of the file), e.g. how to place the file by hand; not to a checksum
            mismatch, a refused answer or any failure of a file:// URL.

    Returns:
        The path of the verified file.

    Raises:
        DownloadError: The server is unreachable, the transfer failed, was too slow or too large, the checksum
            does not match, or ``dest`` exists and is not the expected file (it is left as it is).
        ConfigError: ``url`` is not an ASCII http(s) or file URL, or ``timeout`` not a positive number of seconds
            of at most :data:`~floranet.utils.opener.MAX_TIMEOUT_S` (a day).
        OutputError: ``dest``'s folder cannot be made, or the file cannot be written (read-only, disk full).
    """
    check_request(url, timeout)
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file in the way, no permission
        raise OutputError(dest.parent, e) from None
    lock = dest.with_name(f".{dest.name}.lock")
    fd = locks.acquire(lock, what=f"the download of {dest}", wait=True, say=log.warning)
    try:
        # The hint may name the URL (where to download it by hand): never with its password.
        hint = f" {redacted_text(manual_hint, [urllib.parse.urlsplit(url).password])}" if manual_hint else ""
        return _download(url, dest, file_hash, size, timeout, progress, hint)
    finally:
        locks.release(lock, fd)


def _download(
    url: str, dest: Path, file_hash: str | None, size: int | None, timeout: float, progress: bool, hint: str
) -> Path:
    if verify(dest, file_hash):
        return dest
    shown = redacted(url)
    if dest.exists() or dest.is_symlink():  # floranet renames only verified files there: this is someone's
        raise DownloadError(
            f"{dest} exists but is not the expected file ({_describe(dest, file_hash)}; expected "
            f"{_algorithm_for(file_hash or '')} {file_hash}); it is left as it is. Move it away and run again."
        )
    # How to do without the network, for the network's failures alone (a file:// URL has none).
    hint = "" if urllib.parse.urlsplit(url).scheme.lower() == "file" else hint
    part = dest.with_name(dest.name + ".part")
    received = "nothing"
    for attempt in range(2):
        offset = part.stat().st_size if part.exists() and not part.is_symlink() else 0
        if offset and offset == size and _adopt(part, dest, file_hash):  # complete: a run killed before its rename
            return dest
        try:
            _fetch(url, part, offset, timeout, progress, size)
        except urllib.error.HTTPError as e:
            if e.code == 416 and offset > 0 and attempt == 0:
                # The .part is already as long as the file (or longer, stale): the server refuses the Range. Kept
                # if it is the file (checked above when the size is known), else started over instead of failing
                # on every later try.
                if size is None and file_hash is not None and _adopt(part, dest, file_hash):
                    return dest
                part.unlink(missing_ok=True)
                continue
            raise DownloadError(f"Could not download {shown} to {dest}: {e.reason}.{hint}") from e
        except _WrongRange:  # its bytes are not the rest of the partial file: start over (without a Range)
            part.unlink(missing_ok=True)
            continue
        except _Refused as e:
            part.unlink(missing_ok=True)
            raise DownloadError(f"Refused the download of {shown} to {dest}: {e}; nothing was kept.") from e
        except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError, OSError) as e:
            reason = getattr(e, "reason", None) or str(e) or type(e).__name__
            raise DownloadError(f"Could not download {shown} to {dest}: {reason}.{hint}") from e
        except ValueError as e:  # a URL urllib cannot take apart ('http://[::1')
            raise DownloadError(f"Could not download {shown} to {dest}: {e}.") from e
        received = _mismatch(part, file_hash)
        if not received:
            os.replace(part, dest)
            return dest
        # A resumed file that fails its checksum may have a stale prefix: start over once.
        part.unlink(missing_ok=True)
        if attempt == 0 and offset > 0:
            continue
        break
    expected = f"{size:,} bytes, " if size is not None else ""
    raise DownloadError(
        f"Checksum mismatch for {shown}: received {received}; expected {expected}{_algorithm_for(file_hash or '')} "
        f"{file_hash}. The file was not kept; try again."
    )


def _adopt(part: Path, dest: Path, file_hash: str | None) -> bool:
    """Renames ``part`` to ``dest`` when it has ``file_hash`` (any file, when none is expected); True when done."""
    if _mismatch(part, file_hash):
        return False
    os.replace(part, dest)
    return True


def _mismatch(path: Path, file_hash: str | None) -> str:
    """Empty when ``path`` has ``file_hash`` (or none is expected), else what it has: ``"N bytes, sha256 X"``."""
    if file_hash is None:
        return ""
    algorithm = _algorithm_for(file_hash)
    digest = file_digest(path, algorithm)
    return "" if digest == file_hash.lower() else f"{path.stat().st_size:,} bytes, {algorithm} {digest}"


def _describe(path: Path, file_hash: str | None) -> str:
    """Size and digest of ``path``, in the expected hash's algorithm (md5 for Keras's weights)."""
    if path.is_symlink():
        return "a symbolic link"
    algorithm = _algorithm_for(file_hash or "")
    try:
        return f"{path.stat().st_size:,} bytes, {algorithm} {file_digest(path, algorithm)}"
    except OSError as e:
        return f"unreadable: {e.strerror or e}"


def redacted(url: str) -> str:
    """``url`` without a password (messages are printed and logged)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # http://user:pw@[::1 (no closing bracket): its password is still hidden
        return redacted_text(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]  # as written: an IPv6 host keeps its brackets
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


# The ``user:password@`` of a URL anywhere in a text; the password runs to the last "@" before a "/" or a space,
# as urllib.parse takes it.
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/@:]*):[^\s/]*@")


def redacted_text(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` (another library's error message, say) with the password of every ``scheme://user:password@``
    in it, and each of ``secrets`` as written or percent-decoded, replaced by ``***``."""
    text = _USERINFO.sub(r"\g<head>:***@", text)
    for secret in filter(None, secrets):
        for form in sorted({secret, urllib.parse.unquote(secret)}, key=len, reverse=True):
            text = text.replace(form, "***")
    return text


def check_request(url: str, timeout: float) -> None:
    """Refuses what urllib would fail on with a traceback: a URL of :func:`url_problem`; a timeout that is not a
    positive number of seconds, at most a day (socket.settimeout raises OverflowError past about 9.2e9 s).

    Raises:
        ConfigError: One of those.
    """
    problem = url_problem(url)
    if problem:
        raise ConfigError(f"url {problem}. Received: url={redacted(url)!r}")
    check_timeout("timeout", timeout)


def env_url(name: str) -> str | None:
    """The URL the environment variable ``name`` gives (a mirror's base URL), stripped; None when it is unset or
    empty (``NAME=`` in a script or a CI file means "not set").

    Raises:
        ConfigError: The value has a :func:`url_problem`; the message names the variable (the download's own
            error named only the URL made from it).
    """
    value = os.environ.get(name, "").strip()
    problem = url_problem(value) if value else ""
    if problem:
        raise ConfigError(f"{name} {problem} (or unset, for the default). Received: {name}={redacted(value)!r}")
    return value or None


class _Refused(ValueError):
    """The server sends what cannot be the file asked for (more bytes than it has, or announces another size)."""


class _WebPage(OSError):
    """The server answered with a web page, not the file; a failed transfer (a partial file is kept)."""


class _WrongRange(Exception):
    """A 206 answer whose Content-Range does not start where the partial file ends."""


def _resumes_at(content_range: str | None, offset: int) -> bool:
    """Whether a 206's ``Content-Range`` (``bytes START-END/TOTAL``) starts at ``offset``."""
    found = re.fullmatch(r"\s*bytes\s+([0-9]{1,20})-[0-9]{1,20}/(?:[0-9]{1,20}|\*)\s*", content_range or "")
    return found is not None and int(found.group(1)) == offset


def _fetch(url: str, part: Path, offset: int, timeout: float, progress: bool, size: int | None) -> None:
    request = opener.request_for(url, **{"User-Agent": "floranet"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    with opener.open_url(request, timeout=timeout, head_deadline=HEAD_TIMEOUTS * timeout) as response:
        status = getattr(response, "status", 200)
        if response.headers.get_content_type() == "text/html":  # before a byte of it becomes the partial file
            raise _WebPage(
                f"the server sent a web page ({response.headers.get('Content-Type')}) instead of the file: a captive "
                "portal or a proxy that wants a login? Open the URL in a browser, then run again (nothing of the page "
                "was kept)"
            )
        if offset and status == 206 and not _resumes_at(response.headers.get("Content-Range"), offset):
            raise _WrongRange(response.headers.get("Content-Range"))
        if offset and status != 206:
            offset = 0  # server ignored the Range header: restart from scratch
        length = response.headers.get("Content-Length")
        # ASCII digits only, and not thousands of them: str.isdigit() takes "²", and int() refuses it (and any
        # number of over 4,300 digits) with a ValueError traceback.
        plain = length is not None and length.isascii() and length.isdigit() and len(length) <= 20
        total = int(length) + offset if plain and length else None
        if size is not None and total is not None and total != size:  # fewer: a truncated copy, or not the file
            raise _Refused(
                f"the server announces {total:,} bytes, {'more' if total > size else 'fewer'} than the file's {size:,}"
            )
        bar = _progress_bar(total, offset, part.name, progress)
        with _open_part(part, offset) as f:
            _copy(response, f, offset, size, bar)
        bar.close()
        expected = total if total is not None else size  # no Content-Length: the file's known size, if any
        if expected is not None and part.stat().st_size < expected:  # cut off: not a checksum mismatch
            raise ConnectionError(
                f"connection closed after {part.stat().st_size} of {expected} bytes "
                "(the partial file is kept and resumed on the next try)"
            )


def _open_part(part: Path, offset: int) -> Any:
    """The partial file for writing, never through a symbolic link (one planted in a shared cache would have the
    download written over its target)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if offset else os.O_TRUNC)
    try:
        return os.fdopen(os.open(part, flags, 0o666 & ~current_umask()), "ab" if offset else "wb")
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _Refused(f"{part} is a symbolic link (remove it)") from None
        raise OutputError(part, e) from None


def _copy(response: Any, f: Any, offset: int, size: int | None, bar: Any) -> None:
    """Copies the body as it arrives; stops past ``size`` bytes and below :data:`MIN_BYTES` a window."""
    received, window_start, window_bytes = offset, time.monotonic(), 0
    while chunk := response.read1(CHUNK):
        received += len(chunk)
        if size is not None and received > size:
            raise _Refused(f"the server sent more than the file's {size:,} bytes")
        try:
            f.write(chunk)
        except OSError as e:  # disk full, ...: not the network's fault
            raise OutputError(f.name, e) from None
        bar.update(len(chunk))
        window_bytes += len(chunk)
        if time.monotonic() - window_start >= RATE_WINDOW_S:
            if window_bytes < MIN_BYTES:
                raise TimeoutError(
                    f"the transfer was slower than {MIN_BYTES // 1024} KiB in {RATE_WINDOW_S:g} s (the partial file "
                    "is kept and resumed on the next try)"
                )
            window_start, window_bytes = time.monotonic(), 0


def _progress_bar(total: int | None, initial: int, name: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        desc=name,
        disable=not enabled,
        leave=False,
    )


def cache_dir(subdir: str) -> Path:
    """Keras's cache folder (``$KERAS_HOME`` or ``~/.keras``) joined with ``subdir``; on a home that cannot be
    written, a private folder of this user in the temporary folder.

    ``$KERAS_HOME`` is a choice: it is made (its parents too) and used, never swapped for another folder.

    Raises:
        OutputError: ``$KERAS_HOME`` cannot be made, or the private folder exists and is not this user's alone.
    """
    home = os.environ.get("KERAS_HOME")
    if home:
        try:
            os.makedirs(home, exist_ok=True)
        except OSError as e:  # a file in the way, no permission
            why = f"{e.strerror or e}; it is KERAS_HOME: set it to a folder you can write, or unset it"
            raise OutputError(home, OSError(e.errno, why)) from None
        return Path(home) / subdir
    base = os.path.join(os.path.expanduser("~"), ".keras")
    if not os.access(os.path.dirname(base) or ".", os.W_OK) and not os.path.isdir(base):
        base = _private_temp_folder()
    return Path(base) / subdir


def _private_temp_folder() -> str:
    """``/tmp/.keras-<uid>``, mode 0700 (Keras uses a shared ``/tmp/.keras``, where another user could plant a
    symbolic link to be written through, or a complete-looking data set to be trained on)."""
    path = os.path.join(tempfile.gettempdir(), f".keras-{os.getuid()}")
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    info = os.lstat(path)
    if (
        stat.S_ISLNK(info.st_mode)
        or not stat.S_ISDIR(info.st_mode)
        or info.st_uid != os.getuid()
        or info.st_mode & 0o077
    ):
        raise OutputError(path, PermissionError(errno.EPERM, "not a private folder of this user; remove it"))
    return path
