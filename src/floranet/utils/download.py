"""Downloads that never hang: timeouts, resume, checksum, atomic rename.

Used for ImageNet weights and datasets. A partial download is kept as
``<dest>.part`` and resumed with an HTTP Range request when the server allows
it; the final file only appears (by rename) once its checksum matches.
"""

from __future__ import annotations

import hashlib
import math
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from floranet.errors import ConfigError, DownloadError, OutputError

CHUNK = 1 << 20
DEFAULT_TIMEOUT = 10.0


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """Returns the hex digest of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


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
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool = True,
    manual_hint: str = "",
) -> Path:
    """Downloads ``url`` to ``dest`` unless a verified copy is already there.

    Args:
        url: http(s) or file URL.
        dest: Final path. Parent folders are created.
        file_hash: Expected md5 or sha256 hex digest; checked before the file
            is renamed into place. A cached file that fails it is fetched again.
        timeout: Seconds allowed for connecting and for each read.
        progress: Show a progress bar on stderr.
        manual_hint: Appended to error messages, e.g. how to place the file by hand.

    Returns:
        The path of the verified file.

    Raises:
        DownloadError: The server is unreachable, the transfer failed, or the
            checksum does not match.
        ConfigError: ``url`` is not an http(s) or file URL, or ``timeout`` not a positive number.
        OutputError: ``dest``'s folder cannot be made.
    """
    _check_request(url, timeout)
    dest = Path(dest)
    if verify(dest, file_hash):
        return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file in the way, no permission
        raise OutputError(dest.parent, e) from None
    part = dest.with_name(dest.name + ".part")
    hint = f" {manual_hint}" if manual_hint else ""
    for attempt in range(2):
        offset = part.stat().st_size if part.exists() else 0
        try:
            _fetch(url, part, offset, timeout, progress)
        except urllib.error.HTTPError as e:
            if e.code == 416 and offset > 0 and attempt == 0:
                # The .part is already as long as the file (or longer, stale): the server
                # refuses the Range. Start over instead of failing on every later try.
                part.unlink(missing_ok=True)
                continue
            raise DownloadError(f"Could not download {url} to {dest}: {e.reason}.{hint}") from e
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)  # ValueError: a URL urllib cannot take apart ('http://[::1')
            raise DownloadError(f"Could not download {url} to {dest}: {reason}.{hint}") from e
        if verify(part, file_hash):
            os.replace(part, dest)
            return dest
        # A resumed file that fails its checksum may have a stale prefix: start over once.
        part.unlink(missing_ok=True)
        if attempt == 0 and offset > 0:
            continue
        break
    raise DownloadError(
        f"Checksum mismatch for {url}: expected {_algorithm_for(file_hash or '')} "
        f"{file_hash}. The file was not kept; try again.{hint}"
    )


def _check_request(url: str, timeout: float) -> None:
    """Refuses what urllib would fail on with a traceback: a URL that is not http(s) or file, a timeout that is
    not a positive number of seconds.

    Raises:
        ConfigError: One of those.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port  # raises on a bad port or IPv6 host
        scheme = parts.scheme.lower()
    except ValueError:
        scheme = ""
    if scheme not in ("http", "https", "file"):
        raise ConfigError(f"url must be an http(s):// or file:// URL. Received: url={url!r}")
    if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
        raise ConfigError(f"timeout must be a positive number of seconds. Received: timeout={timeout!r}")


def _fetch(url: str, part: Path, offset: int, timeout: float, progress: bool) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "floranet"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        status = getattr(response, "status", 200)
        if offset and status != 206:
            offset = 0  # server ignored the Range header: restart from scratch
        length = response.headers.get("Content-Length")
        total = int(length) + offset if length and length.isdigit() else None
        bar = _progress_bar(total, offset, part.name, progress)
        with open(part, "ab" if offset else "wb") as f:
            for chunk in iter(lambda: response.read(CHUNK), b""):
                f.write(chunk)
                bar.update(len(chunk))
        bar.close()
        if total is not None and part.stat().st_size < total:
            raise ConnectionError(
                f"connection closed after {part.stat().st_size} of {total} bytes "
                "(the partial file is kept and resumed on the next try)"
            )


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
    """Keras's cache folder (``$KERAS_HOME`` or ``~/.keras``) joined with ``subdir``."""
    base = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    if not os.access(os.path.dirname(base) or ".", os.W_OK) and not os.path.isdir(base):
        base = os.path.join("/tmp", ".keras")  # as Keras does on read-only homes
    return Path(base) / subdir
