"""Writing an audit: ``audit.json``, ``audit.csv``, thumbnails, ``audit.html`` and the report's section.

``audit.csv`` has one row per flagged file: ``file, kind, score, given_label, suggested_label, other_file,
split`` (paths relative to the data folder; edit it down and pass it to ``floranet train --exclude``).
``audit.json`` holds the same rows plus the settings, counts, timings and, for every image, its label
quality, so rankings can be rebuilt without running the audit again.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from floranet.data import decode
from floranet.errors import DatasetError
from floranet.evaluation.audit import CSV_COLUMNS, KINDS, AuditResult
from floranet.rundir import RunDir
from floranet.utils.figures import image_grid
from floranet.utils.text import csv_text, formula_safe, html_text, map_strings, printable, utf8

GALLERY = {"label_issue": 20, "duplicate": 10, "outlier": 10}
THUMB = (160, 160)
JPEG_QUALITY = 85  # the galleries' captions stay sharp; the photos were JPEG to begin with
_TITLES = {
    "label_issue": "Likely wrong labels",
    "duplicate": "Near-duplicates (conflicts and leaks first)",
    "outlier": "Outliers (far from every class)",
}


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# Columns of names (the data's own, perhaps hostile): quoted for spreadsheets; --exclude/--relabel unquote them.
_NAME_COLUMNS = frozenset({"file", "given_label", "suggested_label", "other_file"})


def to_csv(result: AuditResult) -> str:
    def cell(column: str, value: Any) -> Any:
        return formula_safe(value) if column in _NAME_COLUMNS and isinstance(value, str) else value

    return csv_text([CSV_COLUMNS, *([cell(c, f.to_dict()[c]) for c in CSV_COLUMNS] for f in result.findings)])


def to_json(result: AuditResult, data_dir: Path) -> dict[str, Any]:
    """``audit.json``'s content; file names that are not UTF-8 have their odd bytes as ``\\xNN`` (strict UTF-8,
    as ``doctor.json``; ``audit.csv`` keeps the exact names that ``--exclude`` needs)."""
    data = result.data
    return map_strings(
        {
            **result.facts,
            "data_dir": str(data_dir),
            "findings": [f.to_dict() for f in result.findings],
            "label_quality": None  # not checked: no quality to rank by
            if result.facts.get("label_issues_skipped")
            else {
                p: round(float(q), 6)
                for p, q, c in zip(data.paths, result.label_quality, data.labels, strict=True)
                if data.class_names[c] not in (result.facts.get("label_check_left_out") or ())
            },
        },
        utf8,
    )


def write_audit(run: RunDir, result: AuditResult, data_dir: Path, max_pixels: int) -> None:
    """``audit.json``, ``audit.csv``, ``plots/audit_*.png`` and ``audit.html`` into ``run`` (thumbnails decoded
    within the run's ``max_pixels``)."""
    audit = to_json(result, data_dir)
    run.write_json(RunDir.AUDIT, audit)
    run.write_text(RunDir.AUDIT_CSV, to_csv(result))
    for group, n in GALLERY.items():
        _gallery(result, data_dir, group, n, run.plot(f"audit_{group}.png"), max_pixels)
    page = (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>floranet audit</title>"
        f"<style>{_CSS}</style></head><body><h1>floranet audit</h1>"
        f"<p class=muted>{html_text(data_dir.resolve())}</p>{audit_section(run, audit)}</body></html>"
    )
    run.write_text(RunDir.AUDIT_HTML, page)


def _group(result: AuditResult, group: str) -> list[Any]:
    if group == "duplicate":  # conflicts, then leaks, then the rest; most similar first in each
        rows = result.of_kind("duplicate_conflict", "duplicate_leak", "duplicate")
        return sorted(rows, key=lambda f: (KINDS.index(f.kind), -f.score))
    return result.of_kind(group)


def _gallery(result: AuditResult, data_dir: Path, group: str, n: int, path: Path, max_pixels: int) -> None:
    rows = _group(result, group)[:n]
    path.unlink(missing_ok=True)  # an older audit's picture must not outlive it
    images, titles = [], []
    for f in rows:
        files = [f.file, f.other_file] if group == "duplicate" else [f.file]
        try:
            pixels = [decode.decode_and_resize(str(data_dir / p), THUMB, max_pixels=max_pixels) for p in files]
        except DatasetError:
            continue
        for p, px in zip(files, pixels, strict=True):
            images.append(px)
            titles.append(_caption(f, p))
    if images:
        image_grid(images, titles, path, columns=4 if group == "duplicate" else 5)


def _caption(f: Any, shown: str) -> str:
    name = shown if len(shown) <= 34 else "…" + shown[-33:]
    if f.kind == "label_issue":
        return f"{name}\n{f.given_label} → {f.suggested_label}? ({f.score:.2f})"
    if f.kind == "outlier":
        return f"{name}\n{f.given_label}, outlier {f.score:.2f}"
    return f"{name}\n{f.kind.removeprefix('duplicate_') or 'dup'} {f.score:.3f}"


_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}"
    "table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ddd;padding:.25rem .6rem}"
    "th{background:#f4f4f4}img{max-width:100%;border:1px solid #eee}.muted{color:#666}"
    "td{overflow-wrap:anywhere}"  # a long file name wraps instead of widening the page
)


def audit_section(run: RunDir, audit: dict[str, Any] | None) -> str:
    """The report's "Data audit" section from ``audit.json`` as read (``audit``) and the run's pictures ("" when the
    run has none)."""
    if not audit:
        return ""
    counts = audit.get("counts", {})
    findings = audit.get("findings", [])
    parts = [
        "<h2>Data audit</h2>",
        f"<p>{audit.get('images', 0)} images audited from their backbone embeddings: "
        + ", ".join(f"{plural(counts.get(k, 0), k.replace('_', ' '))}" for k in KINDS)
        + f". Full list: <code>{RunDir.AUDIT_CSV}</code> (pass an edited copy to <code>floranet train --exclude</code>"
        " or a <code>path,new_label</code> file to <code>--relabel</code>; floranet never changes your files).</p>",
        "<p class=muted>Label issues: "
        + (
            f"<b>not checked</b>: {html_text(audit['label_issues_skipped'])}. "
            if audit.get("label_issues_skipped")
            else "cleanlab confident learning on out-of-fold probabilities of the head "
            f"({audit.get('folds')}-fold, on cached features)"
            + (
                f"; not checked in {html_text(', '.join(audit['label_check_left_out']))} (a class needs at least "
                "two distinct images). "
                if audit.get("label_check_left_out")
                else ". "
            )
        )
        + "Near-duplicates: cosine similarity of whitened embeddings "
        f">= {audit.get('duplicate_similarity')}"
        + (f" (this set's median pair + {audit['duplicate_z']:g} robust deviations)" if "duplicate_z" in audit else "")
        + f". Outliers: cleanlab's kNN outlier score, robust z > {audit.get('outlier_z')}.</p>",
    ]
    for group, title in _TITLES.items():
        rows = sorted(
            (f for f in findings if f["kind"].startswith(group)), key=lambda f: (KINDS.index(f["kind"]), -f["score"])
        )
        if not rows:
            continue
        parts.append(f"<h3>{html.escape(title)}: {len(rows)}</h3>")
        parts.append(_photos(run.plot(f"audit_{group}.png"), title))
        parts.append(_rows_table(rows[: GALLERY[group]]))
    return "".join(parts)


def _photos(path: Path, alt: str) -> str:
    """A gallery of photos for the page, embedded as JPEG: as PNG (its file in ``plots/``) the thumbnails were
    2.0 MB of a 3.0 MB report on 300 photos."""
    if not path.exists():
        return ""
    from PIL import Image

    buffer = io.BytesIO()
    with Image.open(path) as picture:
        picture.convert("RGB").save(buffer, "JPEG", quality=JPEG_QUALITY)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/jpeg;base64,{data}">'


def _rows_table(rows: list[dict[str, Any]]) -> str:
    cols = ("file", "kind", "score", "given_label", "suggested_label", "other_file", "split")
    head = "".join(f"<th>{c}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html_text(r.get(c, ''))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def summary(result: AuditResult, n: int = 10) -> str:
    """The printed top list: counts, then the ``n`` most suspect files of each kind."""
    counts = result.counts()
    lines = [
        f"Audited {len(result.data.paths)} images: " + ", ".join(plural(counts[k], k.replace("_", " ")) for k in KINDS)
    ]
    for kind in KINDS:
        rows = result.of_kind(kind)[:n]
        if rows:
            lines.append(f"{kind.replace('_', ' ')}s (top {len(rows)}):")
        for f in rows:  # names escaped here: a line break inside one would forge a line of this list
            extra = f" -> {printable(f.suggested_label)}?" if f.suggested_label else ""
            other = f"  ~ {printable(f.other_file)}" if f.other_file else ""
            lines.append(f"  {f.score:6.3f}  {printable(f.file)}  [{printable(f.given_label)}{extra}]{other}")
    return "\n".join(lines)
