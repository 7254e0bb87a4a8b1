"""``floranet compare``: backbones side by side on one split."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from floranet.cli.common import Subparsers, add_runtime, command, int_or_pair
from floranet.errors import ConfigError


def add_compare(sub: Subparsers) -> None:
    p = command(sub, "compare", run_compare, help="train several backbones on one split and rank them")
    p.add_argument("data_dir")
    p.add_argument("--backbones", required=True, help="comma-separated, e.g. mobilenet_v2,resnet50,efficientnet_b0")
    p.add_argument("--out", default="runs/compare", help="comparison folder: split.csv, one run per backbone, table")
    p.add_argument(
        "--weights",
        action="append",
        default=[],
        metavar="[BACKBONE=]WEIGHTS",
        help="imagenet | none | PATH, for one backbone (BACKBONE=..., BACKBONE one of --backbones) or every other "
        "one; repeatable "
        "(default: imagenet; a backbone whose weights cannot be had offline is skipped with the reason)",
    )
    p.add_argument("--fine-tune", action="store_true", help="include stage 2 (default: stage 1 on cached features)")
    p.add_argument("--image-size", type=int_or_pair, help="pixels, e.g. 180 or 225 (the same for every backbone)")
    p.add_argument("--epochs", type=int, help="stage 1 epochs")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int)
    add_runtime(p)


def parse_weights(specs: list[str], backbones: Sequence[str]) -> tuple[dict[str, str], str]:
    """``["mobilenet_v2=PATH", "none"]`` → ({"mobilenet_v2": PATH}, "none").

    A spec is one backbone's when the text before its first ``=`` names one of ``backbones`` (a path may hold
    ``=`` too: ``resnet20=w=1/x.h5`` is resnet20's file ``w=1/x.h5``; ``w=1/x.h5`` is every other backbone's).

    Raises:
        ConfigError: A spec with ``=`` that names no compared backbone and is no existing file (a misspelt name).
    """
    from floranet.config.compare import backbone_key

    compared = {backbone_key(b) for b in backbones}
    per: dict[str, str] = {}
    default = "imagenet"
    for spec in specs:
        name, sep, value = spec.partition("=")
        if sep and backbone_key(name) in compared:
            per[name.strip()] = value
        elif sep and not os.path.exists(spec):
            raise ConfigError(
                f"--weights must be imagenet, none or a file for every backbone, or BACKBONE=WEIGHTS for one of "
                f"--backbones ({', '.join(backbones)}); {name.strip()!r} is not one of them and {spec!r} is no "
                f"existing file. Received: --weights={spec!r}"
            )
        else:
            default = spec
    return per, default


def run_compare(args: argparse.Namespace) -> int:
    from floranet.config import CompareConfig
    from floranet.workflows.compare import compare

    names = tuple(b.strip() for b in args.backbones.split(",") if b.strip())
    per, default = parse_weights(args.weights, names)
    given = ("image_size", "epochs", "batch_size", "seed")
    train = {k: getattr(args, k) for k in given if getattr(args, k) is not None}  # --seed 0 is a seed
    config = CompareConfig(
        data_dir=args.data_dir,
        backbones=names,
        out=args.out,
        weights=per,
        default_weights=default,
        fine_tune=args.fine_tune,
        train=train,
        runtime=args.runtime,
        precision=args.precision,
    )
    result = compare(config)
    print(result.table())
    print(f"Wrote {result.out / 'comparison.json'} and {result.out / 'comparison.html'}")
    return 0 if any(e.skipped is None for e in result.entries) else 1
