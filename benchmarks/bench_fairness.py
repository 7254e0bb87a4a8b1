"""One hostile client against one ordinary one: does `floranet serve` keep answering the ordinary client?

The same tiny run is served twice in one go, by this tree and by ``--before`` (a commit's src/, default
a104530: admission reserved each body's declared size for its whole upload, one client could take every
slot, and the decode thread served images first come, first served). For each server, four loads run from
127.0.0.1 while a victim on 127.0.0.2 (another client address) keeps asking:

* ``slow bodies``: 13 uploads that declare 256 MiB in all (12 x 20 MiB and 16 MiB: the default
  ``max_inflight_bytes``) and send a byte every second; the victim posts a small JPEG every second;
* ``decode flood``: 16 concurrent streams of 16-megapixel 16-bit PNGs (31 KB each, ~0.5 s to decode) to
  ``/predict``; the victim posts a small JPEG every half second;
* ``json flood``: 6 concurrent 20 MB JSON inference requests (``/v2``, 10 million numbers each) over and
  over; the victim asks ``/v2/health/ready`` every 0.1 s;
* ``json within limits``: the same with valid requests, 32 images of 96x96x3 pixels as JSON numbers (1.8 MB,
  the most one client may send this run): parsed, decoded and run;
* ``gradcam flood``: 32 concurrent streams of a 640x480 JPEG to ``/predict?gradcam=1`` (each answer draws an
  overlay on the one Grad-CAM thread); the victim asks for its own overlay every half second;
* ``predict flood``: 32 concurrent streams of the same JPEG to ``/predict`` (the attacker's share of the batches);
  the victim posts a small JPEG every half second.

Reported per server and attack: the victim's answers (200 / all), and its p50 and max latency.

    python benchmarks/bench_fairness.py [--before REF] [--seconds 10]

Result: results/fairness.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import MINI, Budget, free_port, train_run
from common import ROOT, baseline_source, python, table, write_result

ATTACKER, VICTIM = "127.0.0.1", "127.0.0.2"


def start(src: Path, run: Path, port: int, log: Path, budget: Budget) -> subprocess.Popen:
    code = f"from floranet.serving import run_server; run_server({str(run)!r}, port={port}, log_level='warning')"
    env = {**os.environ, "PYTHONPATH": str(src), "TF_CPP_MIN_LOG_LEVEL": "3"}
    with open(log, "w") as out:
        proc = subprocess.Popen([python(), "-c", code], stdout=out, stderr=subprocess.STDOUT, env=env)
    budget.children.append(proc)
    return proc


async def healthy(url: str, proc: subprocess.Popen, log: Path) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=2) as c:
        for _ in range(600):
            if proc.poll() is not None:
                sys.exit(f"the server exited:\n{log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.TransportError):
                if (await c.get("/health")).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    sys.exit("the server did not start")


async def victim(url: str, seconds: float, every: float, call: Any) -> list[tuple[int, float]]:
    """(status, ms) of the victim's requests, one every ``every`` s for ``seconds``."""
    import httpx

    transport = httpx.AsyncHTTPTransport(local_address=VICTIM)
    out: list[tuple[int, float]] = []
    async with httpx.AsyncClient(base_url=url, timeout=60, transport=transport) as c:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t = time.perf_counter()
            try:
                status = (await call(c)).status_code
            except httpx.HTTPError:
                status = 0
            out.append((status, (time.perf_counter() - t) * 1000))
            await asyncio.sleep(max(0.0, every - (time.perf_counter() - t)))
    return out


async def slow_bodies(url: str, stop: asyncio.Event) -> None:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    socks = []
    for size in [20 * 2**20] * 12 + [16 * 2**20]:  # 256 MiB declared: the default max_inflight_bytes
        s = socket.create_connection((host, int(port)))
        s.setblocking(False)
        s.sendall(f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Length: {size}\r\n\r\n".encode() + b"\xff")
        socks.append(s)
    while not stop.is_set():
        await asyncio.sleep(1)
        for s in socks:
            with contextlib.suppress(OSError):
                s.send(b"\0")
    for s in socks:
        s.close()


async def flood(url: str, stop: asyncio.Event, streams: int, post: Any) -> None:
    import httpx

    async def one(c: httpx.AsyncClient) -> None:
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError):
                await post(c)

    limits = httpx.Limits(max_connections=streams)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:
        await asyncio.gather(*(one(c) for _ in range(streams)))


def big_png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("I;16", (3990, 4000)).save(buf, "PNG")  # 16 MP of zeros: 31 KB, ~0.5 s to decode
    return buf.getvalue()


def noise_jpeg(width: int, height: int) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def summary(answers: list[tuple[int, float]]) -> dict[str, Any]:
    ms = np.array([t for _, t in answers])
    ok = sum(s == 200 for s, _ in answers)
    return {
        "answered": f"{ok}/{len(answers)}",
        "ok": ok,
        "n": len(answers),
        "p50_ms": float(np.median(ms)),
        "max_ms": float(ms.max()),
        "statuses": sorted({s for s, _ in answers}),
    }


async def attacks(url: str, seconds: float) -> dict[str, dict[str, Any]]:
    small = sorted((MINI / "roses").glob("*.jpg"))[0].read_bytes()
    png = big_png()
    model = "run"
    numbers = json.dumps(
        {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [10_000_000], "data": [0] * 10_000_000}]},
        separators=(",", ":"),
    ).encode()
    n, size = 32, 96  # the largest JSON pixel request a client may send this run (its share, at 96 px)
    in_limit = json.dumps(
        {
            "inputs": [
                {"name": "pixels", "datatype": "FP32", "shape": [n, size, size, 3], "data": [0] * (n * size * size * 3)}
            ]
        },
        separators=(",", ":"),
    ).encode()
    photo = noise_jpeg(640, 480)
    post_small = lambda c: c.post("/predict", content=small)  # noqa: E731
    overlay_small = lambda c: c.post("/predict?gradcam=1", content=small)  # noqa: E731
    ready = lambda c: c.get("/v2/health/ready")  # noqa: E731
    plans = {
        "slow bodies": (lambda stop: slow_bodies(url, stop), post_small, 1.0),
        "decode flood": (lambda stop: flood(url, stop, 16, lambda c: c.post("/predict", content=png)), post_small, 0.5),
        "json flood": (
            lambda stop: flood(url, stop, 6, lambda c: c.post(f"/v2/models/{model}/infer", content=numbers)),
            ready,
            0.1,
        ),
        "json within limits": (
            lambda stop: flood(url, stop, 6, lambda c: c.post(f"/v2/models/{model}/infer", content=in_limit)),
            ready,
            0.1,
        ),
        "gradcam flood": (
            lambda stop: flood(url, stop, 32, lambda c: c.post("/predict?gradcam=1", content=photo)),
            overlay_small,
            0.5,
        ),
        "predict flood": (
            lambda stop: flood(url, stop, 32, lambda c: c.post("/predict", content=photo)),
            post_small,
            0.5,
        ),
    }
    out = {}
    for name, (attack, call, every) in plans.items():
        stop = asyncio.Event()
        task = asyncio.ensure_future(attack(stop))
        await asyncio.sleep(1.0)  # the attack is under way
        answers = await victim(url, seconds, every, call)
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 60)
        out[name] = summary(answers)
        print(
            f"  {name}: {out[name]['answered']} answered, p50 {out[name]['p50_ms']:.0f} ms, "
            f"max {out[name]['max_ms']:.0f} ms, statuses {out[name]['statuses']}",
            flush=True,
        )
        await asyncio.sleep(2.0)  # let the server drain
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", default="a104530", help="the commit whose server is measured beside this tree's")
    ap.add_argument("--seconds", type=float, default=10.0, help="how long the victim asks during each attack")
    args = ap.parse_args()
    budget = Budget(900)
    rows, results = [], {}
    with tempfile.TemporaryDirectory(prefix="floranet-bench-fair-") as tmp:
        work = Path(tmp)
        run = train_run(work, budget, "tiny")
        servers = {"this tree": ROOT / "src", f"before ({args.before})": baseline_source(args.before, work / "old")}
        for label, src in servers.items():
            port = free_port()
            log = work / f"serve-{port}.log"
            proc = start(src, run, port, log, budget)
            url = f"http://127.0.0.1:{port}"
            try:
                asyncio.run(healthy(url, proc, log))
                print(f"{label}:", flush=True)
                results[label] = asyncio.run(attacks(url, args.seconds))
            finally:
                proc.terminate()
                proc.wait(30)
            for attack, r in results[label].items():
                rows.append(
                    {
                        "server": label,
                        "attack": attack,
                        "victim answered": r["answered"],
                        "p50 ms": r["p50_ms"],
                        "max ms": r["max_ms"],
                    }
                )
    budget.cancel()
    print(table(rows, ["server", "attack", "victim answered", "p50 ms", "max ms"]))
    cmd = "python benchmarks/bench_fairness.py " + " ".join(sys.argv[1:])
    path = write_result("fairness", {"seconds": args.seconds, "before": args.before, "results": results}, cmd)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
