"""``floranet audit``: label issues, near-duplicates and outliers of a data folder or a run."""

from __future__ import annotations

import argparse
import sys

from floranet.cli.common import Subparsers, command, int_or_pair, non_negative_int, say, say_lines
from floranet.cli.training import TRAIN_KEYS
from floranet.config import PRECISIONS, PRESETS, RUNTIMES


def add_audit(sub: Subparsers) -> None:
    p = command(
        sub,
        "audit",
        run_audit,
        help="find likely wrong labels, near-duplicates (conflicts, train/validation leaks) and outliers",
        description="Audits DATA_DIR (into --out, default runs/audit-<name>) or a run directory (into it). "
        "Writes audit.json, audit.csv, audit.html; never moves or changes an image.",
    )
    p.add_argument("target", metavar="DATA_DIR|RUN_DIR")
    p.add_argument("--out", help="audit folder for a DATA_DIR (default: runs/audit-<data folder name>)")
    p.add_argument("--folds", type=int, default=5, help="k of the out-of-fold head training (default 5)")
    p.add_argument("--top", type=non_negative_int, default=10, help="files of each kind to print (default 10)")
    g = p.add_argument_group("features and head for a DATA_DIR (as `floranet train`)")
    g.add_argument("--preset", choices=list(PRESETS), help="default: recommended")
    g.add_argument("--backbone")
    g.add_argument("--weights", help="imagenet | none | PATH")
    g.add_argument("--image-size", type=int_or_pair)
    g.add_argument("--batch-size", type=int)
    g.add_argument(
        "--epochs", type=int, help="epochs of each out-of-fold head (at least 5; 5 on sets of over 20 batches)"
    )
    g.add_argument("--learning-rate", type=float, help="of each out-of-fold head")
    g.add_argument("--head-units", type=int)
    g.add_argument("--dropout", type=float)
    g.add_argument("--label-smoothing", type=float, help="of the heads' targets, in [0, 1)")
    g.add_argument("--seed", type=int)
    g.add_argument("--val-split", type=float)
    g.add_argument("--max-pixels", type=int, help="larger images are left out (decompression-bomb guard)")
    g.add_argument("--runtime", choices=RUNTIMES)
    g.add_argument("--precision", choices=PRECISIONS, help="of the feature extraction")


def run_audit(args: argparse.Namespace) -> int:
    from floranet.evaluation.audit_report import summary
    from floranet.rundir import RunDir
    from floranet.workflows.audit import audit

    # The settings of `train` this command has (features and head of a DATA_DIR), given ones only.
    settings = {k: getattr(args, k) for k in TRAIN_KEYS if getattr(args, k, None) is not None}
    outcome = audit(args.target, out=args.out, folds=args.folds, progress=sys.stderr.isatty(), **settings)
    say_lines(summary(outcome.result, args.top))  # file and class names escaped
    run = outcome.run
    say(f"Wrote {run / RunDir.AUDIT_CSV}, {run / RunDir.AUDIT} and {run / RunDir.AUDIT_HTML}")
    return 0
