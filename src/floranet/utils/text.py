"""Text that is safe to print or store: file names whose bytes are not UTF-8 shown as ``\\xNN``."""

from __future__ import annotations


def printable(text: str) -> str:
    """Undecodable file-name bytes (surrogate escapes) as ``\\xNN``, so JSON and terminals accept them."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that no file name produced
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")
