"""The model card: RUN_DIR/README.md is a valid Hugging Face model card, written by train, refreshed by evaluate."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from floranet.cli import main
from floranet.evaluation.modelcard import model_card, write_model_card
from floranet.rundir import RunDir

REQUIRED = ("library_name", "license", "tags", "datasets", "metrics", "pipeline_tag", "model-index")


def _front(text: str) -> dict:
    assert text.startswith("---\n")
    head, _, _ = text[4:].partition("\n---\n")
    return yaml.safe_load(head)


def test_train_writes_a_card_with_the_required_keys_and_results(tiny_run: Path) -> None:
    text = (tiny_run / "README.md").read_text(encoding="utf-8")
    front = _front(text)
    assert set(REQUIRED) <= set(front)
    assert front["library_name"] == "keras" and "image-classification" in front["tags"] and "resnet20" in front["tags"]
    assert front["datasets"] == ["data"] and "base_model" not in front  # random weights: no base model
    metrics = RunDir(tiny_run).metrics()
    (result,) = front["model-index"][0]["results"]
    assert result["task"]["type"] == "image-classification" and result["dataset"]["split"] == "validation"
    values = {m["type"]: m["value"] for m in result["metrics"]}
    assert values["accuracy"] == round(metrics["accuracy"], 4)
    assert values["ece"] == round(metrics["calibration"]["ece"], 4)
    for section in ("Intended use", "Data", "Training recipe", "Validation results", "Calibration", "Limitations"):
        assert f"\n## {section}\n" in text
    for name in ("daisy", "roses", "tulips"):
        assert f"| {name} |" in text  # per-class results and split counts
    assert "random weights" in text


def test_the_cards_intended_use_says_what_an_unknown_photo_gets(writable_run: Path) -> None:
    """With an unknown answer fitted, the card said "the model always answers one of its classes", and its
    Limitations that such images are answered "unknown"."""
    assert (writable_run / "ood.json").exists()
    card = write_model_card(writable_run).read_text(encoding="utf-8")
    use = card[card.index("## Intended use") : card.index("## How to use")]
    assert 'answers "unknown" for images unlike every class' in use and "always answers one" not in use
    (writable_run / "ood.json").unlink()
    card = write_model_card(writable_run).read_text(encoding="utf-8")
    assert "always answers one of its classes" in card[card.index("## Intended use") : card.index("## How to use")]


def test_card_validates_with_huggingface_hub(tiny_run: Path) -> None:
    hub = pytest.importorskip("huggingface_hub")
    card = hub.ModelCard((tiny_run / "README.md").read_text(encoding="utf-8"))
    data = card.data
    assert data.library_name == "keras" and data.license == "other"
    results = {r.metric_type: r for r in data.eval_results}  # one EvalResult per metric of model-index
    assert set(results) == {"accuracy", "f1", "ece"}
    assert all(r.task_type == "image-classification" and r.dataset_split == "validation" for r in results.values())
    assert results["accuracy"].metric_value == round(RunDir(tiny_run).metrics()["accuracy"], 4)
    assert data.model_name == Path(tiny_run).name


def test_card_reads_audit_and_unknown_rate_and_evaluate_refreshes_it(writable_run: Path) -> None:
    run = RunDir(writable_run)
    counts = {"label_issue": 2, "duplicate_conflict": 0, "duplicate_leak": 1, "duplicate": 0, "outlier": 0}
    run.write_json(RunDir.AUDIT, {"images": 30, "counts": counts})  # what floranet audit writes, in part
    run.write_json(RunDir.OOD, {"method": "combined", "threshold": 0.5, "keep": 0.95, "validation_kept": 0.875})
    (writable_run / "README.md").unlink()
    assert main(["evaluate", str(writable_run), "--runtime", "tensorflow", "--precision", "fp32"]) == 0
    text = (writable_run / "README.md").read_text(encoding="utf-8")
    assert "flags 2 of 30 images as possibly mislabelled, 1 near-duplicate pairs (1 across" in text
    assert "combined score above 0.5" in text and "12.5% of the validation images are too" in text
    front = _front(model_card(run, license="apache-2.0", base_model="some/model"))
    assert front["license"] == "apache-2.0" and front["base_model"] == "some/model" and "license_name" not in front


def test_card_of_a_run_without_validation_images(tmp_path: Path, tiny_run: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("predictions.csv", "exports*", "features"))
    RunDir(run).write_json(RunDir.METRICS, {"num_examples": 0})
    front = _front(write_model_card(run).read_text(encoding="utf-8"))
    assert front["model-index"][0]["results"] == []


def test_hostile_class_names_cannot_inject_markup_or_terminal_codes(tmp_path: Path, tiny_run: Path) -> None:
    import csv

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("exports*", "features"))
    hostile = {
        "daisy": "<img src=x onerror=alert(1)>",
        "roses": "a|b`c $m$\\z",
        "tulips": "red\x1b[31m [x](javascript:a)",
    }
    RunDir(run).write_class_names([hostile[n] for n in ("daisy", "roses", "tulips")])
    with open(run / "split.csv", newline="") as f:
        rows = list(csv.reader(f))
    with open(run / "split.csv", "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([rows[0], *([p, hostile[lab], s, h] for p, lab, s, h in rows[1:])])
    text = model_card(RunDir(run))
    assert "<img" not in text and "&lt;img src=x onerror=alert\\(1\\)&gt;" in text
    assert "\x1b" not in text and "red\\\\x1b\\[31m" in text  # renders as red\x1b[31m
    assert "| a\\|b\\`c \\$m\\$\\\\z |" in text  # the table keeps its columns; no code span, no math
    assert "](javascript" not in text and "\\[x\\]\\(javascript:a\\)" in text  # a link rendered as a link
    # The run's folder name, a weights file's name and an evaluated folder's name are the user's text too.
    named = tmp_path / "<img src=x onerror=alert(4)>"
    shutil.copytree(run, named)
    RunDir(named).write_json(
        RunDir.METRICS_EXTERNAL, {"accuracy": 0.5, "num_examples": 2, "source": "folder ext/<b>|[y](javascript:b)"}
    )
    config = (named / RunDir.CONFIG).read_text()
    (named / RunDir.CONFIG).write_text(re.sub(r"(?m)^weights: .*$", "weights: /w/<i>|x.weights.h5", config))
    text = model_card(RunDir(named))
    assert "x.weights.h5" in text
    # After the front matter (YAML, safely dumped), without code (shown verbatim, never rendered).
    body = re.sub(r"```.*?```", "", text.split("\n---\n", 1)[1], flags=re.S)
    body = re.sub(r"`[^`\n]*`", "", body)  # and code spans (_code: no backtick of a name can end one)
    assert "<img" not in body and "<b>" not in body and "<i>" not in body and "](javascript" not in body
    assert "# &lt;img src=x onerror=alert\\(4\\)&gt;" in body


def test_card_says_how_many_epochs_ran_and_which_was_kept(writable_run: Path) -> None:
    """The card gave the configured epochs: '10 epochs' for a stage early stopping ended after 6."""
    from floranet.evaluation.modelcard import model_card

    run = RunDir(writable_run)
    config = run.config()
    state = run.read_json(RunDir.STATE)
    state["stages"]["stage1"].update(
        epochs_done=config.epochs - 1, best_weights=f"checkpoints/stage1-best-epoch{config.epochs - 2:03d}.weights.h5"
    )
    run.write_json(RunDir.STATE, state)
    card = model_card(run)
    stage1 = next(line for line in card.splitlines() if line.startswith("| stage 1 (frozen backbone) |"))
    expected = f"{config.epochs - 1} of {config.epochs} epochs (early stopping), epoch {config.epochs - 2} kept"
    assert expected in stage1, stage1
    stage2 = next(line for line in card.splitlines() if line.startswith("| stage 2 (fine-tuning) |"))
    assert f"| {config.fine_tune_epochs} epochs, " in stage2, stage2


def test_card_training_time_is_the_trainings_not_the_whole_command(writable_run: Path) -> None:
    """The card read timings_s['total']: the training's time when train wrote it, the whole command's (evaluation,
    audit, report) once the command had finished, so `floranet evaluate` changed the training time it showed."""
    import json

    metrics = json.loads((writable_run / "metrics.json").read_text())
    assert metrics.pop("trained_on")["cores"]  # training records its machine; a run from before did not
    metrics["timings_s"] = {"training": 12.0, "audit": 40.0, "total": 99.0}
    (writable_run / "metrics.json").write_text(json.dumps(metrics))
    assert "| training time | 12 s |" in write_model_card(writable_run).read_text(encoding="utf-8")
    metrics["timings_s"] = {"total": 7.0}  # as metrics.json holds them while train is still running
    (writable_run / "metrics.json").write_text(json.dumps(metrics))
    assert "| training time | 7 s |" in write_model_card(writable_run).read_text(encoding="utf-8")
    # A time holds for the CPU kind that took it: the card names it.
    metrics["trained_on"] = {"cpu": "Imaginary CPU 9000", "cores": "2", "native bf16": "no"}
    (writable_run / "metrics.json").write_text(json.dumps(metrics))
    card = write_model_card(writable_run).read_text(encoding="utf-8")
    assert "| training time | 7 s on Imaginary CPU 9000, 2 cores |" in card


def test_a_damaged_side_file_is_left_out_of_the_card_not_fatal(writable_run: Path, capsys) -> None:
    """evaluate wrote its results, then failed (exit 2) on a damaged audit.json, ood.json or metrics_external.json
    that the card reads, leaving README.md stale without a word that the evaluation was saved. The card now leaves
    such a file's part out, with a line that names it, and the command warns with the file and the problem."""
    (writable_run / RunDir.AUDIT).write_text("garbage")
    (writable_run / RunDir.OOD).write_text("[1, 2]")
    (writable_run / RunDir.METRICS_EXTERNAL).write_text("{cut")
    (writable_run / "README.md").unlink()
    assert main(["evaluate", str(writable_run)]) == 0
    err = capsys.readouterr().err
    assert f"Model card without audit.json: {writable_run / RunDir.AUDIT} is damaged (not valid JSON" in err
    assert f"Model card without ood.json: {writable_run / RunDir.OOD} is damaged (not a JSON object)" in err
    assert "Model card without metrics_external.json" in err and "Traceback" not in err
    card = (writable_run / "README.md").read_text(encoding="utf-8")
    # The card's line names the command that writes the file, as the warning does.
    said = "is left out of this card: it is damaged"
    assert f"- *`audit.json` {said} (not valid JSON); it is written by `floranet audit`.*" in card
    assert f"- *`ood.json` {said} (not a JSON object); it is written by `floranet train`.*" in card
    assert f"*`metrics_external.json` {said} (not valid JSON); it is written by `floranet evaluate --data`.*" in card
    assert f"On {RunDir(writable_run).metrics()['num_examples']} validation images" in card


@pytest.mark.parametrize(
    ("name", "damage", "why", "writer"),
    [
        ("doctor.json", '{"summary": 5}', "summary is int, not an object", "rerun the step that wrote it"),
        (
            "state.json",
            '{"stages": {"stage1": 3}}',
            "stages.stage1 is int, not an object",
            "it is written by `floranet train`",
        ),
    ],
)
def test_a_side_file_of_the_wrong_shape_is_left_out_of_the_card(writable_run: Path, name, damage, why, writer) -> None:
    """A doctor.json whose summary, or a state.json whose stage, was not an object (a hand edit) failed the card
    with AttributeError: 'int' object has no attribute 'get'. Now it is left out by name, like an unparsable one,
    with the command that writes it where one command does (doctor.json has two: train and audit)."""
    (writable_run / name).write_text(damage)
    said: list[str] = []
    card = write_model_card(writable_run, say=said.append).read_text(encoding="utf-8")
    damaged = f"{writable_run / name} is damaged ({why}); {writer}"
    assert said == [f"Model card without {name}: {damaged}"]
    if name == "doctor.json":
        assert f"*`{name}` is left out of this card: it is damaged ({why}); {writer}.*" in card


def test_card_says_when_no_temperature_was_fitted_as_the_report_does(writable_run: Path) -> None:
    """With calibration.json's `"fitted": false` (every validation answer right, or one validation image) the card
    said "after temperature scaling (T = 1.000, fitted on the validation split, ...)"; the report said no temperature
    could be fitted. The card now reads `fitted` and says what the report says."""
    import json

    from floranet.evaluation.calibration import NOT_FITTED

    run = RunDir(writable_run)
    metrics = run.metrics()
    metrics["calibration"]["temperature"] = 1.0
    run.write_json(RunDir.METRICS, metrics)
    calibration = json.loads((writable_run / RunDir.CALIBRATION).read_text())
    run.write_json(RunDir.CALIBRATION, {**calibration, "temperature": 1.0, "fitted": False})
    card = model_card(run)
    assert f"; {NOT_FITTED} (`calibration.json`)." in card and "fitted on the validation split" not in card
    run.write_json(RunDir.CALIBRATION, {**calibration, "fitted": True})
    assert "fitted on the validation split" in model_card(run) and NOT_FITTED not in model_card(run)


def test_card_and_report_say_where_the_temperature_search_stopped_at_its_bound(writable_run: Path) -> None:
    """A temperature the search left at its bound (100 for a model answering one class, 0.01 for an underconfident
    one) was shown as fitted on the validation split; calibration.json's `at_bound` now says so, and a file from
    before it (no `at_bound`) still reads as it did."""
    import json

    from floranet.evaluation.calibration import AT_LOWER_BOUND, AT_UPPER_BOUND, NOT_FITTED_BEFORE
    from floranet.evaluation.card_facts import CardFacts
    from floranet.evaluation.report import _calibration

    run = RunDir(writable_run)
    calibration = json.loads((writable_run / RunDir.CALIBRATION).read_text())
    run.write_json(RunDir.CALIBRATION, {**calibration, "fitted": False, "at_bound": "upper"})
    card = model_card(run)
    assert AT_UPPER_BOUND in card and "fitted on the validation split" not in card
    assert AT_UPPER_BOUND in _calibration(CardFacts.read(run), run.metrics())  # the report's section
    run.write_json(RunDir.CALIBRATION, {**calibration, "fitted": True, "at_bound": "lower"})
    assert AT_LOWER_BOUND in model_card(run) and "fitted on the validation split" in model_card(run)
    old = {k: v for k, v in calibration.items() if k != "at_bound"}
    run.write_json(RunDir.CALIBRATION, {**old, "fitted": False})
    assert NOT_FITTED_BEFORE in model_card(run) and "left out of this card" not in model_card(run)
    run.write_json(RunDir.CALIBRATION, {**calibration, "at_bound": 3})
    assert "*`calibration.json` is left out of this card: it is damaged (at_bound is int" in model_card(run)


def test_card_recipe_lists_class_weights_when_set(writable_run: Path) -> None:
    """--class-weights auto changes the model (a minority image's probability 0.041 without, 0.834 with), but the
    card's training recipe did not list it."""
    assert "| class weights" not in write_model_card(writable_run).read_text(encoding="utf-8")
    cfg = yaml.safe_load((writable_run / "config.yaml").read_text())
    (writable_run / "config.yaml").write_text(yaml.safe_dump({**cfg, "class_weights": "auto"}, sort_keys=False))
    card = write_model_card(writable_run).read_text(encoding="utf-8")
    from sklearn.utils.class_weight import compute_class_weight

    split = RunDir(writable_run).split()
    y = [split.label_index(r.label) for r in split.train()]
    balanced = compute_class_weight("balanced", classes=np.arange(len(split.class_names)), y=y)  # what training uses
    weights = ", ".join(f"{name} {w:.3g}" for name, w in zip(split.class_names, balanced, strict=True))
    assert (
        "| class weights (`--class-weights auto`) | balanced, n / (classes x the class's training images), from the "
        f"training counts: {weights} |"
    ) in card
