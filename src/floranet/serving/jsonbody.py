"""The JSON part of an inference request: its size in Python objects bounded before it is parsed, the numbers
of its tensors checked, and its values written short in messages.

``json.loads`` holds the interpreter while it builds objects, and a thread cannot be stopped, so what a body
may make it build is counted first: values (by their commas) and lists and objects (by their ``[`` and ``{``).
A body's byte size does not bound them: 20 MB of nested empty lists are 10 million lists and no commas.
Characters inside strings build nothing, so they do not count: a request id or a (refused) BYTES text string
may hold any of them.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import sys
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from floranet.serving.uploads import RequestError

_QUOTE, _OPEN_LIST, _OPEN_OBJECT, _COMMA = b'"[{,'
_CHUNK = 1 << 20  # bytes scanned at once: bounds the scan's own memory
# Never in JSON outside strings (nor raw inside them), common in binary data.
_CONTROL, _CONTROL_BYTE = (
    re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"),
    re.compile(b"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"),
)


def load(raw: bytes, max_values: int | None = None, max_containers: int | None = None, whole_body: bool = False) -> Any:
    """``json.loads(raw)``, refused unparsed when it holds too much.

    Args:
        raw: The request's JSON (UTF-8, or the UTF-16/32 that ``json.loads`` also reads).
        max_values: The most commas outside strings (None: no limit).
        max_containers: The most lists and objects (None: no limit).
        whole_body: ``raw`` is the whole body (no Inference-Header-Content-Length said where the JSON ends):
            when binary data seems to follow the JSON, the message says that the header is missing.

    Raises:
        RequestError: 413 past a limit (naming it), 400 when ``raw`` is not JSON.
    """
    # Every [ { , of the text is also such a byte of raw, whatever its encoding: counting bytes is exact or
    # over, and cheap; only a body over a limit is counted exactly (outside strings) before being refused.
    commas, containers = raw.count(b","), raw.count(b"[") + raw.count(b"{")
    over = (max_values is not None and commas > max_values) or (
        max_containers is not None and containers > max_containers
    )
    try:
        encoding = json.detect_encoding(raw)
        text = raw.decode(encoding, "surrogatepass")  # as json.loads decodes bytes
    except UnicodeDecodeError as e:
        raise _not_json(e, raw, None, whole_body) from None
    if over:
        utf8 = raw if encoding.startswith("utf-8") else text.encode("utf-8", "surrogatepass")
        commas, containers = _count_outside_strings(utf8)
    if max_values is not None and commas > max_values:
        raise RequestError(
            413,
            f"the inference request's JSON holds {commas:,} or more values; the limit is {max_values:,} (send "
            "images as BYTES, or pixels as binary data)",
        )
    if max_containers is not None and containers > max_containers:
        raise RequestError(
            413,
            f"the inference request's JSON holds {containers:,} lists and objects; the limit is "
            f"{max_containers:,} (send images as BYTES, or pixels as binary data)",
        )
    try:
        return json.loads(text)
    except ValueError as e:
        raise _not_json(e, raw, text, whole_body) from None
    except RecursionError:
        raise RequestError(400, "the inference request's JSON is nested too deeply") from None


def _not_json(e: ValueError, raw: bytes, text: str | None, whole_body: bool) -> RequestError:
    """The 400 for a body ``json.loads`` refused (``text``: None when ``raw`` is not even text). Without the
    header, a JSON object followed by binary data is "Extra data" or not UTF-8 after the object's last ``}``: the
    message then says what is missing."""
    if isinstance(e, UnicodeDecodeError):
        # Binary data: nothing, or bytes with control characters, between a } and the undecodable byte.
        end = raw.rfind(b"}", 0, e.start) + 1
        binary = end > 0 and (end == e.start or _CONTROL_BYTE.search(raw, end, min(e.start, end + 4096)) is not None)
    elif isinstance(e, json.JSONDecodeError) and e.msg == "Extra data" and text is not None:
        binary = _CONTROL.search(text, e.pos, e.pos + 4096) is not None
    else:
        binary = False
    hint = (
        " (binary tensor data after the JSON needs the Inference-Header-Content-Length header: the JSON's length "
        "in bytes)"
        if whole_body and binary
        else ""
    )
    return RequestError(400, f"the inference request is not valid JSON: {e}{hint}")


def _count_outside_strings(utf8: bytes) -> tuple[int, int]:
    """Commas and ``[``/``{`` of UTF-8 JSON that are outside strings (none of them is part of a multibyte
    character). Linear, in numpy: ~0.15 s for 20 MB, without a Python object per string."""
    # A string's escapes are pairs read from the left: dropping every \\ and then every \" leaves exactly the
    # quotes that open or close strings. Past a backslash outside strings json.loads stops, so what follows it
    # is never built, however it is counted.
    plain = np.frombuffer(utf8.replace(b"\\\\", b"").replace(b'\\"', b""), np.uint8)
    counts = np.zeros(256, np.int64)
    inside = 0
    for start in range(0, len(plain), _CHUNK):
        part = plain[start : start + _CHUNK]
        # 1 from an opening quote up to its closing one: the running parity of the quotes.
        parity = np.bitwise_xor.accumulate((part == _QUOTE).view(np.uint8)) ^ inside
        inside = int(parity[-1])
        counts += np.bincount(part[parity == 0], minlength=256)
    return int(counts[_COMMA]), int(counts[_OPEN_LIST] + counts[_OPEN_OBJECT])


def number(n: int, grouping: bool = True) -> str:
    """``n`` for a message: ``1,234`` (``1234`` without ``grouping``), past 15 digits ``1.23e+45`` (a product
    of dimensions can have thousands of digits, and ``str`` refuses an int of more than 4,300)."""
    if abs(n) < 10**15:
        return f"{n:,}" if grouping else str(n)
    return f"{n:.2e}" if abs(n) < 10**300 else f"{'-' * (n < 0)}~1e+{int(math.log10(abs(n)))}"


def short(value: Any) -> str:
    """``value`` as JSON for a message, cut at 80 characters."""
    text = json.dumps(value) if not isinstance(value, (bytes, memoryview)) else "<bytes>"
    return text if len(text) <= 80 else text[:77] + "..."


def numbers(name: str, datatype: str, data: list[Any], array: np.ndarray) -> np.ndarray:
    """``array`` (``np.asarray(data)``) as numbers of ``datatype``'s kind: ints for UINT8, ints and floats for
    FP32 (one past 64 bits, which numpy keeps as an object, read as a float). JSON's true and false are not
    numbers, even among numbers (where numpy reads them as 1 and 0).

    Raises:
        RequestError: 400 naming the first element that is not such a number, or out of range.
    """
    integers = datatype == "UINT8"
    if array.dtype.kind in ("iu" if integers else "iuf") and bool not in map(type, _elements(data, array.ndim)):
        return array  # the type test runs in C: ~0.1 s for 5 million numbers
    kinds = (int,) if integers else (int, float)
    found = _first(data, array.ndim, lambda v: type(v) not in kinds)
    if found is not None:
        raise RequestError(
            400,
            f"input {name!r}: {datatype} data must hold {'integers' if integers else 'numbers'}. Received: "
            f"{short(found[1])} (element {found[0]})",
        )
    # All numbers, which numpy held as objects: an int past 64 bits (or ints past int64 of both signs).
    if integers:
        i, v = _first(data, array.ndim, lambda v: not 0 <= v <= 255) or (0, 0)
        raise RequestError(
            400, f"input {name!r}: UINT8 values must be in [0, 255]. Received: {number(v)} (element {i})"
        )
    try:
        return np.asarray(data, dtype=np.float64)
    except OverflowError:  # an int past a float's range (10**309)
        i, v = _first(data, array.ndim, lambda v: abs(v) > sys.float_info.max) or (0, 0)
        raise RequestError(400, f"input {name!r}: {datatype} value {number(v)} (element {i}) is out of range") from None


def _first(data: list[Any], ndim: int, bad: Callable[[Any], bool]) -> tuple[int, Any] | None:
    """The first element of ``data`` that is ``bad``, and its index in row-major order; None when none is."""
    return next(((i, v) for i, v in enumerate(_elements(data, ndim)) if bad(v)), None)


def _elements(data: list[Any], ndim: int) -> Iterable[Any]:
    """The elements of ``data``, a list nested ``ndim`` deep as numpy read it, in row-major order."""
    flat: Iterable[Any] = data
    for _ in range(ndim - 1):
        flat = itertools.chain.from_iterable(flat)
    return flat
