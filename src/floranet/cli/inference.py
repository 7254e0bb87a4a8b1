"""``floranet evaluate``, ``predict``, ``explain`` and ``report``: using a finished run."""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import TYPE_CHECKING, Any

from floranet.cli.common import Subparsers, add_runtime, add_unknown, command, say, warn
from floranet.config import ENGINES, OUTPUT_FORMATS

if TYPE_CHECKING:
    from floranet.evaluation.calibration import TemperatureFit


def add_evaluate(sub: Subparsers) -> None:
    p = command(sub, "evaluate", run_evaluate, help="metrics, calibration and plots on held-out data")
    p.add_argument("run_dir")
    p.add_argument("--data", help="another labelled folder-per-class set (default: the run's validation split)")
    p.add_argument("--batch-size", type=int, default=32)
    add_runtime(p)


def run_evaluate(args: argparse.Namespace) -> int:
    from floranet.evaluation import evaluate_run, write_evaluation
    from floranet.evaluation.metrics import unmeasured_classes
    from floranet.evaluation.modelcard import write_model_card
    from floranet.rundir import RunDir
    from floranet.utils.text import figure_text, printable

    external = args.data is not None
    # Locked before computing: a run that another command is writing is refused at once, not after the work
    with RunDir.open(args.run_dir).lock(hint="wait for it to finish") as run:  # evaluate has no --out
        if external:  # not rewritten, but the model card refreshed after the results is: a damaged one fails now
            run.metrics()
        ev = evaluate_run(
            args.run_dir, data_dir=args.data, batch_size=args.batch_size, runtime=args.runtime, precision=args.precision
        )
        m = write_evaluation(ev, run, external=external, say=warn)
        card = write_model_card(run.path, say=warn)
    say(
        f"{ev.source}: {m['num_examples']} images, accuracy {figure_text(m.get('accuracy', 0), '.1%')}, "
        f"loss {m.get('loss', 0):.3f}, ECE {m['calibration']['ece']:.3f} "
        f"({_after_temperature(ev.fit, ev.temperature, m['calibration']['ece_after_temperature'])})"
    )
    for t, p_, c in ev.most_confused()[:5]:
        say(f"  {t} predicted as {p_}: {c}")
    unmeasured = unmeasured_classes(m)
    if unmeasured:  # the accuracy says nothing of them (an empty class folder of --data was not said)
        warn(f"Not measured (no image evaluated): {', '.join(printable(n) for n in unmeasured)}.")
    _left_out(ev.extra, args.data or ev.data_dir)
    if external:
        wrote = f"{RunDir.METRICS_EXTERNAL}, {RunDir.PREDICTIONS_EXTERNAL}, plots/*_external.png"
    else:
        wrote = f"{RunDir.METRICS}, {RunDir.PREDICTIONS}, {RunDir.CALIBRATION}, plots/"
    why = f": {ev.extra['evaluated_on_why']}" if ev.extra.get("evaluated_on_why") else ""
    say(f"Ran on {ev.extra['evaluated_on']}{why}. Wrote {wrote} and {card.name} (model card) in {args.run_dir}.")
    if not external:  # the page still shows training's evaluation until it is built again
        say(f"{RunDir.REPORT} still shows training's evaluation: `floranet report {args.run_dir}` rebuilds it.")
    return 0


def _after_temperature(fit: TemperatureFit | None, temperature: float, ece_after: float) -> str:
    """The ECE after the temperature, or why none was fitted (``fit``: the evaluation's TemperatureFit, None for
    another folder's, scored with the run's temperature)."""
    if fit is not None and not fit.fitted:
        bound = ": the NLL still falls at T = 100, the search's upper bound" if fit.at_bound == "upper" else ""
        return f"no temperature fitted{bound}; T = 1 kept"
    bound = ", the search's lower bound" if fit is not None and fit.at_bound == "lower" else ""
    return f"after temperature {temperature:.2f}{bound}: {ece_after:.3f}"


def _left_out(extra: dict[str, Any], data: str) -> None:
    """Warns of each kind of image an evaluation left out of its figures (``extra``: its facts), with why."""
    files = extra.get("validation_files", {})
    if files.get("missing") or files.get("changed"):
        warn(
            f"{files['missing']} validation file(s) of split.csv are gone and {files['changed']} changed since "
            f"training (sha256): evaluated on the other {files['evaluated']} of {files['recorded']}."
        )
    if extra.get("training_images_left_out"):
        warn(
            f"{extra['training_images_left_out']} image(s) of {data} are training images of the run (the same "
            "file as in split.csv): left out, so the figures above are on images the model has not seen."
        )
    doctor = f"`floranet doctor {data}` says which"
    if extra.get("too_large_left_out"):
        warn(
            f"{extra['too_large_left_out']} image(s) are larger than the run decodes (its max_pixels) and are left "
            f"out of the figures above ({doctor}); raise max_pixels in the run's config.yaml to evaluate them."
        )
    if extra.get("label_conflicts_left_out"):
        warn(
            f"{extra['label_conflicts_left_out']} image(s) are label conflicts (the same file in two class folders, "
            f"so which label is right is unknown) and are left out of the figures above ({doctor})."
        )
    if extra.get("unreadable_left_out"):
        warn(
            f"{extra['unreadable_left_out']} file(s) could not be read as images and are left out of the figures "
            f"above ({doctor} and why)."
        )


def add_predict(sub: Subparsers) -> None:
    p = command(sub, "predict", run_predict, help="classify images, folders or globs")
    p.add_argument("run_dir")
    p.add_argument("paths", nargs="+")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument(
        "--format", choices=OUTPUT_FORMATS, help="default: from the --output suffix (.csv, .json, .parquet), else table"
    )
    p.add_argument("--output", help="write to this file instead of standard output")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--low-confidence", type=float, default=0.5, help="flag rows whose top probability is below this (default 0.5)"
    )
    p.add_argument("--calibrated", action="store_true", help="report temperature-scaled probabilities")
    p.add_argument("--unsafe", action="store_true", help="allow loading a model that contains code")
    add_runtime(p)
    add_unknown(p)
    p.add_argument("--engine", default="local", help=f"{' or '.join(ENGINES)} (Ray actors; floranet[ray])")
    p.add_argument("--ray-address", help="Ray cluster host:port (default: RAY_ADDRESS, else a local Ray instance)")
    p.add_argument("--workers", type=int, help="Ray actors, each loading the model once (default: one per CPU)")


def run_predict(args: argparse.Namespace) -> int:
    from floranet.config import InferenceConfig
    from floranet.errors import ConfigError
    from floranet.inference import formats, load
    from floranet.inference import ray as ray_engine
    from floranet.rundir import RunDir

    ray_engine.check_engine(args.engine, address=args.ray_address, num_workers=args.workers)
    if args.format == "parquet" and not args.output:
        raise ConfigError("format='parquet' needs --output FILE.parquet. Received: output=None")
    if args.output:
        formats.check_output(args.output, args.paths, args.run_dir, args.format)  # before any image is predicted
    settings = InferenceConfig(
        runtime=args.runtime,
        precision=args.precision,
        batch_size=args.batch_size,
        top_k=args.top_k,
        low_confidence=args.low_confidence,
        calibrated=args.calibrated,
        safe_mode=not args.unsafe,
        unknown=args.unknown == "on",
    )
    if args.engine == "ray":  # stderr: stdout stays clean CSV/JSON
        rows = ray_engine.predict_with_ray(
            args.run_dir,
            args.paths,
            settings,
            address=args.ray_address,
            num_workers=args.workers,
            say=warn,
        )
        classes = len(RunDir(args.run_dir).class_names())
    else:
        predictor = load(args.run_dir, settings)
        rows = predictor.predict(args.paths)
        classes = len(predictor.class_names)
        if predictor.choice is not None:
            print(
                f"Ran on {predictor.choice.runtime} {predictor.choice.precision}: {predictor.choice.reason}.",
                file=sys.stderr,
            )
    columns = formats.class_columns(settings.top_k, classes)  # one layout for every file of this run and --top-k
    if args.output:
        formats.write_predictions(rows, args.format, args.output, columns=columns)
        failed = sum(1 for r in rows if r.error)
        say(
            f"{len(rows)} row(s) written to {args.output}: {len(rows) - failed} predicted"
            + (f", {failed} with an error (see their error column)" if failed else "")
        )
    else:
        text = formats.format_predictions(rows, args.format or "table", columns=columns)
        sys.stdout.write(formats.terminal_text(text) if sys.stdout.isatty() else text)
    return 1 if rows and all(r.error for r in rows) else 0


def add_explain(sub: Subparsers) -> None:
    p = command(sub, "explain", run_explain, help="Grad-CAM overlays: where the model looked")
    p.add_argument("run_dir")
    p.add_argument("paths", nargs="+", help="images, folders or globs, as predict takes them")
    p.add_argument(
        "--out",
        default=".",
        help="folder for <image>.gradcam.png files (default: the current folder; not in the run directory or its "
        "data folder)",
    )
    p.add_argument(
        "--class", dest="class_name", metavar="CLASS", help="explain this class (default: the predicted one)"
    )


def run_explain(args: argparse.Namespace) -> int:
    from floranet.workflows.explain import explain

    failed: list[object] = []

    def unreadable(path: object, error: Exception) -> None:
        failed.append(path)
        warn(f"floranet explain: {error}")

    # Image and overlay: a/x.jpg and b/x.jpg get x.gradcam.png and x.2.gradcam.png, which alone do not say which
    for image, overlay in explain(args.run_dir, args.paths, args.out, class_name=args.class_name, on_error=unreadable):
        say(f"{image} -> {overlay}")
    return 1 if failed else 0


def add_report(sub: Subparsers) -> None:
    p = command(sub, "report", run_report, help="write RUN_DIR/report.html (self-contained)")
    p.add_argument("run_dir")
    p.add_argument("--out", help="write the HTML here instead")


def run_report(args: argparse.Namespace) -> int:
    from floranet.evaluation.report import build_report, writes_into_run
    from floranet.rundir import RunDir

    # Checked before the lock, which would make the folder of a mistyped path
    run = RunDir.open(args.run_dir, needs=RunDir.FINISHED)
    with contextlib.ExitStack() as held:
        # Only a report that writes into the run holds its lock: its own report.html, or the evaluation a run
        # without predictions.csv stores. `--out` elsewhere reads the run, which may be read-only or busy.
        if writes_into_run(run, args.out) or not run.exists(RunDir.PREDICTIONS):
            held.enter_context(run.lock(hint="wait for it to finish, or give --out another file"))
        say(str(build_report(args.run_dir, out=args.out, say=warn)))
    return 0
