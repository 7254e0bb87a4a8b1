"""Load test of `floranet serve` (dynamic batching) vs the same model offline.

Starts the server in a child process on 127.0.0.1 (a free port), sends
``--requests`` POST /predict requests (each a real JPEG from the bundled
mini_flowers, raw body) from ``--concurrency`` concurrent workers, and
reports errors, p50/p99 latency and throughput. By default the load runs
twice: with ``httpx.AsyncClient`` and with a minimal asyncio HTTP/1.1 client
(about 0.2 ms of CPU per request instead of about 3: on a 2-core machine the
load generator otherwise takes a fifth of the CPU the server needs). Before,
between and after the loads (the server idle), it measures in this process
the offline throughput of the same model: ``Predictor.probabilities`` on
batches of 32 pre-decoded images at the same image size; the mean of those
windows is the reference, so a change in the machine's other load shows
instead of skewing the ratio. The ratio served/offline is what batching buys
back (target >= 0.70). CPU seconds of the server and client are reported.

Hostile traffic runs throughout (issue 13): ``--idle-sockets`` connections (50) that each send half a
request header and hold it (re-opened whenever the server closes one), and every ``--hostile-every``-th request
(10th) is an upload the server must refuse (PostScript sent as image/jpeg: 415; a 16-bit PNG over the serving
pixel budget: 413; random bytes: 415). Refusals with the expected status are counted apart; anything else is an
error. ``--idle-sockets 0 --hostile-every 0`` gives the plain load.

Without ``--run`` a run is trained first in a temp folder (``floranet train`` on
mini_flowers, random init, tutorial preset, 1 epoch): ``--model resnet50`` (the
default: floranet's default backbone at 180 px, the model a user serves) or
``--model tiny`` (resnet18 at 96 px: so cheap per image that HTTP and JPEG
decoding dominate, the worst case for the ratio). Server and offline reference
use the same runtime (``Predictor.select(None)``: what ``floranet serve`` picks).
Everything stops after ``--budget-s`` (420 s) whatever happens.

    python benchmarks/bench_serve.py [--model resnet50|tiny] [--run RUN_DIR] [--requests 2000] [--concurrency 16]
        [--idle-sockets 50] [--hostile-every 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np

from common import python, table, write_result
from floranet.data import datasets

MINI = datasets.mini_flowers_path()
HOST = "127.0.0.1"
BATCH = 32


class Budget:
    """A hard deadline: past it, the server child is killed and this process exits."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = time.monotonic()
        self.children: list[subprocess.Popen] = []
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.start)

    def _expire(self) -> None:
        print(f"bench_serve: hard cap of {self.seconds:.0f} s reached; stopping", file=sys.stderr, flush=True)
        for child in self.children:
            if child.poll() is None:
                child.kill()
        os._exit(3)

    def cancel(self) -> None:
        self._timer.cancel()


MODELS = {"resnet50": ("resnet50", 180), "tiny": ("resnet18", 96)}


def train_run(work: Path, budget: Budget, model: str) -> Path:
    out = work / "run"
    backbone, size = MODELS[model]
    cmd = [
        python(),
        "-m",
        "floranet.cli",
        "train",
        str(MINI),
        "--out",
        str(out),
        "--backbone",
        backbone,
        "--weights",
        "none",
        "--image-size",
        str(size),
        "--preset",
        "tutorial",
        "--epochs",
        "1",
    ]
    print("training a run to serve:", " ".join(cmd[2:]), flush=True)
    started = time.monotonic()
    with open(work / "train.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        budget.children.append(proc)
        if proc.wait(timeout=max(1.0, budget.left() - 60)) != 0:
            sys.exit(f"training failed; see {work / 'train.log'}:\n{(work / 'train.log').read_text()[-2000:]}")
    print(f"  trained in {time.monotonic() - started:.0f} s", flush=True)
    return out


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process (this one by default), from /proc or resource."""
    if pid is None:
        import resource

        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_server(run: Path, port: int, args: argparse.Namespace, budget: Budget, log: Path) -> subprocess.Popen:
    code = (
        "from floranet.serving import run_server; "
        f"run_server({str(run)!r}, host={HOST!r}, port={port}, log_level='warning', "
        f"max_batch={args.max_batch}, max_wait_ms={args.max_wait_ms}, "
        f"max_connections_per_client={args.per_client})"
    )
    with open(log, "w") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [python(), "-c", code],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
    budget.children.append(proc)
    return proc


async def wait_healthy(url: str, proc: subprocess.Popen, budget: Budget, log: Path) -> str:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=2) as c:
        while budget.left() > 30:
            if proc.poll() is not None:
                sys.exit(f"the server exited ({proc.returncode}):\n{log.read_text()[-2000:]}")
            try:
                r = await c.get("/health")
                if r.status_code == 200:
                    return r.json()["model_version"]
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    sys.exit("the server did not become healthy in time")


class RawClient:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams: far less CPU per request than httpx,
    so on a small machine the load generator takes less from the server (``--client raw``)."""

    def __init__(self, url: str) -> None:
        host_port = url.split("//", 1)[1]
        self.host, self.port = host_port.rsplit(":", 1)
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        reused = self.streams is not None
        try:
            return await self._post(body)
        except (ConnectionError, asyncio.IncompleteReadError, IndexError):
            if not reused:
                raise
            await self.close()  # the server closed an idle keep-alive connection: a new one, as browsers do
            return await self._post(body)

    async def _post(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if self.streams is None:
            self.streams = await asyncio.open_connection(self.host, int(self.port))
        reader, writer = self.streams
        writer.write(
            f"POST /predict HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        status = int((await reader.readline()).split()[1])
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            key, _, value = line.decode("latin-1").partition(":")
            headers[key.strip().lower()] = value.strip()
        content = await reader.readexactly(int(headers.get("content-length", 0)))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, headers, content

    async def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


def hostile_uploads() -> list[tuple[bytes, int]]:
    """Bodies the server must refuse, each with the status it must answer."""
    import io

    from PIL import Image

    png = io.BytesIO()
    Image.fromarray(np.zeros((5000, 5000), np.uint16)).save(png, format="PNG", compress_level=9)  # 25 MP > 16 MP
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n/loop { loop } def loop\n%%EOF\n"
    return [(eps, 415), (png.getvalue(), 413), (np.random.default_rng(0).bytes(20_000), 415)]


async def hold_idle_sockets(url: str, n: int, stop: asyncio.Event, stats: dict[str, int]) -> None:
    """Keeps ``n`` connections open that each send half a request header, re-opening those the server closes."""
    host, port = url.split("//", 1)[1].rsplit(":", 1)

    async def until_closed(reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError):  # closed or reset by the server: either way it is gone
            await reader.read()

    async def one() -> None:
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                await writer.drain()
                stats["opened"] = stats.get("opened", 0) + 1
                closed = asyncio.ensure_future(until_closed(reader))
                done, _ = await asyncio.wait(
                    [closed, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED
                )
                if closed in done:
                    stats["closed_by_server"] = stats.get("closed_by_server", 0) + 1
                else:
                    closed.cancel()
                writer.close()
            except OSError:
                await asyncio.sleep(0.1)

    await asyncio.gather(*(one() for _ in range(n)))


async def load(
    url: str,
    photos: list[bytes],
    n: int,
    concurrency: int,
    deadline: float,
    client_kind: str = "httpx",
    hostile_every: int = 0,
    idle_sockets: int = 0,
) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    batch_sizes: list[int] = []
    errors: dict[str, int] = {}
    refused = {"expected": 0}
    hostile = hostile_uploads() if hostile_every else []
    idle_stats: dict[str, int] = {}
    stop_idle = asyncio.Event()
    idle_task = (
        asyncio.ensure_future(hold_idle_sockets(url, idle_sockets, stop_idle, idle_stats)) if idle_sockets else None
    )
    next_index = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    shared = httpx.AsyncClient(base_url=url, timeout=30, limits=limits)

    async def post(raw: RawClient | None, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if raw is not None:
            return await asyncio.wait_for(raw.post(body), 30)
        r = await shared.post("/predict", content=body, headers={"content-type": "image/jpeg"})
        return r.status_code, dict(r.headers), r.content

    async def worker() -> None:
        nonlocal next_index
        raw = RawClient(url) if client_kind == "raw" else None
        try:
            while next_index < n and time.monotonic() < deadline:
                i = next_index
                next_index += 1
                t = time.perf_counter()
                try:
                    if hostile_every and i % hostile_every == hostile_every - 1:
                        body, want = hostile[(i // hostile_every) % len(hostile)]
                        status, _, _ = await post(raw, body)
                        if status == want:
                            refused["expected"] += 1
                        else:
                            errors[f"hostile HTTP {status}"] = errors.get(f"hostile HTTP {status}", 0) + 1
                        continue
                    status, headers, content = await post(raw, photos[i % len(photos)])
                    if status == 200 and b'"top_k":[{' in content:
                        latencies.append(time.perf_counter() - t)
                        batch_sizes.append(int(headers.get("x-batch-size", 0)))
                    else:
                        errors[f"HTTP {status}"] = errors.get(f"HTTP {status}", 0) + 1
                except (httpx.HTTPError, OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as e:
                    errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                    if raw is not None:
                        await raw.close()
        finally:
            if raw is not None:
                await raw.close()

    async with shared:
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    if idle_task is not None:
        stop_idle.set()
        await idle_task
    return {
        "requests": next_index,
        "refused_as_expected": refused["expected"],
        "idle_sockets": idle_stats,
        "ok": len(latencies),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "seconds": wall,
        "latencies": latencies,
        "batch_sizes": batch_sizes,
    }


def summarize(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One client's segments → totals, latency percentiles, throughput (ok requests / summed wall time)."""
    latencies = [x for p in parts for x in p["latencies"]]
    sizes = [x for p in parts for x in p["batch_sizes"]]
    errors: dict[str, int] = {}
    for p in parts:
        for k, v in p["error_kinds"].items():
            errors[k] = errors.get(k, 0) + v
    wall = sum(p["seconds"] for p in parts)
    lat_ms = np.array(latencies) * 1000 if latencies else np.zeros(1)
    return {
        "requests": sum(p["requests"] for p in parts),
        "refused_as_expected": sum(p.get("refused_as_expected", 0) for p in parts),
        "idle_sockets_opened": sum(p.get("idle_sockets", {}).get("opened", 0) for p in parts),
        "ok": len(latencies),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "seconds": round(wall, 3),
        "throughput_rps": len(latencies) / wall,
        "p50_ms": float(np.percentile(lat_ms, 50)),
        "p99_ms": float(np.percentile(lat_ms, 99)),
        "mean_ms": float(lat_ms.mean()),
        "max_ms": float(lat_ms.max()),
        "mean_batch": float(np.mean(sizes)) if sizes else 0.0,
        "max_batch_seen": int(max(sizes, default=0)),
    }


class Offline:
    """The same model in this process: ``Predictor.probabilities`` on batches of 32 pre-decoded images."""

    def __init__(self, run: Path, photos: list[bytes]) -> None:
        from floranet import inference
        from floranet.data import decode

        self.predictor = inference.load(run)
        self.choice = self.predictor.select(None)  # the server's own choice
        size = self.predictor.image_size
        decoded = np.stack([decode.decode_bytes(p, size)[1] for p in photos])
        self.batches = [decoded[np.arange(i, i + BATCH) % len(decoded)] for i in range(0, len(decoded), BATCH)]
        for b in self.batches[:3]:
            self.predictor.probabilities(b)  # warm-up (tracing)

    def measure(self, seconds: float, batch: int = BATCH) -> dict[str, Any]:
        batches = [b[:batch] for b in self.batches]
        self.predictor.probabilities(batches[0])  # a new batch size may trace once
        count, started = 0, time.perf_counter()
        while True:
            for b in batches:
                self.predictor.probabilities(b)
                count += len(b)
            elapsed = time.perf_counter() - started
            if elapsed >= seconds:
                break
        return {"images": count, "seconds": round(elapsed, 3), "throughput_ips": count / elapsed}

    def window(self, seconds: float, small: int) -> dict[str, Any]:
        """Batches of 32 (the reference), then batches of ``small`` (the most a server with that many
        concurrent clients can ever group) for half as long."""
        out = self.measure(seconds)
        out[f"batch_{small}"] = self.measure(seconds / 2, small)
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="finished run directory (default: train one, see --model)")
    ap.add_argument("--model", choices=sorted(MODELS), default="resnet50", help="what to train when --run is absent")
    ap.add_argument("--requests", type=int, default=2000, help="per client kind")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument(
        "--client",
        choices=["httpx", "raw", "both"],
        default="both",
        help="load generator: httpx.AsyncClient, a minimal asyncio HTTP/1.1 client, or both one "
        "after the other (default)",
    )
    ap.add_argument(
        "--segments",
        type=int,
        default=4,
        help="the load of each client is cut into this many segments, with an offline window between segments",
    )
    ap.add_argument("--idle-sockets", type=int, default=50, help="half-open connections held during the load")
    ap.add_argument("--hostile-every", type=int, default=10, help="every n-th request is a refused upload (0: none)")
    ap.add_argument(
        "--per-client",
        type=int,
        default=128,
        help="the server's connections per client address: every client here is 127.0.0.1, so the "
        "legitimate load and the idle sockets share one address (a real server sees them apart)",
    )
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument(
        "--offline-seconds",
        type=float,
        default=3.0,
        help="per offline window at batch 32 (and half as long at batch = concurrency)",
    )
    ap.add_argument("--budget-s", type=float, default=420.0, help="hard cap on the whole benchmark")
    ap.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/serve.json")
    args = ap.parse_args()
    budget = Budget(args.budget_s)
    clients = ["httpx", "raw"] if args.client == "both" else [args.client]
    work = Path(tempfile.mkdtemp(prefix="floranet-bench-serve-"))
    load_before = os.getloadavg()
    served: dict[str, dict[str, Any]] = {}
    windows: list[dict[str, Any]] = []
    small = min(BATCH, args.concurrency)
    try:
        run = Path(args.run) if args.run else train_run(work, budget, args.model)
        photos = [p.read_bytes() for p in sorted(MINI.rglob("*.jpg"))]
        port = free_port()
        url = f"http://{HOST}:{port}"
        log = work / "server.log"
        proc = start_server(run, port, args, budget, log)
        try:
            version = asyncio.run(wait_healthy(url, proc, budget, log))
            print(f"server up: {url} model {version}", flush=True)
            for kind in clients:  # warm-up, not counted
                asyncio.run(load(url, photos, 64, args.concurrency, time.monotonic() + 30, kind))
            # The machine's speed drifts (other work on it): offline windows alternate with segments of the
            # served load, and each segment is compared with the windows just before and after it.
            model = Offline(run, photos)
            windows.append(model.window(args.offline_seconds, small))
            total_segments = len(clients) * args.segments
            done = 0
            for kind in clients:
                parts = []
                for seg in range(args.segments):
                    left = total_segments - done
                    reserve = left * 1.5 * args.offline_seconds + 15
                    deadline = time.monotonic() + max(3.0, (budget.left() - reserve) / left)
                    n = args.requests // args.segments + (seg < args.requests % args.segments)
                    cpu_server, cpu_client = cpu_seconds(proc.pid), cpu_seconds()
                    part = asyncio.run(
                        load(
                            url,
                            photos,
                            n,
                            args.concurrency,
                            deadline,
                            kind,
                            hostile_every=args.hostile_every,
                            idle_sockets=args.idle_sockets,
                        )
                    )
                    part["cpu_s_server"] = cpu_seconds(proc.pid) - cpu_server
                    part["cpu_s_client"] = cpu_seconds() - cpu_client
                    windows.append(model.window(min(args.offline_seconds, max(0.5, (budget.left() - 15) / 1.5)), small))
                    ref = (windows[-2]["throughput_ips"] + windows[-1]["throughput_ips"]) / 2
                    part["ratio"] = part["ok"] / part["seconds"] / ref
                    parts.append(part)
                    done += 1
                    print(
                        f"  {kind} segment {seg + 1}: {part['ok']} ok, {part['ok'] / part['seconds']:.1f} req/s, "
                        f"offline around it {ref:.1f} img/s, ratio {part['ratio']:.2f}",
                        flush=True,
                    )
                result = summarize(parts)
                result["cpu_s_server"] = round(sum(p["cpu_s_server"] for p in parts), 2)
                result["cpu_s_client"] = round(sum(p["cpu_s_client"] for p in parts), 2)
                result["segment_ratios"] = [round(p["ratio"], 3) for p in parts]
                result["ratio_served_over_offline"] = round(float(np.median(result["segment_ratios"])), 3)
                served[kind] = result
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        server_log = log.read_text()[-2000:]
    finally:
        budget.cancel()
        shutil.rmtree(work, ignore_errors=True)
    reference = float(np.mean([w["throughput_ips"] for w in windows]))
    reference_small = float(np.mean([w[f"batch_{small}"]["throughput_ips"] for w in windows]))
    off = {
        "batch": BATCH,
        "image_size": list(model.predictor.image_size),
        "windows": windows,
        "throughput_ips": reference,
        f"throughput_ips_batch_{small}": reference_small,
        "spread_ips": [
            round(min(w["throughput_ips"] for w in windows), 1),
            round(max(w["throughput_ips"] for w in windows), 1),
        ],
    }
    names = {"httpx": "httpx.AsyncClient", "raw": "minimal asyncio HTTP/1.1 client"}
    rows = []
    for kind, r in served.items():
        r[f"ratio_over_offline_batch_{small}"] = round(r["ratio_served_over_offline"] * reference / reference_small, 3)
        rows.append(
            {
                "mode": f"served, {kind} client, concurrency {args.concurrency}",
                "requests": r["requests"],
                "refused": r["refused_as_expected"],
                "errors": r["errors"],
                "p50_ms": r["p50_ms"],
                "p99_ms": r["p99_ms"],
                "img_per_s": r["throughput_rps"],
                "mean_batch": r["mean_batch"],
                "cpu_s_server": r["cpu_s_server"],
                "cpu_s_client": r["cpu_s_client"],
                "ratio": r["ratio_served_over_offline"],
                f"ratio_b{small}": r[f"ratio_over_offline_batch_{small}"],
            }
        )
    for b, m in ((BATCH, reference), (small, reference_small)):
        rows.append(
            {
                "mode": f"offline, probabilities, batch {b} (mean of {len(windows)} windows)",
                "requests": sum(w["images"] if b == BATCH else w[f"batch_{small}"]["images"] for w in windows),
                "errors": 0,
                "img_per_s": m,
                "mean_batch": float(b),
            }
        )
    print(
        table(
            rows,
            [
                "mode",
                "requests",
                "refused",
                "errors",
                "p50_ms",
                "p99_ms",
                "img_per_s",
                "mean_batch",
                "cpu_s_server",
                "cpu_s_client",
                "ratio",
                f"ratio_b{small}",
            ],
        )
    )
    print(
        f"ratio = median over segments of served / offline batch {BATCH} in the windows around the segment "
        f"(target >= 0.70); ratio_b{small}: the same against batch {small}, the largest batch {args.concurrency} "
        f"clients can fill. Offline windows ranged {off['spread_ips'][0]}..{off['spread_ips'][1]} img/s; "
        f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    )
    for kind, r in served.items():
        if r["errors"]:
            print(f"{kind} errors: {r['error_kinds']}\nserver log tail:\n{server_log}")
    backbone, size = MODELS[args.model]
    payload = {
        "settings": {
            "run": args.run
            or f"{args.model}: {backbone}, weights none, {size} px, tutorial preset, 1 epoch on mini_flowers",
            "runtime": f"{model.choice.runtime} {model.choice.precision}",
            "model_version": version,
            "requests": args.requests,
            "concurrency": args.concurrency,
            "max_batch": args.max_batch,
            "max_wait_ms": args.max_wait_ms,
            "clients": {k: names[k] for k in clients},
            "bodies": f"raw JPEG bodies, one keep-alive connection per worker, {len(photos)} "
            "mini_flowers photos (160 px)",
            "idle_sockets": args.idle_sockets,
            "hostile_every": args.hostile_every,
            "max_connections_per_client": args.per_client,
        },
        "served": served,
        "offline": off,
        "target_ratio": 0.70,
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
    }
    print(f"runtime of server and offline reference: {model.choice.runtime} {model.choice.precision}")
    if not args.no_write:
        # --run serves someone's run: not the ResNet50 the "serve" section is titled after
        name = "serve_run" if args.run else "serve" if args.model == "resnet50" else "serve_tiny"
        print(f"wrote {write_result(name, payload, ' '.join(['python', *sys.argv]))}")


if __name__ == "__main__":
    main()
