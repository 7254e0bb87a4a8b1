"""``floranet report``: one self-contained ``report.html`` for a run.

Every image is embedded as a data URI and there is no script, font or style
sheet from elsewhere, so the file opens offline and sends no request.
"""

from __future__ import annotations

import base64
import html
import json
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from floranet import plots
from floranet.evaluate import Evaluation, evaluate_run
from floranet.io import atomic_write_text

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{margin-bottom:.2rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ddd;padding:.25rem .6rem;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee}.muted{color:#666}.bad{color:#b00}.kpi{display:inline-block;margin-right:2rem}
.kpi b{font-size:1.6rem;display:block}pre{background:#f7f7f7;padding:.6rem;overflow:auto}
"""


def _img(path: Path, alt: str) -> str:
    if not path.exists():
        return f'<p class="muted">({html.escape(alt)}: not available)</p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def top_losses_gallery(ev: Evaluation, run_dir: Path, k: int = 9, *, model: Any = None) -> Path | None:
    """Draws the most confidently wrong validation images with Grad-CAM overlays."""
    import keras

    from floranet.data import pipeline
    from floranet.errors import DatasetError
    from floranet.gradcam import GradCAM

    losses = ev.top_losses(k)
    if not losses:
        return None
    model = model or keras.saving.load_model(run_dir / "model.keras")
    size = tuple(int(s) for s in model.inputs[0].shape[1:3])
    cam = GradCAM(model)
    imgs, titles, wanted = [], [], []
    for row in losses:
        try:
            pixels = pipeline.decode_and_resize(str(Path(ev.data_dir) / row["path"]), size)
        except DatasetError:
            continue
        imgs.append(pixels)
        wanted.append(ev.class_names.index(row["predicted"]))
        titles.append(f"{row['path']}\ntrue {row['true']}, predicted {row['predicted']} "
                      f"({row['probability']:.0%})")
    if not imgs:
        return None
    heat, _ = cam.heatmaps(np.stack(imgs), np.asarray(wanted))  # one gradient pass for the whole gallery
    overlays = list(heat)
    path = run_dir / "plots" / "top_losses.png"
    plots.gallery(imgs, titles, path, overlays=overlays)
    return path


def environment() -> dict[str, str]:
    import keras
    import tensorflow as tf

    from floranet import __version__

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"floranet": __version__, "python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "numpy": np.__version__, "platform": platform.platform(),
            "cpu": cpu, "cores": str(os.cpu_count())}


def build_report(run_dir: str | os.PathLike[str], *, evaluation: Evaluation | None = None,
                 out: str | os.PathLike[str] | None = None, model: Any = None) -> Path:
    """Writes ``RUN_DIR/report.html`` (or ``out``) and returns its path.

    Args:
        run_dir: A finished run.
        evaluation: Predictions to report; computed on the validation split if None.
        out: Another path for the HTML.
        model: The run's loaded model, to avoid loading it again.
    """
    run = Path(run_dir)
    ev = evaluation or evaluate_run(run)
    metrics = ev.write(run)
    gallery = top_losses_gallery(ev, run, model=model)
    doctor = json.loads((run / "doctor.json").read_text(encoding="utf-8")) if (run / "doctor.json").exists() else {}
    config = (run / "config.yaml").read_text(encoding="utf-8") if (run / "config.yaml").exists() else ""
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>floranet report: {html.escape(run.name)}"
             f"</title><style>{CSS}</style></head><body>",
             f"<h1>floranet report</h1><p class=muted>{html.escape(str(run.resolve()))}</p>"]

    acc, loss = metrics.get("accuracy"), metrics.get("loss")
    kpis = [("accuracy", f"{acc:.1%}" if acc is not None else "–"), ("loss", f"{loss:.3f}" if loss is not None else "–"),
            ("ECE", f"{metrics['calibration']['ece']:.3f}"), ("temperature", f"{ev.temperature:.2f}"),
            ("images evaluated", str(metrics.get("num_examples", 0)))]
    parts.append("<div>" + "".join(f'<span class=kpi><b>{html.escape(v)}</b>{html.escape(k)}</span>'
                                   for k, v in kpis) + f"</div><p class=muted>On the {html.escape(ev.source)}"
                 " only (never on training images).</p>")
    if metrics.get("weights") == "none":
        parts.append("<p class=bad>This model was trained from random weights (no ImageNet weights were available).</p>")

    parts.append("<h2>Dataset</h2>")
    summary = doctor.get("summary", {})
    if doctor:
        parts.append(_table(["class", "usable images"], [[k, v] for k, v in doctor.get("classes", {}).items()]))
        parts.append(_table(["summary", "value"], [[k, v] for k, v in summary.items() if not isinstance(v, (dict, list))]))
        problems = [f for f in doctor.get("files", []) if f.get("status") in ("bad", "note")]
        if problems:
            parts.append(f"<p>{len(problems)} file(s) with findings (bad files were skipped):</p>")
            parts.append(_table(["file", "status", "reason"], [[f["path"], f["status"], f["reason"]]
                                                               for f in problems[:50]]))
    parts += ["<h3>Sample training images</h3>", _img(run / "plots" / "samples.png", "sample grid")]
    parts += ["<h2>Training</h2>", _img(run / "plots" / "history.png", "training curves")]

    parts.append("<h2>Metrics</h2>")
    per_class = metrics.get("per_class", {})
    parts.append(_table(["class", "precision", "recall", "F1", "support"],
                        [[c, m["precision"], m["recall"], m["f1"], m["support"]] for c, m in per_class.items()]))
    topk = next((k for k in metrics if k.startswith("top_") and k.endswith("_accuracy")), None)
    if topk:
        parts.append(f"<p>{html.escape(topk.replace('_', ' '))}: {metrics[topk]:.1%}; macro F1 "
                     f"{metrics.get('macro_f1', 0):.3f}</p>")
    parts += ["<h3>Confusion matrix</h3>", _img(run / "plots" / "confusion_matrix.png", "confusion matrix")]
    if metrics.get("most_confused"):
        parts.append(_table(["true", "predicted as", "count"],
                            [[m["true"], m["predicted"], m["count"]] for m in metrics["most_confused"]]))
    cal = metrics["calibration"]
    parts += ["<h3>Calibration</h3>",
              f"<p>Expected calibration error {cal['ece']:.3f}; after temperature scaling "
              f"(T = {cal['temperature']:.2f}, fitted on the validation split) {cal['ece_after_temperature']:.3f}.</p>",
              _img(run / "plots" / "reliability.png", "reliability diagram")]
    parts.append("<h2>Top losses (most confidently wrong), with Grad-CAM</h2>")
    parts.append(_img(gallery, "top losses") if gallery else "<p>No misclassified images.</p>")

    parts.append("<h2>Configuration</h2><pre>" + html.escape(config) + "</pre>")
    timings = metrics.get("timings_s", {})
    env = environment()
    parts.append("<h2>Environment</h2>" + _table(["", ""], [[k, v] for k, v in env.items()]
                                                 + [[f"time: {k}", f"{v} s"] for k, v in timings.items()]))
    parts.append("</body></html>")
    target = Path(out) if out else run / "report.html"
    atomic_write_text(target, "\n".join(parts))
    return target
