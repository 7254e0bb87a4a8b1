"""``floranet demo`` and ``floranet train``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from floranet.cli.common import Subparsers, command, int_or_none, int_or_pair, say, warn
from floranet.config import (
    AUGMENT_CHOICES,
    CLASS_WEIGHTS,
    DISTRIBUTE_CHOICES,
    FINE_TUNE_CACHE,
    MLFLOW_EXPERIMENT,
    PRESETS,
    RUNTIMES,
    SCHEDULES,
    TRAIN_PRECISIONS,
    UNKNOWN_METHODS,
)
from floranet.errors import ConfigError

# Settings of `train` that map one to one onto TrainConfig fields.
TRAIN_KEYS = (
    "preset",
    "backbone",
    "weights",
    "image_size",
    "batch_size",
    "epochs",
    "fine_tune_epochs",
    "learning_rate",
    "fine_tune_learning_rate",
    "fine_tune_cache",
    "fine_tune_views",
    "schedule",
    "val_split",
    "seed",
    "precision",
    "runtime",
    "augment",
    "class_weights",
    "dropout",
    "label_smoothing",
    "head_units",
    "early_stopping_patience",
    "max_pixels",
    "split_file",
    "distribute",
    "workers",
    "worker_index",
    "exclude",
    "relabel",
    "audit",
    "unknown_method",
    "unknown_keep",
)


def add_demo(sub: Subparsers) -> None:
    p = command(sub, "demo", run_demo, help="the Keras flower tutorial end to end (works offline)")
    p.add_argument("--data", help="folder-per-class image set (default: flower_photos, else the bundled sample)")
    p.add_argument("--out", help="run directory (default: runs/demo-<time>)")
    p.add_argument("--epochs", type=int, help="stage-1 (head) epochs (default: the recipe's)")
    p.add_argument("--fine-tune-epochs", type=int, help="stage-2 epochs (default: the recipe's; offline: none)")
    p.add_argument("--image-size", type=int_or_pair, help="pixels, N or HxW (default: the recipe's; offline: 160)")


def run_demo(args: argparse.Namespace) -> int:
    from floranet.workflows.demo import run_demo as demo

    demo(
        args.data,
        args.out,
        epochs=args.epochs,
        fine_tune_epochs=args.fine_tune_epochs,
        image_size=args.image_size,
        progress=sys.stderr.isatty(),  # no progress bars or colour codes in a log or a pipe, as train
        say=say,
    )
    return 0


def add_train(sub: Subparsers) -> None:
    p = command(sub, "train", run_train, help="train a classifier on DATA_DIR")
    p.add_argument("data_dir")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    p.add_argument(
        "--mlflow",
        nargs="?",
        const="",
        metavar="URI",
        help="also log the run to MLflow (params, per-epoch metrics, artefacts, the model); URI: tracking "
        "server or store (default: $MLFLOW_TRACKING_URI; MLflow's own default, sqlite:///mlflow.db, needs the full "
        "mlflow package); needs floranet[mlflow]",
    )
    _add_experiment(p)
    g = p.add_argument_group("training settings (override --config and the preset)")
    g.add_argument("--config", help="YAML file of settings")
    g.add_argument("--preset", choices=list(PRESETS))
    g.add_argument("--backbone", help="resnet50 (default), resnet18, mobilenet_v2, ... (see `floranet backbones`)")
    g.add_argument("--weights", help="imagenet | none | PATH to a weights file")
    g.add_argument("--image-size", type=int_or_pair, help="pixels, N or HxW (height x width), e.g. 180 or 180x240")
    g.add_argument("--batch-size", type=int)
    g.add_argument("--epochs", type=int, help="stage 1 epochs (frozen backbone)")
    g.add_argument("--fine-tune-epochs", type=int, help="stage 2 epochs (top of the backbone unfrozen)")
    _add_fine_tuning(g)
    g.add_argument("--val-split", type=float)
    g.add_argument("--seed", type=int)
    g.add_argument(
        "--precision",
        choices=TRAIN_PRECISIONS,
        help="auto: bf16 feature extraction and mixed-bf16 fine-tuning where the CPU computes bf16 "
        "natively, fp32 elsewhere; bf16: every stage in mixed bf16; int8: the frozen layers run in OpenVINO "
        "int8 (calibrated on training images), training in fp32",
    )
    g.add_argument("--runtime", choices=RUNTIMES, help="runtime of frozen-feature extraction (auto: the fastest)")
    g.add_argument(
        "--augment",
        nargs="?",
        const="all",
        choices=AUGMENT_CHOICES,
        help="bare --augment: every stage (stage 1 then runs the full model)",
    )
    g.add_argument("--class-weights", choices=(*CLASS_WEIGHTS, "none"), help="none: every class weighs the same")
    g.add_argument("--dropout", type=float)
    g.add_argument("--label-smoothing", type=float, help="of the head's targets, in [0, 1)")
    g.add_argument("--head-units", type=int)
    g.add_argument("--early-stopping-patience", type=int, help="epochs without a better validation loss (0: off)")
    g.add_argument("--max-pixels", type=int, help="larger images are left out (decompression-bomb guard)")
    g.add_argument(
        "--split-file", help="reuse this split.csv instead of making a new split (none: not the config file's)"
    )
    _add_cluster_and_curation(p, g)


def _add_experiment(p: argparse.ArgumentParser) -> None:
    """``--experiment`` of ``train --mlflow`` and ``track``."""
    p.add_argument(
        "--experiment",
        metavar="NAME",
        help="MLflow experiment (default: $MLFLOW_EXPERIMENT_NAME, else the parent run's where there is one "
        f"($MLFLOW_RUN_ID), else {MLFLOW_EXPERIMENT})",
    )


def _add_fine_tuning(g: Any) -> None:
    """``train``'s learning-rate and stage-2 flags (in the settings group ``g``)."""
    g.add_argument("--learning-rate", type=float)
    g.add_argument("--fine-tune-learning-rate", type=float)
    g.add_argument(
        "--fine-tune-cache",
        choices=FINE_TUNE_CACHE,
        help="auto: stage 2 trains the unfrozen top on cached outputs of the frozen layers where the cache "
        "fits on disk; off: the whole model runs every epoch",
    )
    g.add_argument(
        "--fine-tune-views", type=int, help="augmented views cached for stage 2 (0: one per epoch, at most 2)"
    )
    g.add_argument(
        "--schedule",
        choices=SCHEDULES,
        help="learning rate over stage 2, and over stage 1 when it trains the whole model (--augment all); "
        "stage 1 on cached features keeps a constant rate",
    )


def _add_cluster_and_curation(p: argparse.ArgumentParser, g: Any) -> None:
    """``train``'s flags for several machines (in the settings group ``g``), data curation, the audit after
    training and the unknown answer."""
    g.add_argument(
        "--distribute",
        choices=DISTRIBUTE_CHOICES,
        help="data-parallel training; --batch-size is then per replica and the learning rates "
        "are scaled by the number of replicas",
    )
    g.add_argument(
        "--workers",
        help="multi-worker cluster as host:port,host:port (else TF_CONFIG is used; none: not the config file's)",
    )
    g.add_argument(
        "--worker-index",
        type=int_or_none,
        help="this process's index in --workers (0 is the chief; none: not the config file's)",
    )
    c = p.add_argument_group("data curation, audit and the unknown answer")
    c.add_argument(
        "--exclude",
        help="leave these files out: an audit.csv (its file column) or one relative path a line (none: not the "
        "config file's)",
    )
    c.add_argument(
        "--relabel",
        help="CSV of path,new_label (or an audit.csv: its label issues' suggested labels; none: not the config file's)",
    )
    c.add_argument(
        "--audit",
        action=argparse.BooleanOptionalAction,
        help="the label audit after training, when cheap (--no-audit skips it; wins over the config file)",
    )
    c.add_argument("--unknown-method", choices=UNKNOWN_METHODS, help="out-of-distribution score (default combined)")
    c.add_argument("--unknown-keep", type=float, help="share of known validation images kept (default 0.95)")


def run_train(args: argparse.Namespace) -> int:
    from floranet import config
    from floranet.utils.text import figure_text
    from floranet.workflows import train

    flags = {k: getattr(args, k) for k in TRAIN_KEYS}
    if args.config is not None and not args.config.strip():  # resolve's own message names its keyword, file
        raise ConfigError(f"config must be a YAML file path. Received: config={args.config!r}")
    cfg = config.resolve(file=args.config, data_dir=args.data_dir, out=args.out, **flags)
    # Progress bars only on a terminal: redirected to a file they are escape codes and carriage returns
    progress = sys.stderr.isatty()
    result = train(cfg, resume=args.resume, mlflow=args.mlflow, experiment=args.experiment, say=say, progress=progress)
    if not result.chief:  # its temporary folder is gone: naming it would send the user to nothing
        say(f"Done in {result.timings['total']:.0f} s: this worker's share; the chief writes the run directory.")
        return 0
    acc = result.metrics.get("accuracy")
    say(
        f"Done in {result.timings['total']:.0f} s."
        + (f" Validation accuracy {figure_text(acc, '.1%')}." if acc is not None else "")
    )
    say(f"Run directory: {result.run_dir}")
    if result.tracking_error:  # the run is complete; only the logging is left to do
        from floranet.utils.download import redacted

        uri = f" {redacted(args.mlflow)}" if args.mlflow else ""
        password = " (your password in place of ***)" if redacted(args.mlflow or "") != (args.mlflow or "") else ""
        warn(
            f"floranet train: logging to MLflow failed ({result.tracking_error}); the run is complete. "
            f"Log it when MLflow answers: floranet track {result.run_dir} --mlflow{uri}{password}"
        )
        return 1
    return 0


def add_track(sub: Subparsers) -> None:
    p = command(sub, "track", run_track, help="log a finished run to MLflow (as train --mlflow does)")
    p.add_argument("run_dir")
    p.add_argument(
        "--mlflow",
        nargs="?",
        const="",
        default="",
        metavar="URI",
        help="tracking server or store (default: $MLFLOW_TRACKING_URI; MLflow's own default, sqlite:///mlflow.db, "
        "needs the full mlflow package)",
    )
    _add_experiment(p)
    p.add_argument(
        "--again",
        action="store_true",
        help="log a run the experiment already holds (same run folder and model) once more; without it that is refused",
    )


def run_track(args: argparse.Namespace) -> int:
    from floranet.errors import FloranetError
    from floranet.workflows.tracking import log_to_mlflow
    from floranet.workflows.tracking_store import failure

    try:
        log_to_mlflow(args.run_dir, args.mlflow or None, experiment=args.experiment, again=args.again, say=say)
    except FloranetError:
        raise
    except Exception as e:  # noqa: BLE001 - MLflow's own errors, a server that does not answer: said, not a traceback
        warn(f"floranet track: logging to MLflow failed ({failure(e, args.mlflow or None)})")
        return 1
    return 0
