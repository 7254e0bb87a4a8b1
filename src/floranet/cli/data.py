"""``floranet doctor``, ``floranet fetch`` and ``floranet backbones``: the data and what to train it with."""

from __future__ import annotations

import argparse
import sys

from floranet.cli.common import Subparsers, command, say, warn
from floranet.config import DEFAULT_MAX_PIXELS


def add_doctor(sub: Subparsers) -> None:
    p = command(sub, "doctor", run_doctor, help="check a folder-per-class image set")
    p.add_argument("data_dir")
    p.add_argument("--json", help="also write the full report as JSON")
    p.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"images of more pixels (width x height) are unusable (default {DEFAULT_MAX_PIXELS:,})",
    )
    p.add_argument("--workers", type=int, help="decoding threads (default: up to 8)")


def run_doctor(args: argparse.Namespace) -> int:
    from floranet.data import doctor

    if args.json:  # before the (long) scan
        doctor.check_json_target(args.json, args.data_dir)
    report = doctor.diagnose(
        args.data_dir, max_pixels=args.max_pixels, workers=args.workers, progress=sys.stderr.isatty()
    )
    print(report.format_text())
    if args.json:
        report.write_json(args.json)
        say(f"JSON report: {args.json}")
    if not report.usable:
        warn(f"not usable: {report.reason}")
        return 1
    return 0


def add_fetch(sub: Subparsers) -> None:
    p = command(sub, "fetch", run_fetch, help="download a dataset into the cache (mini_flowers is bundled)")
    p.add_argument("name", nargs="?", default="flower_photos", help="flower_photos (default) or mini_flowers")
    p.add_argument("--cache-dir", help="default: $KERAS_HOME/datasets or ~/.keras/datasets")
    p.add_argument("--url", help="mirror URL of the archive (or set FLORANET_DATASETS_URL to a base URL)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to connect and for each read (default 10)")


def run_fetch(args: argparse.Namespace) -> int:
    from floranet.data import datasets

    path = datasets.fetch(
        args.name, cache_dir=args.cache_dir, url=args.url, timeout=args.timeout, progress=sys.stderr.isatty(), say=warn
    )
    say(str(path))
    return 0


def add_backbones(sub: Subparsers) -> None:
    command(sub, "backbones", run_backbones, help="list backbone names and where their ImageNet weights come from")


def run_backbones(args: argparse.Namespace) -> int:
    from floranet.models import registry

    width = max(map(len, registry.REGISTRY))
    for name, info in registry.REGISTRY.items():
        print(f"{name:<{width}}  ({info.describe_weights()})")
    print("keras:<any keras.applications model in snake_case>")
    return 0
