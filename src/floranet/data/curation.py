"""Leaving files out and relabelling them, without touching them: ``train --exclude`` and ``--relabel``.

floranet never moves, edits or deletes a user's image. A :class:`Curation` is applied to the list of
images before the split is made (or to a split read from ``--split-file``), and what was applied is
recorded in the run directory (``excluded.txt``, ``relabel.csv``).

* An exclude file is an ``audit.csv`` (its ``file`` column: edit it down to the rows you agree with; saved by a
  spreadsheet with ``;`` or tabs between fields too) or a plain list of paths relative to the data folder, one a
  line (``#`` starts a comment).
* A relabel file is a CSV of ``path,new_label`` (a header row is optional), or an ``audit.csv``, whose
  label issues are relabelled to their ``suggested_label``.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections import Counter
from collections.abc import Callable, Container, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath

from floranet.data.split import Split
from floranet.errors import ConfigError
from floranet.utils.files import read_capped
from floranet.utils.text import csv_text, formula_safe, printable, some_names, unquote_formula

AUDIT_FILE_COLUMN = "file"
AUDIT_SUGGESTED_COLUMN = "suggested_label"
AUDIT_KIND_COLUMN = "kind"
LABEL_ISSUE = "label_issue"
MAX_LIST_BYTES = 256 << 20  # an audit.csv of a million images is about 100 MB


def _read(path: str | os.PathLike[str], name: str) -> str:
    """The file's text; a file whose lines end in a lone CR (saved by Excel on an old Mac) as one ending in LF (the
    csv module stopped at its first line: 'new-line character seen in unquoted field')."""
    try:
        text = read_capped(path, MAX_LIST_BYTES).decode("utf-8-sig", errors="surrogateescape")
    except OSError as e:
        raise ConfigError(f"Cannot read the {name} file: {e.strerror or e}. Received: {name}={str(path)!r}") from e
    return text if "\n" in text else text.replace("\r", "\n")


def _delimiter(text: str, first_columns: tuple[str, ...]) -> str:
    """The CSV delimiter of a list: ``;`` or a tab where its header, split at one, begins with one of
    ``first_columns`` (an audit.csv re-saved by Excel in a locale whose list separator is ';', or as text), else
    ``,`` (such a file was read as one path a line, naming no file, and the run trained uncurated)."""
    first = text.split("\n", 1)[0]
    for delimiter in (";", "\t"):
        try:
            header = next(csv.reader([first], delimiter=delimiter), [])
        except csv.Error:  # no CSV at all: said by _csv_rows
            return ","
        if len(header) > 1 and header[0].strip() in first_columns:
            return delimiter
    return ","


def _csv_rows(
    text: str, source: str | os.PathLike[str], name: str, delimiter: str = ","
) -> list[tuple[int, list[str]]]:
    """Each CSV row of ``text`` with the line it ends on.

    Raises:
        ConfigError: ``text`` is no CSV (a binary file, say), naming the file and the line (a csv.Error's
            traceback, before).
    """
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    rows = []
    try:
        for row in reader:
            rows.append((reader.line_num, row))
    except csv.Error as e:  # its advice (open the file in universal-newline mode) is for the caller of csv
        raise ConfigError(
            f"{source} line {reader.line_num}: cannot be read as CSV ({str(e).split(' - ')[0]}); is it the list "
            f"you meant? Received: {name}={str(source)!r}"
        ) from None
    return rows


def _relative(text: str, source: str | os.PathLike[str], line: int, name: str) -> str:
    """A relative path as written, spaces around it included (a CSV field holds a name exactly; a file or folder
    may begin or end with a space): :meth:`Curation.resolved` tries it without them when no file has it. A
    backslash stays (a name may hold one); it is read as a separator only when no file has the literal name."""
    p = text.strip()
    slashed = PurePosixPath(_slashed(p))
    if not p or slashed.is_absolute() or ".." in slashed.parts:
        raise ConfigError(
            f"{source} line {line}: paths must be relative to the data folder. Received: {name} path={text!r}"
        )
    return str(PurePosixPath(text))


def _slashed(path: str) -> str:
    return path.replace("\\", "/")


def _forms(entry: str) -> Iterator[str]:
    """The names a list's entry may mean, in the order :meth:`Curation.resolved` tries them: as written, with ``/``
    for backslashes, without the quote floranet's CSV files put before a formula; each then without the spaces
    around it."""
    for text in (entry, entry.strip()):
        yield from (text, _slashed(text), unquote_formula(text), _slashed(unquote_formula(text)))


def _is_file(root: str, form: str) -> bool:
    relative = PurePosixPath(_slashed(form))
    return not relative.is_absolute() and ".." not in relative.parts and os.path.isfile(os.path.join(root, form))


def _new_label(text: str, source: str | os.PathLike[str], line: int, row: list[str], column: str) -> str:
    """A relabel target (``column`` of ``row``): a name a class folder could have (not empty, no separators,
    printable, not . or ..)."""
    label = unquote_formula(text.strip())  # as floranet's CSV files quote a name starting like a formula
    if not label:
        raise ConfigError(
            f"{source} line {line}: the {column} field is empty; fill in the label or delete the row. "
            f"Received: relabel row={row!r}"
        )
    if label in (".", "..") or "/" in label or "\\" in label or not label.isprintable():
        raise ConfigError(
            f"{source} line {line}: a new label must be a class name (no slashes, printable). "
            f"Received: new_label={text!r}"
        )
    return label


_COMMENT = re.compile(r"(?:^|(?<=\s))#")


def read_exclude(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """The relative paths an exclude file names (an ``audit.csv``'s ``file`` column, or one path a line).

    Raises:
        ConfigError: The file cannot be read, or a path is absolute or leaves the data folder.
    """
    text = _read(path, "exclude")
    delimiter = _delimiter(text, (AUDIT_FILE_COLUMN,))
    first = _csv_rows(text.split("\n", 1)[0], path, "exclude", delimiter)  # a spreadsheet quotes every field
    header = [c.strip() for c in first[0][1]] if first else []
    if AUDIT_FILE_COLUMN in header:
        column = header.index(AUDIT_FILE_COLUMN)
        rows = _csv_rows(text, path, "exclude", delimiter)[1:]
        paths = [(i, row[column] if len(row) > column else "") for i, row in rows]
    else:
        # A comment starts at a '#' that begins the line or follows a space: 'img#2.jpg' is a file name.
        # Spaces around a path are a hand-written list's layout, not the name's.
        paths = [(i, _COMMENT.split(ln, maxsplit=1)[0].strip()) for i, ln in enumerate(text.splitlines(), 1)]
    return tuple(dict.fromkeys(_relative(p, path, i, "exclude") for i, p in paths if p.strip()))


def read_relabel(path: str | os.PathLike[str]) -> dict[str, str]:
    """``{relative path: new label}`` from a ``path,new_label`` CSV or an ``audit.csv``'s label issues.

    Raises:
        ConfigError: Unreadable, a row without two fields, an empty label, or a bad path.
    """
    text = _read(path, "relabel")
    numbered = _csv_rows(text, path, "relabel", _delimiter(text, (AUDIT_FILE_COLUMN, "path")))
    lines, rows = [i for i, _ in numbered], [row for _, row in numbered]
    header = [c.strip() for c in rows[0]] if rows else []
    out = _Relabels(path)
    if AUDIT_FILE_COLUMN in header and AUDIT_SUGGESTED_COLUMN in header:  # an audit.csv: its label issues
        f, s, k = (
            header.index(c) if c in header else -1
            for c in (AUDIT_FILE_COLUMN, AUDIT_SUGGESTED_COLUMN, AUDIT_KIND_COLUMN)
        )
        for i, row in zip(lines[1:], rows[1:], strict=True):
            if not "".join(row).strip():
                continue  # a blank line, as editors leave at the end
            if len(row) <= max(f, s, k):
                raise ConfigError(
                    f"{path} line {i}: expected {len(header)} fields as in its header. Received: relabel row={row!r}"
                )
            if k < 0 or row[k].strip() == LABEL_ISSUE:
                label = _new_label(row[s], path, i, row, AUDIT_SUGGESTED_COLUMN)
                out.put(_relative(row[f], path, i, "relabel"), label, i)
        return out
    # A header as floranet writes it (path,new_label), or as a person would (file,label, any case).
    named = len(header) >= 2 and header[0].lower() in ("path", "file") and header[1].lower() in _LABEL_HEADERS
    start = 1 if named else 0
    for i, row in zip(lines[start:], rows[start:], strict=True):
        if not row or not "".join(row).strip():
            continue
        if len(row) != 2 or not row[1].strip():
            raise ConfigError(f"{path} line {i}: expected 'path,new_label'. Received: relabel row={row!r}")
        out.put(_relative(row[0], path, i, "relabel"), _new_label(row[1], path, i, row, "new_label"), i)
    return out


_LABEL_HEADERS = ("new_label", "label", "new label", "suggested_label")


class _Relabels(dict[str, str]):
    """The relabel file's rows by path, with the file and the line of each; a path given two different labels is
    refused with both lines (the last one used to win silently)."""

    def __init__(self, source: str | os.PathLike[str] = "the relabel file") -> None:
        super().__init__()
        self.source = source
        self.lines: dict[str, int | None] = {}
        self.written: dict[str, str] = {}

    def put(self, path: str, label: str, line: int | None, written: str | None = None) -> None:
        """Sets ``path``'s new label, from ``line`` of the file, where it was spelled ``written`` (default: so)."""
        written = path if written is None else written
        if path in self and self[path] != label:
            first, spelled = self.lines[path], self.written[path]
            lines = f" lines {first} and {line}" if first and line else ": two rows"
            also = "" if spelled == written else f" (written {spelled!r} and {written!r})"
            raise ConfigError(
                f"{self.source}{lines} give {path!r}{also} two labels, {self[path]!r} and {label!r}; keep one. "
                f"Received: relabel path={written!r}"
            )
        self[path], self.lines[path], self.written[path] = label, line, written

    def matched(self, match: Callable[[str], str]) -> _Relabels:
        """The rows keyed by the file ``match`` finds for each: two spellings of one file (``a/1.jpg`` and
        ``a\\1.jpg``, or with and without a formula's quote) with different labels are refused as above (the last
        one read used to win silently)."""
        out = _Relabels(self.source)
        for path, label in self.items():
            out.put(match(path), label, self.lines.get(path), self.written.get(path, path))
        return out


class _Files:
    """The files under ``root`` as a container of relative paths, each looked for on disk once."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.seen: dict[str, bool] = {}

    def __contains__(self, form: object) -> bool:
        if not isinstance(form, str):
            return False
        if form not in self.seen:
            self.seen[form] = _is_file(self.root, form)
        return self.seen[form]


@dataclass(frozen=True)
class Curation:
    """Files to leave out and labels to change, as read from ``--exclude`` and ``--relabel``.

    Attributes:
        exclude: Relative paths to leave out.
        relabel: ``{relative path: new label}``.
    """

    exclude: tuple[str, ...] = ()
    relabel: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, exclude: str | None, relabel: str | None) -> Curation:
        """Reads the two files (either may be None)."""
        return cls(read_exclude(exclude) if exclude else (), read_relabel(relabel) if relabel else {})

    def __bool__(self) -> bool:
        return bool(self.exclude or self.relabel)

    def resolved(self, paths: Sequence[str]) -> Curation:
        """The entries matched to ``paths`` (the data folder's files): an entry names the file of its literal
        name, else, written with backslashes (a list made on Windows), the file of its ``/`` form, else, with the
        quote floranet's CSV files put before a name a spreadsheet would run as a formula, the file without it;
        each of these, failing that, without the spaces around it (a hand-written list's).

        Raises:
            ConfigError: Two entries of the relabel file name one file, with different labels.
        """
        return self._matched(set(paths))

    def _matched(self, known: Container[str]) -> Curation:
        def match(entry: str) -> str:
            return next((form for form in _forms(entry) if form in known), entry)

        relabels = self.relabel if isinstance(self.relabel, _Relabels) else _Relabels()
        if relabels is not self.relabel:
            for path, label in self.relabel.items():
                relabels.put(path, label, None)
        return Curation(tuple(dict.fromkeys(match(p) for p in self.exclude)), relabels.matched(match))

    def check_found(self, data_dir: str | os.PathLike[str], exclude: str | None, relabel: str | None) -> None:
        """Refuses a list of which no path names a file of ``data_dir`` (as :meth:`resolved` matches them): an
        audit.csv of another data set, or a spreadsheet's re-save floranet reads otherwise than meant, was noted in
        one line and the run trained uncurated. ``exclude`` and ``relabel`` name the lists, for the message.

        Raises:
            ConfigError: Naming the list, how many paths it holds and one of them; or two entries of the relabel
                file name one file of ``data_dir``, with different labels.
        """
        root = os.fsdecode(os.fspath(data_dir))
        files = _Files(root)
        found = self._matched(files)  # two spellings of one file given two labels: said before the run folder too
        lists = (
            ("exclude", exclude, self.exclude, found.exclude),
            ("relabel", relabel, tuple(self.relabel), found.relabel),
        )
        for name, source, paths, matched in lists:
            if paths and not any(p in files for p in matched):
                raise ConfigError(
                    f"None of the {len(paths)} path(s) of the {name} file is a file of the data folder "
                    f"{printable(root)!r} (one: {printable(paths[0])!r}); is it the list of another folder, or saved "
                    f"otherwise than floranet writes it? Received: {name}={str(source)!r}"
                )

    def apply_items(self, items: Sequence[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
        """``(path, label, sha256)`` items without the excluded ones, relabelled."""
        gone = set(self.exclude)
        return [(p, self.relabel.get(p, lab), sha) for p, lab, sha in items if p not in gone]

    def apply_split(self, split: Split) -> Split:
        """A split (e.g. from ``--split-file``) without the excluded rows, relabelled; new labels become classes."""
        if not self:
            return split
        gone = set(self.exclude)
        rows = tuple(replace(r, label=self.relabel.get(r.path, r.label)) for r in split.rows if r.path not in gone)
        names = list(split.class_names) + sorted({r.label for r in rows} - set(split.class_names))
        return Split(rows=rows, class_names=tuple(names))

    def applied(self, paths: Container[str]) -> Curation:
        """The entries that change a split of ``paths``: exclusions of its files, relabels of those not excluded."""
        gone = tuple(p for p in self.exclude if p in paths)
        left_out = set(gone)
        return Curation(gone, {p: v for p, v in self.relabel.items() if p in paths and p not in left_out})

    def unmatched(self, paths: Sequence[str]) -> list[str]:
        """Notes naming the entries that change nothing: paths of no usable image of ``paths`` (a typo, a file gone
        or unusable since the audit), and relabels of files that are excluded too."""
        known, gone = set(paths), set(self.exclude)
        missing_ex = [p for p in self.exclude if p not in known]
        missing_re = [p for p in self.relabel if p not in known]
        both = [p for p in self.relabel if p in known and p in gone]
        kinds = (
            (missing_ex, "path(s) of the exclude file name no usable image"),
            (missing_re, "path(s) of the relabel file name no usable image"),
            (both, "relabel(s) not applied, as the file is excluded too"),
        )
        return [f"{len(found)} {what} ({some_names(found)})" for found, what in kinds if found]

    def class_changes(self, before: Sequence[str], after: Sequence[str]) -> list[str]:
        """Notes on classes the curation made or emptied, from every image's label ``before`` and ``after`` it
        (a typo in a relabel target makes a class; excluding a whole class drops it from the model)."""
        had, has = Counter(before), Counter(after)
        notes = [
            f"the relabel file makes a new class {name!r} ({has[name]} image(s)); if you meant an existing class, "
            "check its spelling"
            for name in sorted(set(has) - set(had))
        ]
        notes += [
            f"class {name!r} has no image left after --exclude/--relabel: the model will not know it"
            for name in sorted(set(had) - set(has))
        ]
        return notes

    def excluded_text(self) -> str:
        """``excluded.txt``: a one-column CSV (``file``), which ``--exclude`` reads back as it was (a path a line
        would lose names holding ' #' or a line break)."""
        return csv_text([(AUDIT_FILE_COLUMN,), *((formula_safe(p),) for p in self.exclude)])

    def relabel_text(self) -> str:
        """``relabel.csv``: ``path,new_label`` rows with a header."""
        rows = sorted(self.relabel.items())
        return csv_text([("path", "new_label"), *((formula_safe(p), formula_safe(v)) for p, v in rows)])
