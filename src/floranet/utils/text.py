"""Text that is safe to print: what a file name (or any untrusted string) shows on a terminal or in a table; and
figures shown so that an imperfect score never reads as a perfect one (:func:`figure_text`).

Bytes that are not UTF-8 (surrogate escapes) show as ``\\xNN``; control characters (C0, DEL, C1: newlines,
tabs, escape sequences) and the invisible bidirectional overrides show as ``\\xNN`` / ``\\uNNNN``, so a file name
can neither forge lines nor move the cursor nor reorder what is shown.
"""

from __future__ import annotations

import csv
import html
import io
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

# C0 controls, DEL, C1 controls, the line and paragraph separators (str.splitlines breaks at them), and the bidi
# marks, embeddings, overrides and isolates: (first, last) code points. The one list: the serve page's script
# escapes the same characters, from UNSAFE_CLASS.
UNSAFE_RANGES = (
    (0x00, 0x1F),
    (0x7F, 0x9F),
    (0x061C, 0x061C),
    (0x200E, 0x200F),
    (0x2028, 0x2029),
    (0x202A, 0x202E),
    (0x2066, 0x2069),
)
# A regular-expression character class of them spelled in \uNNNN escapes, which Python's re and JavaScript read alike.
UNSAFE_CLASS = "[" + "".join(f"\\u{a:04x}" + (f"-\\u{b:04x}" if b > a else "") for a, b in UNSAFE_RANGES) + "]"
_UNSAFE = re.compile(UNSAFE_CLASS)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def utf8(text: str) -> str:
    """``text`` as valid UTF-8: bytes of a file name that are not UTF-8 (surrogate escapes) as ``\\xNN``, the
    rest as is (for JSON and Parquet, which escape or store control characters themselves)."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that no file name produced
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def quoted(text: str) -> str:
    """``repr(text)``, for a file name in a message, with the bytes of a name that are not UTF-8 as ``\\xNN``, as
    :func:`utf8` shows them (``repr`` shows their surrogate escapes as ``\\udcNN``): ``'bad\\xfe.jpg'``. A real
    backslash stays doubled."""
    return _REPR_SURROGATE.sub(_byte_escape, repr(text))


# In a repr, an odd run of backslashes before "udc80".."udcff": the last one starts a surrogate's escape (a
# backslash of the text itself is doubled).
_REPR_SURROGATE = re.compile(r"(?<!\\)((?:\\\\)*)\\udc([89a-f][0-9a-f])")


def _byte_escape(match: re.Match[str]) -> str:
    return f"{match.group(1)}\\x{match.group(2)}"


def same_under(names: Iterable[str], key: Callable[[str], str]) -> Iterator[tuple[str, str]]:
    """Each name whose ``key`` equals an earlier, different name's, as ``(that earlier name, it)``: names that a
    view made with ``key`` (a table, an export's UTF-8) would show as one."""
    seen: dict[str, str] = {}
    for name in names:
        first = seen.setdefault(key(name), name)
        if first != name:
            yield first, name


def map_strings(obj: Any, fn: Callable[[str], str]) -> Any:
    """``obj`` (JSON-like: dicts, lists, strings, numbers) with every string, keys included, through ``fn`` (e.g.
    :func:`utf8` or :func:`printable`, for a JSON file that must be strict UTF-8)."""
    if isinstance(obj, str):
        return fn(obj)
    if isinstance(obj, dict):
        return {map_strings(k, fn): map_strings(v, fn) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [map_strings(v, fn) for v in obj]
    return obj


def printable(text: str) -> str:
    """``text`` with undecodable bytes as ``\\xNN`` and control or bidi characters escaped."""
    return _UNSAFE.sub(_escape, utf8(text))


def some_names(names: Sequence[str], n: int = 3) -> str:
    """Up to ``n`` names (:func:`printable`), then ``...``: what one line of a message shows of a longer list."""
    shown = ", ".join(printable(name) for name in names[:n])
    return shown + (", ..." if len(names) > n else "")


def html_text(text: object) -> str:
    """``text`` for an HTML page: :func:`printable` first (a name's line break, control or bidi character would
    forge a line or reverse what follows, as in a terminal), then HTML-escaped."""
    return html.escape(printable(str(text)))


# The format specs figure_text rounds down near 1: a fixed number of decimals, or a percentage.
_FIXED_SPEC = re.compile(r"\.(\d+)([f%])")


def figure_text(value: float, spec: str) -> str:
    """``format(value, spec)`` for a figure such as ``".1%"`` or ``".3f"``, except that a value below 1 never shows
    as 1: it is rounded down at the shown precision where rounding to nearest would reach 1 (1999 right answers of
    2000 showed "100.0%", a perfect score; now "99.9%"). Other specs and values are formatted as they are."""
    match = _FIXED_SPEC.fullmatch(spec)
    if match is None or not value < 1:
        return format(value, spec)
    digits = int(match[1]) + (2 if match[2] == "%" else 0)  # decimals of the value itself
    if value < 1 - 0.5 * 10.0**-digits:  # rounds below 1 already
        return format(value, spec)
    return format(math.floor(value * 10**digits) / 10**digits, spec)


# What a spreadsheet takes as the start of a formula (OWASP, "CSV injection"): a cell of a file or class name
# starting so gets a leading quote.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def formula_safe(text: str) -> str:
    """A CSV cell of a name that a spreadsheet shows as text, never runs: one starting with ``= + - @`` (or a tab
    or carriage return) gets a leading ``'``, which spreadsheets hide and do not save back; so does one that
    already starts with quotes before such a character (``'=a``), so that :func:`unquote_formula` gives every
    name back as it was."""
    return "'" + text if _formula_behind_quotes(text) else text


def unquote_formula(text: str) -> str:
    """``text`` without the quote :func:`formula_safe` added (a ``'`` followed by a formula's first character,
    possibly behind further quotes)."""
    return text[1:] if text[:1] == "'" and _formula_behind_quotes(text) else text


def _formula_behind_quotes(text: str) -> bool:
    rest = text.lstrip("'")
    return bool(rest) and rest[0] in FORMULA_STARTS


def csv_text(rows: Iterable[Sequence[object]]) -> str:
    """CSV text, each row a line ending in ``\n``. A row with a carriage return in a field (a file may be named
    so) has every field quoted: with ``\n`` line ends the csv module quotes a ``\n`` by itself, not a ``\r``,
    and an unquoted ``\r`` makes the file unreadable. Read it back without newline translation."""
    buf = io.StringIO(newline="")
    plain = csv.writer(buf, lineterminator="\n")
    quoted = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)
    for row in rows:
        (quoted if any("\r" in str(v) for v in row) else plain).writerow(row)
    return buf.getvalue()
