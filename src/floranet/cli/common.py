"""Helpers every command module shares: argument types, shared flags, the TensorFlow start-up banner."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from floranet.config import PRECISIONS, RUNTIMES, UNKNOWN_SWITCH
from floranet.errors import ConfigError
from floranet.utils.text import printable

Runner = Callable[[argparse.Namespace], int]
Subparsers = Any  # argparse's _SubParsersAction, which it does not export
# Every command's arguments that name one file or folder (predict's and explain's inputs aside: one that names no
# image is an error row of its own). An empty one, as an unset shell variable gives, is the current folder to
# Path(""): `evaluate RUN --data ""` evaluated whatever folder the shell was in.
PATH_ARGUMENTS: tuple[str, ...] = ("run_dir", "data_dir", "target", "data", "out", "output", "json", "config")
PATH_ARGUMENTS += ("split_file", "exclude", "relabel", "cache_dir")


def say(message: str) -> None:
    """Prints one message to stdout with untrusted text (file and class names) escaped."""
    print(printable(message), flush=True)


def say_lines(text: str) -> None:
    """Prints a block of several lines (its own line breaks kept), each line escaped as :func:`say` does."""
    for line in text.splitlines():
        say(line)


def warn(message: str) -> None:
    """:func:`say` on stderr."""
    print(printable(message), file=sys.stderr, flush=True)


def quiet_tensorflow_import() -> None:
    """Imports TensorFlow with its C++ start-up banner (absl lines on fd 2) silenced."""
    if "tensorflow" in sys.modules or os.environ.get("FLORANET_VERBOSE_TF"):
        return
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401 - imported for its side effect, here where its banner is silenced
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def check_paths(args: argparse.Namespace) -> None:
    """Refuses an empty path among ``args`` (:data:`PATH_ARGUMENTS`), before anything is read or written.

    Raises:
        ConfigError: One is ``""``; it is named.
    """
    for name in PATH_ARGUMENTS:
        if getattr(args, name, None) == "":
            raise ConfigError(
                f"{name} must be a path, not empty (an empty path would be the current folder). Received: {name}=''"
            )


def int_or_pair(text: str) -> int | tuple[int, int]:
    """``180`` or ``180x240`` (or ``180,240``) from the command line."""
    parts = text.lower().replace("x", ",").split(",")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int or HxW, got {text!r}") from None
    if len(values) > 2:  # 32x48x7 was taken as 32x48
        raise argparse.ArgumentTypeError(f"expected an int or HxW (two numbers at most), got {text!r}")
    return values[0] if len(values) == 1 else (values[0], values[1])


def int_or_none(text: str) -> int | str:
    """An argparse type: a whole number, or ``none`` (kept as the word: it unsets a config file's value)."""
    if text in ("none", "None"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int or none, got {text!r}") from None


def non_negative_int(text: str) -> int:
    """An argparse type: a whole number >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an int >= 0. Received: {text}")
    return value


def add_runtime(p: argparse.ArgumentParser) -> None:
    """``--runtime`` and ``--precision`` of the commands that run a finished model."""
    p.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="auto",
        help="inference runtime (auto: TensorFlow on a GPU; else the run's compiled OpenVINO model, else OpenVINO "
        "for 256+ images or a server, else TensorFlow)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="inference precision (auto: bf16 where the CPU has it natively and it is safe)",
    )


def add_unknown(p: argparse.ArgumentParser) -> None:
    """``--unknown on|off`` of the commands that answer for a finished model."""
    p.add_argument(
        "--unknown",
        choices=UNKNOWN_SWITCH,
        default=UNKNOWN_SWITCH[0],
        help="answer 'unknown' for images unlike every class (the run's ood.json); off: never",
    )


def command(sub: Subparsers, name: str, run: Runner, **kwargs: Any) -> argparse.ArgumentParser:
    """Adds subcommand ``name`` whose arguments ``run`` receives."""
    p: argparse.ArgumentParser = sub.add_parser(name, **kwargs)
    p.set_defaults(run=run, parser=p)  # parser: its own usage and name in an error (main)
    return p
