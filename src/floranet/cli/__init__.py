"""The ``floranet`` command: parse, call one library function, print.

One module per group of subcommands; each subcommand is an ``add_<name>`` (its arguments) and a
``run_<name>`` (the call). Heavy libraries are imported inside the runners, only on the paths that need them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from floranet.cli import audit, data, deploy, inference, training
from floranet.cli.common import quiet_tensorflow_import

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ADDERS = (
    training.add_demo,
    training.add_train,
    data.add_doctor,
    audit.add_audit,
    data.add_fetch,
    inference.add_evaluate,
    inference.add_predict,
    inference.add_explain,
    inference.add_report,
    deploy.add_export,
    deploy.add_serve,
    data.add_backbones,
)
# Commands that never touch TensorFlow (nothing to silence, nothing to wait for).
_WITHOUT_TENSORFLOW = frozenset({"doctor", "fetch", "backbones"})


def build_parser() -> argparse.ArgumentParser:
    from floranet import __version__

    parser = argparse.ArgumentParser(prog="floranet", description="Train and use ResNet image classifiers.")
    parser.add_argument("--version", action="version", version=f"floranet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in ADDERS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from floranet.errors import FloranetError

    try:
        if args.command not in _WITHOUT_TENSORFLOW:
            quiet_tensorflow_import()
        code: int = args.run(args)
        return code
    except FloranetError as e:
        print(f"floranet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
