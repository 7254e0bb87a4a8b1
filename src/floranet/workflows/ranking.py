"""A comparison's results: each backbone's entry, their ranking (runs trained on other data apart), the Markdown
table ``floranet compare`` prints and the self-contained HTML page it writes."""

from __future__ import annotations

import html
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from floranet.utils.text import printable

# How the files floranet compare writes start: only such a comparison.json / comparison.html is replaced by a later
# comparison into the same folder (a file of the user's of that name is never written over).
TABLE_MARK = b'{\n  "runtime": '  # to_dict's first key, as utils.files.write_json indents it
PAGE_MARK = b"<title>floranet compare</title>"


@dataclass
class Entry:
    """One backbone's result (``skipped`` holds the reason when it was not trained; ``not_ranked`` how its data
    differs from the ranked runs', when it was trained on other classes or validation images)."""

    backbone: str
    weights: str
    run_dir: str | None = None
    accuracy: float | None = None
    ece: float | None = None
    size_bytes: int | None = None
    train_s: float | None = None
    latency_ms_batch1: float | None = None
    latency_ms_batch32: float | None = None
    skipped: str | None = None
    classes: list[str] | None = None
    val_images: int | None = None
    not_ranked: str | None = None


@dataclass
class Comparison:
    """The ranked entries, the runtime every latency ran on, and the files written."""

    entries: list[Entry]
    runtime: str
    out: Path
    settings: dict[str, Any] = field(default_factory=dict)

    def ranked(self) -> list[Entry]:
        """The ranked runs, best first, then those not ranked (other data), then the skipped backbones."""
        done = sorted((e for e in self.entries if e.skipped is None), key=_order)
        apart = [e for e in done if e.not_ranked is not None]
        return [e for e in done if e.not_ranked is None] + apart + [e for e in self.entries if e.skipped is not None]

    def ranks(self) -> list[str]:
        """Each of :meth:`ranked`'s rank as shown: ``2`` and ``2=`` for runs of the same accuracy and ECE (they were
        ranked 2 and 3 by the order of --backbones), ``not ranked`` (other data), ``-`` (skipped)."""
        ranked = self.ranked()
        keys = [_order(e) for e in ranked if e.skipped is None and e.not_ranked is None]  # first, in order
        out = []
        for e in ranked:
            if e.skipped is not None or e.not_ranked is not None:
                out.append("-" if e.skipped is not None else "not ranked")
            else:
                key = _order(e)
                out.append(f"{keys.index(key) + 1}{'=' if keys.count(key) > 1 else ''}")
        return out

    def other_data(self) -> str:
        """What the table says of the runs it does not rank ("" when every trained run is ranked)."""
        apart = [e for e in self.entries if e.skipped is None and e.not_ranked is not None]
        if not apart:
            return ""
        return (
            "Not ranked, trained on other data than the ranked runs (the data folder changed between them; a new "
            "--out compares every backbone on it as it is now): "
            + "; ".join(f"{e.backbone}: {e.not_ranked}" for e in apart)
            + "."
        )

    def table(self) -> str:
        """The ranking as a Markdown table (what ``floranet compare`` prints)."""
        head = "| rank | backbone | weights | accuracy | ECE | size | train time | batch 1 | batch 32 |"
        lines = [head, "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
        for rank, e in zip(self.ranks(), self.ranked(), strict=True):
            if e.skipped is not None:
                skipped = f"skipped: {_cell(e.skipped)}"
                lines.append(f"| - | {_cell(e.backbone)} | {_cell(e.weights)} | {skipped} | | | | | |")
                continue
            lines.append(
                f"| {rank} | {_cell(e.backbone)} | {_cell(e.weights)} | {_num(e.accuracy, '.4f')} | "
                f"{_num(e.ece, '.4f')} | "
                f"{(e.size_bytes or 0) / 2**20:.1f} MiB | {_num(e.train_s, '.0f')} s | "
                f"{_num(e.latency_ms_batch1, '.2f')} ms | {_num(e.latency_ms_batch32, '.1f')} ms |"
            )
        lines.append(f"\nLatency: median of warm calls on {self.runtime}, this machine.")
        if self.other_data():
            lines.append(self.other_data())
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "settings": self.settings,
            "ranking": [{"rank": rank, **asdict(e)} for rank, e in zip(self.ranks(), self.ranked(), strict=True)],
        }


def _cell(text: str) -> str:
    """A Markdown table cell of a name or reason: a ``|`` in it (a weights file ``w|x.h5``) escaped, so it ends no
    cell, and control characters shown as ``\\xNN`` (the table is printed), so it breaks no row."""
    return printable(text).replace("|", "\\|")


def _num(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _order(e: Entry) -> tuple[float, float]:
    """Best first: the higher validation accuracy, then the lower ECE."""
    return (-(e.accuracy or 0.0), e.ece if e.ece is not None else 1.0)


def mark_other_data(entries: list[Entry]) -> list[str]:
    """Marks the trained runs whose classes or number of validation images differ from the ranked runs' as not
    ranked (a finished run reused after the data folder lost a class, or images: its accuracy answers another
    question), and returns what is said of each.

    The ranked runs are those of the class set and validation count most runs share; among equals, the first
    backbone's.
    """
    done = [e for e in entries if e.skipped is None]

    def data(e: Entry) -> tuple[tuple[str, ...], int | None]:
        return tuple(sorted(e.classes or ())), e.val_images

    shared = Counter(data(e) for e in done)
    if len(shared) < 2:
        return []
    classes, val = max(shared, key=lambda k: shared[k])  # the first of the most common: the first backbone's
    ranked = ", ".join(e.backbone for e in done if data(e) == (classes, val))
    said = []
    for e in done:
        mine, val_images = data(e)
        if (mine, val_images) == (classes, val):
            continue
        parts = []
        if mine != classes:
            missing = ", ".join(c for c in classes if c not in mine)
            extra = ", ".join(c for c in mine if c not in classes)
            parts.append(
                f"{len(mine)} classes, not {len(classes)}"
                + (f": without {missing}" if missing else "")
                + (f"{',' if missing else ':'} with {extra}" if extra else "")
            )
        if val_images != val:
            parts.append(f"{val_images} validation images, not {val}")
        e.not_ranked = "; ".join(parts)
        said.append(
            f"Not ranking {e.backbone}: it was trained on other data than {ranked} ({e.not_ranked}); the data folder "
            f"changed between them, and a new --out compares every backbone on it as it is now."
        )
    return said


def page(result: Comparison) -> str:
    """A self-contained HTML page of the ranking (no scripts, no external resources)."""
    best = max((e.accuracy or 0.0 for e in result.entries if e.skipped is None), default=0.0) or 1.0
    rows = []
    for rank, e in zip(result.ranks(), result.ranked(), strict=True):
        cells = [rank, e.backbone, e.weights]
        if e.skipped is not None:
            cells.append(f'<td colspan="6">skipped: {html.escape(e.skipped)}</td>')
        else:
            width = 100 * (e.accuracy or 0.0) / best
            cells += [
                f'<td><div class="bar" style="width:{width:.0f}%">{_num(e.accuracy, ".4f")}</div></td>',
                _num(e.ece, ".4f"),
                f"{(e.size_bytes or 0) / 2**20:.1f} MiB",
                f"{_num(e.train_s, '.0f')} s",
                f"{_num(e.latency_ms_batch1, '.2f')} ms",
                f"{_num(e.latency_ms_batch32, '.1f')} ms",
            ]
        rows.append("<tr>" + "".join(c if c.startswith("<td") else f"<td>{html.escape(c)}</td>" for c in cells))
    settings = html.escape(", ".join(f"{k}={v}" for k, v in result.settings.items()))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">{PAGE_MARK.decode()}
<style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse}}
td,th{{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:right}}
td:nth-child(2),td:nth-child(3){{text-align:left}}
.bar{{background:#8bc58b;white-space:nowrap}}</style></head><body>
<h1>Backbones on {html.escape(str(result.settings.get("data_dir", "")))}</h1>
<p>Ranked by validation accuracy (then ECE). Every ranked run used the same split and recipe ({settings}).
Latency: median of warm calls on {html.escape(result.runtime)}, on the machine that ran the comparison.</p>
{f"<p>{html.escape(result.other_data())}</p>" if result.other_data() else ""}
<table><tr><th>rank</th><th>backbone</th><th>weights</th><th>accuracy</th><th>ECE</th><th>model size</th>
<th>training time</th><th>batch 1</th><th>batch 32</th></tr>
{"".join(rows)}
</table></body></html>
"""
