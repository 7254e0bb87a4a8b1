"""The model card: ``RUN_DIR/README.md``, in the Hugging Face model-card format.

YAML front matter (``library_name``, ``license``, ``tags``, ``datasets``, ``metrics``, ``base_model`` when a
Hub id is given, ``pipeline_tag`` and ``model-index`` with the validation results), then a body: intended
use, data (``doctor.json`` and the split), training recipe (``config.yaml``, the facts in ``metrics.json``),
validation results per class, calibration, and limitations (what the numbers say, plus the label audit and
the unknown answer when ``audit.json`` / ``ood.json`` exist).

Everything is read from the run directory (never predicted again), so ``floranet evaluate`` can refresh it.
"""

from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from floranet.evaluation.calibration import bound_words, not_fitted_words
from floranet.evaluation.card_facts import CardFacts, training_time
from floranet.evaluation.metrics import support_counts, unmeasured_classes, unmeasured_why
from floranet.rundir import RunDir
from floranet.utils.text import figure_text, printable

# Recall below this, on a class with enough validation images, is called out as a limitation.
WEAK_RECALL = 0.8
FEW_VALIDATION_IMAGES = 20


def write_model_card(
    run_dir: str | os.PathLike[str],
    *,
    license: str = "other",
    base_model: str | None = None,
    say: Callable[[str], None] = print,
) -> Path:
    """Writes (or refreshes) ``RUN_DIR/README.md`` from the run's files.

    Args:
        run_dir: A finished run (``metrics.json`` and ``config.yaml`` at least).
        license: The model's license id for the front matter; ``other`` (the default) until you set it,
            since it depends on your data and the backbone's weights.
        base_model: The Hugging Face Hub id of the pretrained backbone, when there is one.
        say: Where a warning goes: an optional file (``audit.json``, ``ood.json``, ...) that cannot be read is
            left out of the card, with a line there that says so.

    Returns:
        The card's path.
    """
    run = RunDir(run_dir)
    facts = CardFacts.read(run)
    for name, (_, error) in facts.unreadable.items():
        say(f"Model card without {name}: {error}")
    return run.write_text(RunDir.MODEL_CARD, _card(facts, license, base_model))


def model_card(run: RunDir, *, license: str = "other", base_model: str | None = None) -> str:
    """The card's text (front matter and body)."""
    return _card(CardFacts.read(run), license, base_model)


def _card(facts: CardFacts, license: str, base_model: str | None) -> str:
    front = yaml.safe_dump(front_matter(facts, license, base_model), sort_keys=False, allow_unicode=True)
    body = "\n".join(
        [
            f"# {_md(facts.name)}",
            "",
            _intro(facts),
            *_section("Intended use", _intended_use(facts)),
            *_section("How to use", _how_to_use(facts)),
            *_section("Data", _data(facts)),
            *_section("Training recipe", _recipe(facts)),
            *_section("Validation results", _results(facts)),
            *_section("Calibration", _calibration(facts)),
            *_section("Limitations", _limitations(facts)),
            "",
            f"*Written by floranet {facts.version} from the files of `{_code(facts.name)}/`; "
            "`floranet evaluate` refreshes it.*",
            "",
        ]
    )
    return f"---\n{front}---\n\n{body}"


def front_matter(facts: CardFacts, license: str = "other", base_model: str | None = None) -> dict[str, Any]:
    """The YAML header: Hugging Face's model-card metadata, with ``model-index`` holding the results.

    ``base_model`` must be a Hub model id; floranet knows none that is byte-for-byte the backbone's
    weights (Keras's ImageNet files have no exact Hub twin), so it is written only when given.
    """
    m = facts.metrics
    front: dict[str, Any] = {
        "library_name": "keras",
        "license": license,
        "tags": ["image-classification", "keras", "floranet", facts.backbone],
        "datasets": [facts.dataset],
        "metrics": ["accuracy", "f1"],
        "pipeline_tag": "image-classification",
    }
    if license == "other":
        front["license_name"] = "unspecified"
        front["license_link"] = "LICENSE"
    if base_model:
        front["base_model"] = base_model
    results = []
    if "accuracy" in m:
        metrics = [
            {"type": "accuracy", "value": round(float(m["accuracy"]), 4), "name": "Validation accuracy"},
            {"type": "f1", "value": round(float(m["macro_f1"]), 4), "name": "Macro F1", "args": {"average": "macro"}},
        ]
        cal = m.get("calibration", {})
        if "ece" in cal:
            metrics.append({"type": "ece", "value": round(float(cal["ece"]), 4), "name": "Expected calibration error"})
        results.append(
            {
                "task": {"type": "image-classification", "name": "Image Classification"},
                "dataset": {"name": facts.dataset, "type": facts.dataset, "split": "validation"},
                "metrics": metrics,
            }
        )
    front["model-index"] = [{"name": facts.name, "results": results}]
    return front


def _section(title: str, lines: list[str]) -> list[str]:
    return ["", f"## {title}", "", *lines]


def _md(text: str) -> str:
    """A class, folder or file name as Markdown text: control bytes escaped, no HTML, no table breaks, and no
    Markdown of its own (``[x](javascript:...)`` became a link, ``*`` emphasis): its punctuation backslash-escaped."""
    return _MARKDOWN.sub(r"\\\g<0>", html.escape(printable(text), quote=False))


# Markdown's own punctuation (CommonMark backslash escapes; '&' and '<' are HTML-escaped first), with '$' for the
# math that GitHub and the Hugging Face Hub render, and the backslash itself.
_MARKDOWN = re.compile(r"[\[\]()*_{}#+!|~>`$\\]")


def _code(text: str) -> str:
    """A name inside a code span (shown verbatim): control bytes escaped, no backtick to end the span."""
    return printable(text).replace("`", "'")


def _names(names: list[str]) -> str:
    return ", ".join(_md(n) for n in names)


def _intro(f: CardFacts) -> str:
    h, w = f.config.image_size if f.config else ("?", "?")
    return (
        f"An image classifier for {len(f.class_names)} classes ({_names(f.class_names)}): a {f.backbone} "
        f"backbone (weights: {_md(f.weights)}) under a small classification head, trained with floranet {f.version} "
        f"on the folder `{_code(f.dataset)}`. It takes RGB images of {h}x{w} pixels (values 0..255; preprocessing is "
        "inside the model) and answers one probability per class."
    )


def _intended_use(f: CardFacts) -> list[str]:
    if f.ood is None:
        unknown = (
            "The model always answers one of its classes (softmax), so a photo of an unknown kind still gets a "
            "confident-looking label; check `low_confidence` in floranet's answers"
        )
    else:
        unknown = (
            'floranet answers "unknown" for images unlike every class (`ood.json`, see Limitations; `--unknown off` '
            "turns it off), but a photo close to a class it was not trained on can still get a confident label"
        )
    return [
        f"Sorting photos like those of `{_code(f.dataset)}` into its classes: {_names(f.class_names)}.",
        "",
        f"Out of scope: images of anything else. {unknown}; keep a person in the loop where a wrong label matters.",
    ]


def _how_to_use(f: CardFacts) -> list[str]:
    return [
        "```python",
        "import floranet",
        f"predictor = floranet.load({json.dumps(printable(f.name))})",
        'print(predictor.predict(["photo.jpg"]))',
        "```",
        "",
        f"Or `floranet serve {_code(f.name)}` (REST and the Open Inference Protocol at `/v2`), or "
        f"`floranet export {_code(f.name)} --format onnx|openvino|tflite|saved_model`: every export carries the class "
        "names and input size in its own metadata.",
    ]


def _data(f: CardFacts) -> list[str]:
    lines = []
    summary = f.doctor.get("summary", {})
    if summary:
        lines.append(
            f"The dataset doctor checked {summary.get('num_files', '?')} files: {summary.get('num_usable', '?')} "
            f"usable, {summary.get('num_bad', 0)} unusable, {summary.get('num_ignored', 0)} ignored, "
            f"{summary.get('duplicates_within_class', 0)} duplicates within a class, "
            f"{summary.get('label_conflicts', 0)} label conflicts; class imbalance (largest / smallest) "
            f"{summary.get('imbalance_ratio')}."
        )
    if f.counts:
        lines += ["", "| class | train | validation |", "|---|---:|---:|"]
        lines += [f"| {_md(name)} | {c['train']} | {c['validation']} |" for name, c in f.counts.items()]
        seed = f"seed {f.config.seed}, " if f.config else ""
        lines += ["", f"The split ({seed}`split.csv`) is stratified per class and keeps duplicate files together."]
    if f.curation is not None:
        gone, moved, made = f.curation
        new = f", which made the class(es) {_names(made)}" if made else ""
        lines += [
            "",
            f"Curated: {gone} file(s) left out (`--exclude`, listed in `{RunDir.EXCLUDED}`) and {moved} relabelled "
            f"(`--relabel`, `{RunDir.RELABELED}`){new}; the class counts above are after it, the doctor's of the "
            "folders as they are.",
        ]
    lines += f.split_gap + f.left_out(RunDir.DOCTOR, RunDir.EXCLUDED, RunDir.RELABELED)
    return lines or ["No `doctor.json` or `split.csv` in this run."]


def _recipe(f: CardFacts) -> list[str]:
    if f.config is None:
        return ["No `config.yaml` in this run."]
    c = f.config
    precision = f.metrics.get("precision", {})
    timings = f.metrics.get("timings_s", {})
    # Training alone: "training" once the command has finished ("total" is then the whole command, with its
    # evaluation, audit and report); before that, "total" is the training's.
    trained = timings.get("training", timings.get("total"))
    rows = [
        ("preset", _md(c.preset_text())),
        ("backbone, weights", f"{_md(c.backbone)}, {_md(f.weights)}"),
        ("image size", f"{c.image_size[0]}x{c.image_size[1]}"),
        (
            "stage 1 (frozen backbone)",
            f"{_epochs(f, 'stage1', c.epochs)}, Adam {c.learning_rate:g}, batch {c.batch_size}",
        ),
        (
            "stage 2 (fine-tuning)",
            f"{_epochs(f, 'stage2', c.fine_tune_epochs)}, Adam {c.fine_tune_learning_rate:g}, {c.schedule}",
        ),
        ("head", f"Dense({c.head_units}), dropout {c.dropout:g}, label smoothing {c.label_smoothing:g}"),
        ("augmentation", c.augment),
        ("early stopping patience", str(c.early_stopping_patience)),
        ("precision", ", ".join(f"{k} {v}" for k, v in precision.items()) if precision else c.precision),
        ("training time", _md(training_time(trained, f.metrics.get("trained_on"), f.metrics.get("machines")))),
    ]
    if c.class_weights:  # it changes the model (a minority class's probabilities most): the recipe says so
        rows.insert(-2, ("class weights (`--class-weights auto`)", _class_weights(f.class_weights)))
    table = ["| setting | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]]
    return [*table, "", "`config.yaml` has all.", *f.left_out(RunDir.STATE)]


def _class_weights(weights: dict[str, float], shown: int = 8) -> str:
    """``--class-weights auto``'s weights (:attr:`CardFacts.class_weights`), each class's when few."""
    each = [f"{_md(n)} {w:.3g}" for n, w in weights.items()] if len(weights) <= shown else []
    listed = ", ".join(each) or f"{min(weights.values(), default=1):.3g} to {max(weights.values(), default=1):.3g}"
    return f"balanced, n / (classes x the class's training images), from the training counts: {listed}"


def _epochs(f: CardFacts, stage: str, planned: int) -> str:
    """The epochs a stage trained, as ``state.json`` says: of those planned, and the one early stopping kept."""
    st = f.stages.get(stage) or {}
    done = st.get("epochs_done")
    if not isinstance(done, int) or not planned:
        return f"{planned} epochs"
    text = f"{planned} epochs" if done == planned else f"{done} of {planned} epochs (early stopping)"
    best = RunDir.best_epoch(st.get("best_weights"))
    patience = f.config is not None and f.config.early_stopping_patience > 0  # the best epoch is restored
    if patience and best == 0:
        text += ", none better than its start, which is kept"
    elif patience and best is not None and best < done:
        text += f", epoch {best} kept"
    return text


def _results(f: CardFacts) -> list[str]:
    m = f.metrics
    if "accuracy" not in m:
        return ["No validation results (no validation images)."]
    k_key = next((k for k in m if k.startswith("top_") and k.endswith("_accuracy")), None)
    top_k = f", {k_key.replace('_', '-', 1).replace('_', ' ')} {figure_text(m[k_key], '.4f')}" if k_key else ""
    lines = [
        f"On {m['num_examples']} validation images ({m.get('evaluated_on', 'model.keras')}): accuracy "
        f"**{figure_text(m['accuracy'], '.4f')}**, macro F1 {figure_text(m['macro_f1'], '.4f')}, "
        f"loss {m['loss']:.4f}{top_k}.",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in m.get("per_class", {}).items():
        figures = " | ".join(_figure(r.get(k)) for k in ("precision", "recall", "f1"))
        lines.append(f"| {_md(name)} | {figures} | {r['support']} |")
    if unmeasured_classes(m):
        lines += ["", f"n/a: not measured, as {unmeasured_why(m)} (see Limitations)."]
    confused = m.get("most_confused", [])[:3]
    if confused:
        pairs = "; ".join(f"{_md(c['true'])} taken for {_md(c['predicted'])} ({c['count']})" for c in confused)
        lines += ["", f"Most confused: {pairs}."]
    ext = f.external
    if "accuracy" in ext:  # and the classes it has no figure for (an empty class folder), which its accuracy omits
        gaps = f"; not measured: {_names(unmeasured_classes(ext))}" if unmeasured_classes(ext) else ""
        on = f"On {_md(str(ext.get('source', 'another folder')))}: accuracy {figure_text(ext['accuracy'], '.4f')}"
        lines += ["", f"{on} ({ext['num_examples']} images, `{RunDir.METRICS_EXTERNAL}`{gaps})."]
    note = f.left_out(RunDir.METRICS_EXTERNAL)
    return [*lines, "", *note] if note else lines


def _figure(value: Any) -> str:
    """A per-class figure of ``metrics.json``: null (a class with no validation image) is not measured."""
    return figure_text(value, ".3f") if isinstance(value, (int, float)) else "n/a"


def _calibration(f: CardFacts) -> list[str]:
    cal = f.metrics.get("calibration", {})
    if not cal:
        return ["Not measured.", *f.left_out(RunDir.CALIBRATION)]
    if f.calibration.get("fitted", True) is False:  # T = 1 kept: "fitted on the validation split" was untrue
        scaling = f"{not_fitted_words(f.calibration)} (`calibration.json`)."
    else:  # with a sentence where the temperature is the search's lower bound
        scaling = (
            f"after temperature scaling (T = {cal['temperature']:.3f}, fitted on the validation split, "
            f"`calibration.json`) {cal['ece_after_temperature']:.4f}. `floranet predict --calibrated` uses the "
            f"temperature.{bound_words(f.calibration)}"
        )
    return [f"Expected calibration error (15 bins) {cal['ece']:.4f}; {scaling}", *f.left_out(RunDir.CALIBRATION)]


def _limitations(f: CardFacts) -> list[str]:
    m = f.metrics
    out = []
    for name, r in m.get("per_class", {}).items():
        if r["support"] >= 1 and isinstance(r["recall"], (int, float)) and r["recall"] < WEAK_RECALL:
            out.append(
                f"- `{_code(name)}` is recognised less reliably: recall {r['recall']:.2f} on {r['support']} images."
            )
    missing = unmeasured_classes(m)
    if missing:
        its, it = ("its", "it") if len(missing) == 1 else ("their", "them")
        out.append(
            f"- Not evaluated: {_names(missing)}: {unmeasured_why(m)}, so {its} precision, recall and F1 are not "
            f"measured, and the accuracy says nothing of {it}."
        )
    validated = sum(c["validation"] for c in f.counts.values())
    # A class with no validation image is not "rough": it is not measured at all (said above). The counts are those
    # evaluated (a file gone since the split was made is not among them), else the split's.
    evaluated = support_counts(m) or {n: c["validation"] for n, c in f.counts.items()}
    small = [n for n, k in evaluated.items() if 0 < k < FEW_VALIDATION_IMAGES]
    if small and validated:
        out.append(
            f"- Few validation images for {_names(small)} (under {FEW_VALIDATION_IMAGES} each): their "
            "figures are rough."
        )
    if f.config is not None and f.config.weights is None:
        out.append("- The backbone was trained from random weights, not pretrained ones.")
    out += _audit_lines(f.audit) + _ood_lines(f.ood)
    out += [f"- {line}" for line in f.left_out(RunDir.AUDIT, RunDir.OOD)]
    evaluate = f"`floranet evaluate {_code(f.name)} --data OTHER`"
    out.append(
        f"- Validated on a split of the same folder: photos from elsewhere (other cameras, light, framing) may "
        f"score lower; {evaluate} measures that."
        if validated
        else f"- Not validated: the split kept no image aside, so there are no figures; {evaluate} measures the "
        "model on other labelled photos."
    )
    return out


def _audit_lines(audit: Any) -> list[str]:
    """What the label audit (``audit.json``, when present) found: its ``counts`` per kind."""
    if audit is None:
        return []
    counts = audit.get("counts") if isinstance(audit, dict) else None
    if not isinstance(counts, dict):
        return ["- A label audit was run: see `audit.json`."]
    pairs = sum(int(counts.get(k, 0)) for k in ("duplicate_conflict", "duplicate_leak", "duplicate"))
    return [
        f"- The label audit (`audit.json`) flags {counts.get('label_issue', 0)} of {audit.get('images', '?')} images "
        f"as possibly mislabelled, {pairs} near-duplicate pairs ({counts.get('duplicate_leak', 0)} across the "
        f"train/validation split) and {counts.get('outlier', 0)} outliers."
    ]


def _ood_lines(ood: Any) -> list[str]:
    """The unknown answer (``ood.json``, when present): the share of known validation images it rejects."""
    if ood is None:
        return []
    kept = ood.get("validation_kept") if isinstance(ood, dict) else None
    if not isinstance(kept, (int, float)):
        return ["- An unknown answer was fitted: see `ood.json`."]
    return [
        f'- Images unlike every class are answered "unknown" ({ood.get("method")} score above '
        f"{float(ood.get('threshold', 0)):.4g}, `ood.json`); {1 - kept:.1%} of the validation images are too."
    ]
