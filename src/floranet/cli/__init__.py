"""The ``floranet`` command: parse, call one library function, print.

One module per group of subcommands; each subcommand is an ``add_<name>`` (its arguments) and a
``run_<name>`` (the call). Heavy libraries are imported inside the runners, only on the paths that need them.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import signal
import sys
from collections.abc import Sequence

from floranet.cli import audit, compare, data, deploy, inference, training
from floranet.cli.common import check_paths, quiet_tensorflow_import, warn

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ADDERS = (
    training.add_demo,
    training.add_train,
    training.add_track,
    data.add_doctor,
    audit.add_audit,
    data.add_fetch,
    inference.add_evaluate,
    inference.add_predict,
    inference.add_explain,
    inference.add_report,
    deploy.add_export,
    deploy.add_serve,
    compare.add_compare,
    data.add_backbones,
)
# Commands that never touch TensorFlow (nothing to silence, nothing to wait for).
_WITHOUT_TENSORFLOW = frozenset({"doctor", "fetch", "backbones"})
# Commands that run a finished model: without TensorFlow when the run's compiled model can be used.
_COMPILED_OK = frozenset({"predict", "evaluate", "serve"})


def _needs_tensorflow(args: argparse.Namespace) -> bool:
    """Whether the command will import TensorFlow (then it is imported now, its start-up banner silenced)."""
    if args.command in _WITHOUT_TENSORFLOW:
        return False
    if args.command in _COMPILED_OK and getattr(args, "runtime", "auto") in ("auto", "openvino"):
        from floranet.inference.predictor import compiled_model
        from floranet.inference.unknown import needs_features
        from floranet.rundir import RunDir

        run = RunDir(args.run_dir)
        unknown = getattr(args, "unknown", "off") == "on"  # evaluate runs without the unknown answer
        ir, _ = compiled_model(run, args.runtime, features=unknown and needs_features(run.path))
        return ir is None  # the run's compiled model needs no TensorFlow
    return True


def build_parser() -> argparse.ArgumentParser:
    from floranet import __version__

    parser = argparse.ArgumentParser(prog="floranet", description="Train and use ResNet image classifiers.")
    parser.add_argument("--version", action="version", version=f"floranet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in ADDERS:
        add(sub)
    return parser


def console_main() -> None:
    """The ``floranet`` console script: :func:`main`, and an exit that skips the interpreter's teardown.

    After a command that loaded TensorFlow or OpenVINO, tearing down their C++ state and every module took
    1.8 s of a ``train`` and wrote nothing. So once ``main`` has returned and the exit handlers have run (they
    are registered after this one and run first: logging, Ray, MLflow, ...), the process ends with the code.
    """
    atexit.register(_end_now)
    for stream in (sys.stdout, sys.stderr):  # a terminal or file that is not UTF-8 (cp1252, latin-1): a class name's
        if hasattr(stream, "reconfigure"):  # "é" or the demo's "→" is shown escaped, not a UnicodeEncodeError
            stream.reconfigure(errors="backslashreplace")
    code = main()
    if "tensorflow" in sys.modules or "openvino" in sys.modules:
        _EXIT_CODE.append(code)
    sys.exit(code)


_EXIT_CODE: list[int] = []  # set when console_main's command returned and its process may end at once


def _end_now() -> None:
    if not _EXIT_CODE:  # an exception or SystemExit: the usual exit, with its own code and message
        return
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more can be written anyway
            stream.flush()
    os._exit(_EXIT_CODE[0])


def main(argv: Sequence[str] | None = None) -> int:
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:  # said by the command's own parser: the top one gave its usage and "floranet: error"
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    from floranet.errors import FloranetError

    try:
        check_paths(args)
        if _needs_tensorflow(args):
            quiet_tensorflow_import()
        code: int = args.run(args)
        return code
    except FloranetError as e:
        warn(f"floranet {args.command}: error: {e}")
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `floranet doctor DATA | head`: the reader left; no traceback, no second one at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
