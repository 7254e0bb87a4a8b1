"""Load test of `floranet serve` (dynamic batching) vs the same model offline.

Starts the server in a child process on 127.0.0.1 (a free port), sends
``--requests`` POST /predict requests (each a real JPEG from the bundled
mini_flowers, raw body) from ``--concurrency`` concurrent httpx clients, and
reports errors, p50/p99 latency and throughput. Then, in this process, with the
server stopped, it measures the offline throughput of the same model:
``Predictor.probabilities`` on batches of 32 pre-decoded images at the same
image size. The ratio served/offline is what batching buys back (target >= 0.70).

Without ``--run`` a tiny run is trained first (``floranet train`` on
mini_flowers, resnet18, random init, 96 px, tutorial preset, 1 epoch) in a temp
folder. Everything stops after ``--budget-s`` (300 s) whatever happens.

    python benchmarks/bench_serve.py [--run RUN_DIR] [--requests 2000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
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
from common import python, table, write_result  # noqa: E402

import numpy as np  # noqa: E402

import floranet  # noqa: E402

MINI = Path(floranet.__file__).parent / "data" / "mini_flowers"
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


def train_tiny(work: Path, budget: Budget) -> Path:
    out = work / "run"
    cmd = [python(), "-m", "floranet.cli", "train", str(MINI), "--out", str(out), "--backbone", "resnet18",
           "--weights", "none", "--image-size", "96", "--preset", "tutorial", "--epochs", "1"]
    print("training a tiny run:", " ".join(cmd[2:]), flush=True)
    started = time.monotonic()
    with open(work / "train.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        budget.children.append(proc)
        if proc.wait(timeout=max(1.0, budget.left() - 60)) != 0:
            sys.exit(f"training failed; see {work / 'train.log'}:\n{(work / 'train.log').read_text()[-2000:]}")
    print(f"  trained in {time.monotonic() - started:.0f} s", flush=True)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_server(run: Path, port: int, args: argparse.Namespace, budget: Budget, log: Path) -> subprocess.Popen:
    code = ("from floranet.serve import run_server; "
            f"run_server({str(run)!r}, host={HOST!r}, port={port}, log_level='warning', "
            f"max_batch={args.max_batch}, max_wait_ms={args.max_wait_ms})")
    out = open(log, "w")
    proc = subprocess.Popen([python(), "-c", code], stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
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


async def load(url: str, photos: list[bytes], n: int, concurrency: int, deadline: float) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    batch_sizes: list[int] = []
    errors: dict[str, int] = {}
    next_index = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal next_index
        while next_index < n and time.monotonic() < deadline:
            i = next_index
            next_index += 1
            t = time.perf_counter()
            try:
                r = await client.post("/predict", content=photos[i % len(photos)],
                                      headers={"content-type": "image/jpeg"})
                if r.status_code == 200 and r.json().get("top_k"):
                    latencies.append(time.perf_counter() - t)
                    batch_sizes.append(int(r.headers.get("x-batch-size", 0)))
                else:
                    errors[f"HTTP {r.status_code}"] = errors.get(f"HTTP {r.status_code}", 0) + 1
            except httpx.HTTPError as e:
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    lat_ms = np.array(latencies) * 1000 if latencies else np.zeros(1)
    return {"requests": next_index, "ok": len(latencies), "errors": sum(errors.values()), "error_kinds": errors,
            "seconds": round(wall, 3), "throughput_rps": len(latencies) / wall,
            "p50_ms": float(np.percentile(lat_ms, 50)), "p99_ms": float(np.percentile(lat_ms, 99)),
            "mean_ms": float(lat_ms.mean()), "max_ms": float(lat_ms.max()),
            "mean_batch": float(np.mean(batch_sizes)) if batch_sizes else 0.0,
            "max_batch_seen": int(max(batch_sizes, default=0))}


def offline(run: Path, photos: list[bytes], seconds: float) -> dict[str, Any]:
    import tensorflow as tf

    from floranet import predict
    from floranet.data import images

    predictor = predict.load(run)
    decoded = np.stack([tf.image.resize(images.decode_image_bytes(p).astype(np.float32), predictor.image_size).numpy()
                        for p in photos])
    batches = [decoded[np.arange(i, i + BATCH) % len(decoded)] for i in range(0, len(decoded), BATCH)]
    for b in batches[:3]:
        predictor.probabilities(b)  # warm-up (tracing)
    count, started = 0, time.perf_counter()
    while True:
        for b in batches:
            predictor.probabilities(b)
            count += len(b)
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            break
    return {"images": count, "seconds": round(elapsed, 3), "throughput_ips": count / elapsed, "batch": BATCH,
            "image_size": list(predictor.image_size)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="finished run directory (default: train a tiny one)")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--offline-seconds", type=float, default=15.0)
    ap.add_argument("--budget-s", type=float, default=300.0, help="hard cap on the whole benchmark")
    ap.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/serve.json")
    args = ap.parse_args()
    budget = Budget(args.budget_s)
    work = Path(tempfile.mkdtemp(prefix="floranet-bench-serve-"))
    load_before = os.getloadavg()
    try:
        run = Path(args.run) if args.run else train_tiny(work, budget)
        photos = [p.read_bytes() for p in sorted(MINI.rglob("*.jpg"))]
        port = free_port()
        url = f"http://{HOST}:{port}"
        log = work / "server.log"
        proc = start_server(run, port, args, budget, log)
        try:
            version = asyncio.run(wait_healthy(url, proc, budget, log))
            print(f"server up: {url} model {version}", flush=True)
            asyncio.run(load(url, photos, 64, args.concurrency, time.monotonic() + 30))  # warm-up, not counted
            deadline = time.monotonic() + max(5.0, budget.left() - args.offline_seconds - 30)
            served = asyncio.run(load(url, photos, args.requests, args.concurrency, deadline))
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        server_log = log.read_text()[-2000:]
        off = offline(run, photos, min(args.offline_seconds, max(2.0, budget.left() - 10)))
    finally:
        budget.cancel()
        shutil.rmtree(work, ignore_errors=True)
    ratio = served["throughput_rps"] / off["throughput_ips"]
    rows = [{"mode": f"served (HTTP, concurrency {args.concurrency})", "requests": served["requests"],
             "errors": served["errors"], "p50_ms": served["p50_ms"], "p99_ms": served["p99_ms"],
             "img_per_s": served["throughput_rps"], "mean_batch": served["mean_batch"]},
            {"mode": f"offline (probabilities, batch {BATCH})", "requests": off["images"], "errors": 0,
             "p50_ms": None, "p99_ms": None, "img_per_s": off["throughput_ips"], "mean_batch": float(BATCH)}]
    print(table(rows, ["mode", "requests", "errors", "p50_ms", "p99_ms", "img_per_s", "mean_batch"]))
    print(f"served/offline throughput: {ratio:.2f} (target >= 0.70); load average before {load_before[0]:.2f}, "
          f"after {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    if served["errors"]:
        print(f"errors: {served['error_kinds']}\nserver log tail:\n{server_log}")
    payload = {"settings": {"run": args.run or "tiny: resnet18, weights none, 96 px, tutorial preset, 1 epoch",
                            "model_version": version, "requests": args.requests, "concurrency": args.concurrency,
                            "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms,
                            "client": "httpx.AsyncClient, raw JPEG bodies (mini_flowers, 160 px)"},
               "served": served, "offline": off, "ratio_served_over_offline": round(ratio, 3), "target_ratio": 0.70,
               "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)]}
    if not args.no_write:
        print(f"wrote {write_result('serve', payload, ' '.join(['python', *sys.argv]))}")


if __name__ == "__main__":
    main()
