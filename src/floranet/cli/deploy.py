"""``floranet export`` and ``floranet serve``: the model outside training."""

from __future__ import annotations

import argparse
import sys

from floranet.cli.common import Subparsers, add_runtime, add_unknown, command, say_lines
from floranet.config import EXPORT_FORMATS, QUANTIZE, ServeConfig


def add_export(sub: Subparsers) -> None:
    p = command(sub, "export", run_export, help="export RUN_DIR's model and check it against model.keras")
    p.add_argument("run_dir")
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    p.add_argument(
        "--quantize", choices=QUANTIZE, help="tflite and openvino only; int8 calibrates on up to 200 training images"
    )
    p.add_argument("--out", help="export folder (default: RUN_DIR/exports/<format>[-<quantize>])")
    p.add_argument(
        "--max-images",
        type=int,
        default=200,
        help="validation images for the agreement check (default 200; 0: skip it)",
    )


def run_export(args: argparse.Namespace) -> int:
    from floranet.export import export_run

    result = export_run(
        args.run_dir,
        args.format,
        quantize=args.quantize,
        out=args.out,
        max_images=args.max_images,
        progress=sys.stderr.isatty(),
    )
    say_lines(result.summary())
    return 1 if result.agrees is False else 0  # written, but not to be trusted unchecked


def add_serve(sub: Subparsers) -> None:
    p = command(sub, "serve", run_serve, help="REST API + web page for a run (http://127.0.0.1:8000/)")
    p.add_argument("run_dir")
    p.add_argument("--host", default="127.0.0.1", help="anything but loopback is reachable from the network")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--unsafe", action="store_true", help="allow loading a model that contains code")
    p.add_argument("--max-batch", type=int, default=32, help="most images per model call")
    p.add_argument(
        "--max-wait-ms", type=float, default=5.0, help="how long a batch waits for more images (ms, at most 10000)"
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=ServeConfig.max_pixels,
        help="largest image decoded, width x height (default 16 MP; refused from its header)",
    )
    p.add_argument(
        "--client-share",
        type=float,
        default=ServeConfig.client_share,
        help="most of the queue and upload memory one client address may hold (default 0.25; 1: no bound)",
    )
    p.add_argument(
        "--api-key",
        help="clients must send it (Authorization: Bearer KEY); default $FLORANET_API_KEY; required off loopback",
    )
    p.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="serve off loopback without an API key (anyone who can reach the port may use it)",
    )
    p.add_argument(
        "--allowed-hosts",
        type=lambda t: tuple(h for h in t.split(",") if h.strip()),
        help="Host header names to answer, comma separated ('*': any; default: loopback names on "
        "loopback, any elsewhere)",
    )
    p.add_argument(
        "--trusted-proxies",
        type=lambda t: tuple(h.strip() for h in t.split(",") if h.strip()),
        default=(),
        help="addresses or networks of reverse proxies whose X-Forwarded-For names the client, comma separated "
        "(e.g. 127.0.0.1 for a proxy on this machine; default: none, every client is its TCP address)",
    )
    p.add_argument(
        "--model-name", help="the model's name in the /v2 (KServe, Triton) routes (default: the run folder's)"
    )
    add_runtime(p)
    add_unknown(p)


def run_serve(args: argparse.Namespace) -> int:
    from floranet.serving import run_server

    run_server(
        args.run_dir,
        host=args.host,
        port=args.port,
        unsafe=args.unsafe,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_pixels=args.max_pixels,
        client_share=args.client_share,
        api_key=args.api_key,
        insecure_no_auth=args.insecure_no_auth,
        allowed_hosts=args.allowed_hosts,
        trusted_proxies=args.trusted_proxies,
        model_name=args.model_name,
        runtime=args.runtime,
        precision=args.precision,
        unknown=args.unknown == "on",
    )
    return 0
