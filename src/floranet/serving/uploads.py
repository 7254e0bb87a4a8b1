"""Reading uploads safely: a bounded, timed body; the ``file`` field of a multipart form; a printable label."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

from fastapi import Request

_MAX_LABEL = 200
# What browsers percent-encode in a multipart file name (WHATWG's multipart/form-data encoding: only ", CR and LF;
# a "%" is sent as it is), so those three alone are decoded: "say %22hi%22.jpg" is the file say "hi".jpg.
_FORM_ESCAPES = {"%22": '"', "%0D": "\r", "%0A": "\n"}
_FORM_ESCAPE = re.compile("|".join(_FORM_ESCAPES))


class RequestError(Exception):
    """An error answered to the client as ``{"error": message}`` with ``status``."""

    def __init__(
        self, status: int, message: str, *, close: bool = False, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
        if close:  # the body was not (fully) read: the connection cannot be reused
            self.headers["Connection"] = "close"


async def read_body(request: Request, limit: int, timeout_s: float, hold: Callable[[int], None] | None = None) -> bytes:
    """Reads the request body asynchronously, at most ``limit`` bytes within ``timeout_s``.

    Args:
        request: The request.
        limit: The most bytes accepted.
        timeout_s: The time the whole body may take to arrive.
        hold: Called with each chunk's size as it arrives, before it is kept (the server's bytes budget:
            it raises to refuse the rest).

    Raises:
        RequestError: 413 (declared or counted size over the limit), 408
            (too slow), 400 (bad Content-Length or the client went away), or what ``hold`` raises.
    """
    from starlette.requests import ClientDisconnect

    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise RequestError(400, f"invalid Content-Length header: {declared[:40]!r}", close=True) from None
        if size > limit:
            raise RequestError(
                413, f"upload too large: {size:,} bytes declared; the limit is {limit:,} bytes", close=True
            )
    chunks: list[bytes] = []
    received = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit:
                    raise RequestError(
                        413, f"upload too large: more than {limit:,} bytes received (the limit)", close=True
                    )
                if hold is not None:
                    hold(len(chunk))
                chunks.append(chunk)
    except TimeoutError:
        raise RequestError(
            408, f"request body not received within {timeout_s:g} s ({received:,} bytes arrived)", close=True
        ) from None
    except ClientDisconnect:
        raise RequestError(400, "client disconnected before sending the whole body", close=True) from None
    return b"".join(chunks)


def extract_upload(content_type: str, body: bytes) -> tuple[str, bytes]:
    """(label, image bytes): the ``file`` field of a multipart body, else the body itself."""
    from python_multipart.multipart import parse_options_header

    mime, params = parse_options_header(content_type)
    if mime != b"multipart/form-data":
        return "upload", body
    boundary = params.get(b"boundary")
    if not boundary:
        raise RequestError(400, "multipart body without a boundary in its Content-Type")
    parts = _parse_multipart(boundary, body)
    fields = [(parse_options_header(disposition)[1], data) for disposition, data in parts]
    files = [(opts, data) for opts, data in fields if opts.get(b"name") == b"file"]
    if len(files) > 1:  # answering the first alone would look like every photo was answered
        raise RequestError(
            400, f"multipart upload has {len(files)} 'file' fields; /predict takes one image (several: /v2)"
        )
    if files:
        opts, data = files[0]
        # floranet's page sends the name again as a plain field, whose value is sent as it is: in the file part's
        # header "100%22.jpg" and '100".jpg' arrive alike.
        typed = [v for o, v in fields if o.get(b"name") == b"filename" and b"filename" not in o and len(v) <= 4096]
        if len(typed) == 1:
            return _label(typed[0].decode("utf-8", "replace"), escaped=False), data
        return _label(opts.get(b"filename", b"upload").decode("utf-8", "replace")), data
    names = sorted({opts.get(b"name", b"?").decode("utf-8", "replace")[:40] for opts, _ in fields})
    raise RequestError(
        400, "multipart upload has no 'file' field" + (f" (fields: {', '.join(names)})" if names else "")
    )


def _parse_multipart(boundary: bytes, body: bytes, max_parts: int = 16) -> list[tuple[bytes, bytes]]:
    """[(Content-Disposition value, data)] of each part, in memory (the body is already bounded)."""
    from python_multipart import MultipartParser
    from python_multipart.exceptions import MultipartParseError

    parts: list[tuple[bytes, bytes]] = []
    state: dict[str, Any] = {"field": b"", "value": b"", "headers": {}, "data": []}

    def on_part_begin() -> None:
        if len(parts) >= max_parts:
            raise RequestError(400, f"multipart upload has more than {max_parts} parts")
        state["headers"], state["data"], state["open"] = {}, [], True

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        state["data"].append(data[start:end])

    def on_part_end() -> None:
        parts.append((state["headers"].get(b"content-disposition", b""), b"".join(state["data"])))
        state["data"], state["open"] = [], False

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as e:
        raise RequestError(400, f"malformed multipart body: {e}") from None
    if state.get("open"):
        raise RequestError(400, "malformed multipart body: its last part has no closing boundary (cut short?)")
    return parts


def _label(filename: str, *, escaped: bool = True) -> str:
    """The last path component, printable, at most 200 characters (a label, never opened), with a browser's
    ``%22``, ``%0D`` and ``%0A`` decoded when ``escaped`` (a multipart header's file name; the line breaks are then
    dropped as every unprintable character is)."""
    if escaped:
        filename = _FORM_ESCAPE.sub(lambda m: _FORM_ESCAPES[m.group()], filename)
    name = PurePosixPath(filename.replace("\\", "/")).name
    name = "".join(ch for ch in name if ch.isprintable())
    return name[:_MAX_LABEL] or "upload"
