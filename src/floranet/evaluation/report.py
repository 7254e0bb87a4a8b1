"""``floranet report``: one self-contained ``report.html`` for a run.

Every image is embedded as a data URI and there is no script, font or style
sheet from elsewhere, so the file opens offline and sends no request.
"""

from __future__ import annotations

import base64
import html
import logging
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from floranet.data.images import load_image
from floranet.data.resize import bilinear
from floranet.data.scan import IMAGE_EXTENSIONS
from floranet.errors import ConfigError, DatasetError, ModelError
from floranet.evaluation.audit_report import audit_section
from floranet.evaluation.calibration import bound_words, not_fitted_words
from floranet.evaluation.card_facts import CardFacts, machine_shares, training_time
from floranet.evaluation.evaluation import Evaluation, evaluate_run, read_evaluation, write_evaluation
from floranet.evaluation.gradcam import NO_EVIDENCE, GradCAM, runs_around
from floranet.evaluation.metrics import unmeasured_classes, unmeasured_why
from floranet.evaluation.ood import unknown_section
from floranet.rundir import RunDir
from floranet.utils.figures import image_grid, shown_photo
from floranet.utils.files import atomic_write_text, check_replaceable
from floranet.utils.system import environment
from floranet.utils.text import figure_text, html_text, printable, utf8

log = logging.getLogger(__name__)
REPORT_MARK = b"<title>floranet report: "  # how a report.html floranet wrote (and may replace) starts

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;
padding:0 1rem}
h1{margin-bottom:.2rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ddd;padding:.25rem .6rem;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}td{overflow-wrap:anywhere}
img{max-width:100%;border:1px solid #eee}.muted{color:#666}.bad{color:#b00}.kpi{display:inline-block;margin-right:2rem}
.kpi b{font-size:1.6rem;display:block}pre{background:#f7f7f7;padding:.6rem;overflow:auto}
"""


def _img(path: Path | None, alt: str) -> str:
    if path is None or not path.exists():
        return f'<p class="muted">({html.escape(alt)}: not available)</p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html_text(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html_text(_cell(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(v: Any) -> str:
    return figure_text(v, ".3f") if isinstance(v, float) else str(v)


def _measured(v: Any) -> Any:
    """A per-class figure, or ``n/a`` for null (not measured)."""
    return "n/a" if v is None else v


def top_losses_gallery(
    ev: Evaluation, run: RunDir, k: int = 9, *, model: Any = None, path: Path | None = None
) -> tuple[Path | None, int]:
    """Draws the most confidently wrong validation images with Grad-CAM overlays.

    Args:
        ev: The evaluation whose wrong answers are drawn.
        run: Its run (model and pixel limit).
        k: How many images at most.
        model: The run's loaded model, if the caller holds it.
        path: Where the picture goes; default the run's ``plots/top_losses.png``.

    Returns:
        (the picture, None when no image is wrong or none of them can be read; how many of the ``k`` wrong
        images could not be read, e.g. from a data folder moved since training).
    """
    losses = ev.top_losses(k)
    if not losses:
        return None, 0
    model = model or run.load_model()
    size = (int(model.inputs[0].shape[1]), int(model.inputs[0].shape[2]))
    max_pixels = run.max_pixels()
    imgs, photos, titles, wanted = [], [], [], []
    for row in losses:
        try:  # upright (EXIF) at its own size, resized for the model as predict does: the overlay shows the photo
            photo = load_image(str(Path(ev.data_dir) / row["path"]), max_pixels=max_pixels)
        except DatasetError:
            continue
        imgs.append(bilinear(photo, size))
        photos.append(shown_photo(photo))
        wanted.append(ev.class_names.index(row["predicted"]))
        titles.append(f"{row['path']}\ntrue {row['true']}, predicted {row['predicted']} ({row['probability']:.0%})")
    unread = len(losses) - len(imgs)
    if unread:  # a page saying "no misclassified images" of a run at 33% accuracy misled
        log.warning(
            "%d of the %d top-loss image(s) could not be read under %s (moved?): the report's gallery %s.",
            unread,
            len(losses),
            printable(ev.data_dir),
            "leaves them out" if imgs else "is empty",
        )
    if not imgs:
        return None, unread
    heat, _ = GradCAM(model).heatmaps(np.stack(imgs), np.asarray(wanted))  # one gradient pass for the gallery
    for i, cam in enumerate(heat):
        if not cam.any():  # a plain blue map is "no evidence", not "nowhere"
            titles[i] += f"\n{NO_EVIDENCE} {ev.class_names[wanted[i]]}"
    path = path or run.plot("top_losses.png")
    image_grid(photos, titles, path, overlays=list(heat))
    return path, unread


def _gallery_html(gallery: Path | None, unread: int, ev: Evaluation) -> str:
    """The top-losses picture, or why there is none (no error, or none of the wrong images readable)."""
    if gallery is None and not unread:
        return "<p>No misclassified images.</p>"
    wrong = int(np.sum(np.asarray(ev.predictions) != np.asarray(ev.labels)))
    where = f"under {html_text(ev.data_dir)} (moved?)"
    if gallery is None:
        return f"<p class=bad>{wrong} misclassified image(s), none readable {where}.</p>"
    note = f"<p class=bad>{unread} of them could not be read {where}.</p>" if unread else ""
    return note + _img(gallery, "top losses")


def build_report(
    run_dir: str | os.PathLike[str],
    *,
    evaluation: Evaluation | None = None,
    out: str | os.PathLike[str] | None = None,
    model: Any = None,
    say: Callable[[str], None] = log.warning,
) -> Path:
    """Writes ``RUN_DIR/report.html`` (or ``out``) from the run's stored evaluation and returns its path.

    With ``out`` elsewhere, nothing is written into the run (which may be read-only, or locked by another command):
    the top-loss gallery is drawn in a temporary folder, not as its ``plots/top_losses.png``. A run without
    ``predictions.csv`` (from before that file) is the exception: it is evaluated once and the result stored.

    Args:
        run_dir: A finished run.
        evaluation: The run's evaluation, when the caller holds it; else read from ``predictions.csv``
            (a run from before that file existed is evaluated once and the result stored).
        out: Another path for the HTML.
        model: The run's loaded model, to avoid loading it again (Grad-CAM of the top losses).
        say: Where a warning goes: an optional file (``doctor.json``, ``ood.json``, ``audit.json``, ...) that
            cannot be read is left out of the page, with a line there that says so.
    """
    run = RunDir.open(run_dir, needs=(*RunDir.FINISHED, RunDir.METRICS))
    if out is not None:
        check_output(run, out)
    target = Path(out) if out else run / RunDir.REPORT
    ev = evaluation or read_evaluation(run, say=say)
    if ev is None:
        ev = evaluate_run(run.path)
        write_evaluation(ev, run)
    facts = CardFacts.read(run)  # metrics.json and the optional side files, as the model card reads them
    metrics = _checked_metrics(run, facts.metrics)
    for name, (_, error) in facts.unreadable.items():
        say(f"Report without {name}: {error}")
    with tempfile.TemporaryDirectory(prefix="floranet-report-") as tmp:  # the run's plots/ only for its own page
        drawn = None if writes_into_run(run, target) else Path(tmp) / "top_losses.png"
        page = _page(run, ev, metrics, facts, top_losses_gallery(ev, run, model=model, path=drawn))
    atomic_write_text(target, page)
    return target


def writes_into_run(run: RunDir, out: str | os.PathLike[str] | None) -> bool:
    """Whether a report to ``out`` writes into the run: its own ``report.html`` (and the gallery in its plots/)."""
    return out is None or Path(out).resolve() == (run / RunDir.REPORT).resolve()


def _page(
    run: RunDir, ev: Evaluation, metrics: dict[str, Any], facts: CardFacts, gallery: tuple[Path | None, int]
) -> str:
    """The report's HTML (``charset=utf-8``: a folder's non-UTF-8 bytes as ``\\xNN``)."""
    parts = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8>{REPORT_MARK.decode()}"
        f"{html_text(run.path.name)}</title><style>{CSS}</style></head><body>",
        f"<h1>floranet report</h1><p class=muted>{html_text(run.path.resolve())}</p>",
        _summary(metrics, ev),
        _dataset(facts),
        _metrics_section(run, metrics),
        _calibration(facts, metrics),
        "<h2>Top losses (most confidently wrong), with Grad-CAM</h2>",
        _gallery_html(*gallery, ev),
        unknown_section(facts.ood),
        audit_section(run, facts.audit),
        _left_out(facts, RunDir.OOD, RunDir.AUDIT),
        "<h2>Configuration</h2><pre>" + html.escape(run.config_text()) + "</pre>",
        _environment(metrics),
        "</body></html>",
    ]
    return utf8("\n".join(parts))


def check_output(run: RunDir, out: str | os.PathLike[str]) -> Path:
    """Checks that ``out`` may take a report: not in the run (its model and records), another run, nor in its data
    folder, not an image's name, and not an existing file other than a floranet report.

    Raises:
        ConfigError: One of those; nothing is written.
        OutputError: It cannot be written.
    """
    target = Path(out)
    if target.resolve() == (run / RunDir.REPORT).resolve():  # the default place, named
        return target
    if target.suffix.lower() in IMAGE_EXTENSIONS:
        raise ConfigError(f"out must be an HTML file, not an image's name. Received: out={printable(os.fspath(out))!r}")
    inside = [("the run directory (its model and records)", run.path), *runs_around(target)]  # another run's too
    if run.exists(RunDir.CONFIG):
        inside.append(("the data folder", Path(run.config().data_dir)))
    return check_replaceable(
        target,
        arg="out",
        ours="a floranet report",
        is_ours=lambda head: REPORT_MARK in head,
        inside=inside,
        head=len(REPORT_MARK) + 200,
    )


def _checked_metrics(run: RunDir, metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics.json`` (``metrics``, as read) with what the page shows (a hand-edited or cut file was a KeyError
    traceback).

    Raises:
        ModelError: It lacks the calibration figures or the per-class table.
    """
    cal = metrics.get("calibration")
    numbers = ("ece", "temperature", "ece_after_temperature")
    if not (isinstance(cal, dict) and all(isinstance(cal.get(k), (int, float)) for k in numbers)):
        missing = "calibration figures"
    elif not isinstance(metrics.get("per_class"), dict):
        missing = "per-class table"
    else:
        return metrics
    raise ModelError(f"{run / RunDir.METRICS} is damaged (no {missing}); rerun `floranet evaluate {run.path}`")


def _summary(metrics: dict[str, Any], ev: Evaluation) -> str:
    acc, loss = metrics.get("accuracy"), metrics.get("loss")
    kpis = [
        ("accuracy", figure_text(acc, ".1%") if acc is not None else "–"),
        ("loss", figure_text(loss, ".3f") if loss is not None else "–"),
        ("ECE", f"{metrics['calibration']['ece']:.3f}"),
        ("temperature", f"{ev.temperature:.2f}"),
        ("images evaluated", str(metrics.get("num_examples", 0))),
    ]
    out = (
        "<div>"
        + "".join(f"<span class=kpi><b>{html.escape(v)}</b>{html.escape(k)}</span>" for k, v in kpis)
        + f"</div><p class=muted>On the {html_text(ev.source)} only (never on training images).</p>"
    )
    if metrics.get("weights") == "none":
        out += "<p class=bad>This model was trained from random weights (<code>--weights none</code>).</p>"
    return out


def _left_out(facts: CardFacts, *names: str) -> str:
    """A line per file of ``names`` that is left out of the page: which, why, and the command that writes it."""
    return "".join(
        f"<p class=bad><code>{n}</code> is left out of this report: {html_text(facts.unreadable[n][0])}; "
        + re.sub(r"`([^`]+)`", r"<code>\1</code>", html_text(facts.run.written_by(n)))  # the card's `floranet x`
        + ".</p>"
        for n in names
        if n in facts.unreadable
    )


def _dataset(facts: CardFacts) -> str:
    run, doctor = facts.run, facts.doctor
    parts = ["<h2>Dataset</h2>"]
    if facts.curation is not None:
        gone, moved, made = facts.curation
        new = f", which made the class(es) {', '.join(map(repr, made))}" if made else ""
        parts.append(
            f"<p>Curated: {gone} file(s) left out (--exclude, listed in {RunDir.EXCLUDED}) and {moved} relabelled "
            f"(--relabel, {RunDir.RELABELED}){html_text(new)}; the doctor's counts below are of the folders as they "
            "are, the model's classes and the split's counts after it.</p>"
        )
    parts.append(_left_out(facts, RunDir.DOCTOR, RunDir.EXCLUDED, RunDir.RELABELED))
    if doctor:
        summary = doctor.get("summary", {})
        parts.append(_table(["class", "usable images"], [[k, v] for k, v in doctor.get("classes", {}).items()]))
        parts.append(
            _table(["summary", "value"], [[k, v] for k, v in summary.items() if not isinstance(v, (dict, list))])
        )
        problems = [f for f in doctor.get("files", []) if f.get("status") in ("bad", "note")]
        if problems:
            parts.append(f"<p>{len(problems)} file(s) with findings (bad files were skipped):</p>")
            parts.append(
                _table(["file", "status", "reason"], [[f["path"], f["status"], f["reason"]] for f in problems[:50]])
            )
    parts += [
        "<h3>Sample training images</h3>",
        _img(run.plot("samples.png"), "sample grid"),
        "<h2>Training</h2>",
        _img(run.plot("history.png"), "training curves"),
    ]
    return "".join(parts)


def _metrics_section(run: RunDir, metrics: dict[str, Any]) -> str:
    per_class = metrics.get("per_class", {})
    # null: a class with no validation image, whose figures are not measured (0.000 read as "the model fails")
    figures = [
        [c, *(_measured(m[k]) for k in ("precision", "recall", "f1")), m["support"]] for c, m in per_class.items()
    ]
    parts = ["<h2>Metrics</h2>", _table(["class", "precision", "recall", "F1", "support"], figures)]
    missing = unmeasured_classes(metrics)
    if missing:
        parts.append(
            f"<p>n/a: not measured for {html_text(', '.join(missing))}, as {html_text(unmeasured_why(metrics))}.</p>"
        )
    topk = next((k for k in metrics if k.startswith("top_") and k.endswith("_accuracy")), None)
    if topk:
        parts.append(
            f"<p>{html.escape(topk.replace('_', ' '))}: {figure_text(metrics[topk], '.1%')}; macro F1 "
            f"{figure_text(metrics.get('macro_f1', 0), '.3f')}</p>"
        )
    parts += ["<h3>Confusion matrix</h3>", _img(run.plot("confusion_matrix.png"), "confusion matrix")]
    if metrics.get("most_confused"):
        parts.append(
            _table(
                ["true", "predicted as", "count"],
                [[m["true"], m["predicted"], m["count"]] for m in metrics["most_confused"]],
            )
        )
    return "".join(parts)


def _calibration(facts: CardFacts, metrics: dict[str, Any]) -> str:
    cal = metrics["calibration"]
    if facts.calibration.get("fitted", True) is False:
        scaling = f"{not_fitted_words(facts.calibration)}."
    else:  # with a sentence where the temperature is the search's lower bound
        scaling = (
            f"after temperature scaling (T = {cal['temperature']:.2f}, fitted on the validation split) "
            f"{cal['ece_after_temperature']:.3f}.{bound_words(facts.calibration)}"
        )
    return (
        f"<h3>Calibration</h3><p>Expected calibration error {cal['ece']:.3f}; {scaling}</p>"
        + _left_out(facts, RunDir.CALIBRATION)
        + _img(facts.run.plot("reliability.png"), "reliability diagram")
    )


def _environment(metrics: dict[str, Any]) -> str:
    """The machine that trained the run (its timings are that machine's), or this one for a run that did not
    record it."""
    trained_on = metrics.get("trained_on")
    recorded = isinstance(trained_on, dict)
    machine = trained_on if isinstance(trained_on, dict) else environment()
    rows: list[list[Any]] = [[k, v] for k, v in machine.items()]
    rows += [[f"time: {k}", f"{v} s"] for k, v in metrics.get("timings_s", {}).items()]
    timings, machines = metrics.get("timings_s", {}), metrics.get("machines")
    several = len(machine_shares(machines)) > 1  # a run resumed on other machines: each one's share of its training
    trained = training_time(timings.get("training", timings.get("total")), trained_on, machines)
    rows += [["training time", trained]] if several else []
    caption = "the machine that trained the run" if recorded else "this machine (the run did not record its own)"
    caption = "the machine that finished training the run" if several else caption
    return f"<h2>Environment</h2><p>Of {caption}.</p>" + _table(["", ""], rows)
