"""A REST server and web page for one finished run, with dynamic batching.

``create_app(run_dir)`` returns a FastAPI app; ``run_server(run_dir)`` serves
it with uvicorn on 127.0.0.1:8000.

Endpoints:

* ``POST /predict``: one image, either as the ``file`` field of a multipart
  form or as the raw request body (any other content type). Answers
  ``{"file", "top_k": [{"class", "probability"}], "low_confidence",
  "model_version", "timing_ms": {"decode", "queue", "inference", "total"}}``;
  ``?gradcam=1`` adds ``"gradcam_png"`` (base64 PNG of the photo with the
  Grad-CAM heat map over it). The ``X-Batch-Size`` response header says how
  many images shared the model call.
* ``GET /health``: ``{"status": "ok", "model_version", "runtime"}``.
* ``GET /classes``: the class names, in model order.
* ``GET /``: a self-contained page (see :mod:`floranet.webpage`).

Batching: each request reads its body asynchronously, decodes and resizes the
image in a thread pool (exactly as :meth:`Predictor.predict_bytes` does, so the
probabilities are the same), then queues the pixels. One batcher task takes
up to ``max_batch`` queued images, waiting at most ``max_wait_ms`` after the
first for more, runs a single :meth:`Predictor.probabilities` call in a
dedicated worker thread (the event loop stays free) and resolves each
request's future. While a batch runs, new requests queue up, so under load
batches fill by themselves and ``max_wait_ms`` only matters when traffic is
light.

Safety (every error answers JSON ``{"error": message}``):

* 400: empty body, malformed multipart, or no ``file`` field.
* 408: the body did not arrive within ``request_timeout_s`` (slow or stalled
  client); the connection is closed.
* 413: the body is larger than ``max_upload_bytes`` (refused from
  ``Content-Length`` before reading, or cut off while counting when the client
  sends no or a false length), or the image's header declares more pixels than
  the model's ``max_pixels`` (a decompression bomb, refused before decoding).
* 415: the content is not an image, or in a format Pillow cannot read (HEIC).
  The content decides; file name and content type are never trusted.
* 422: the image is recognised but damaged (truncated, corrupt header,
  unsupported colour mode).
* 503 with ``Retry-After``: more than ``4 * max_batch`` images are already
  being decoded, waiting or in inference.

No endpoint reads a path from the request; an uploaded file name is only
echoed back as a label (its last path component). The model loads in Keras
safe mode: a model with code in it (a ``Lambda`` layer) is refused with
:class:`ModelError` unless ``unsafe=True``.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import hashlib
import io
import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from floranet.errors import ConfigError, DatasetError, ModelError

logger = logging.getLogger("floranet.serve")

_MAX_LABEL = 200
_TRUE = frozenset({"1", "true", "yes", "on"})


class RequestError(Exception):
    """An error answered to the client as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, *, close: bool = False,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
        if close:  # the body was not (fully) read: the connection cannot be reused
            self.headers["Connection"] = "close"


@dataclass
class _Item:
    pixels: np.ndarray  # float32 [H, W, 3] at the model's image size
    future: asyncio.Future
    queued_at: float


@dataclass
class BatchStats:
    """Counters of the batcher (for benchmarks and logs)."""

    batches: int = 0
    images: int = 0
    largest: int = 0
    sizes: list[int] = field(default_factory=list)

    def add(self, n: int) -> None:
        self.batches += 1
        self.images += n
        self.largest = max(self.largest, n)
        if len(self.sizes) < 100_000:
            self.sizes.append(n)


class Batcher:
    """Groups queued images into batches and runs them in one worker thread.

    Bound to the event loop it was first used on; a new loop (e.g. a new test
    client) gets a fresh queue and task.
    """

    def __init__(self, infer: Any, *, max_batch: int, max_wait_s: float) -> None:
        self._infer = infer
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.stats = BatchStats()
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="floranet-infer")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._task is not None and not self._task.done():
            return
        self._loop = loop
        self._queue = asyncio.Queue()
        self._task = loop.create_task(self._run(), name="floranet-batcher")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await task

    async def submit(self, pixels: np.ndarray) -> tuple[np.ndarray, float, float, int]:
        """Queues one image; returns (probabilities, queue ms, inference ms, batch size)."""
        self.start()
        assert self._queue is not None
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(pixels, future, time.perf_counter()))
        return await future

    async def _run(self) -> None:
        assert self._queue is not None
        queue = self._queue
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                if not queue.empty():
                    batch.append(queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), remaining))
                except TimeoutError:
                    break
            live = [item for item in batch if not item.future.done()]  # drop requests already gone
            if not live:
                continue
            started = time.perf_counter()
            try:
                probs = await loop.run_in_executor(self._pool, self._infer, np.stack([i.pixels for i in live]))
            except Exception as e:  # noqa: BLE001 - every waiting request gets the error
                logger.exception("inference failed for a batch of %d", len(live))
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(e)
                continue
            infer_ms = (time.perf_counter() - started) * 1000
            self.stats.add(len(live))
            for item, p in zip(live, probs):
                if not item.future.done():
                    item.future.set_result((p, (started - item.queued_at) * 1000, infer_ms, len(live)))


def model_version(run_dir: str | os.PathLike[str]) -> str:
    """``<first 12 hex digits of sha256(model.keras)>-<run folder name>``."""
    run = Path(run_dir)
    digest = hashlib.sha256()
    with open(run / "model.keras", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return f"{digest.hexdigest()[:12]}-{run.resolve().name}"


def create_app(run_dir: str | os.PathLike[str], *, max_upload_bytes: int = 20 * 1024 * 1024, max_batch: int = 32,
               max_wait_ms: float = 5.0, top_k: int = 3, unsafe: bool = False,
               request_timeout_s: float = 30.0, runtime: str = "auto", precision: str = "auto") -> FastAPI:
    """Loads the run and builds the FastAPI app (the model is warmed up before this returns).

    Args:
        run_dir: A finished run (``model.keras`` and ``class_names.json``).
        max_upload_bytes: Largest accepted request body.
        max_batch: Most images per model call.
        max_wait_ms: How long the batcher waits after a first image for more.
        top_k: Classes returned per image.
        unsafe: Allow a model that contains code (``Lambda`` layers); only for
            models you trust.
        request_timeout_s: Time allowed to receive a request body.
        runtime, precision: Inference runtime (:func:`floranet.runtime.choose`); ``auto``
            uses the fastest one installed, since a server amortises its start-up.

    Raises:
        ModelError: Not a finished run, or a model with code and ``unsafe`` is off.
        ConfigError: A setting is out of range.
    """
    from floranet import predict, webpage

    for name, value in (("max_upload_bytes", max_upload_bytes), ("max_batch", max_batch), ("top_k", top_k)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive int. Received: {name}={value!r}")
    for name, value in (("max_wait_ms", max_wait_ms), ("request_timeout_s", request_timeout_s)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (
                name == "request_timeout_s" and value == 0):
            raise ConfigError(f"{name} must be a positive number. Received: {name}={value!r}")

    if unsafe:
        logger.warning("loading %s with safe mode OFF: code inside the model will run", run_dir)
    predictor = predict.load(run_dir, safe_mode=not unsafe, runtime=runtime, precision=precision)
    choice = predictor.select(None)
    logger.info("inference on %s %s: %s", choice.runtime, choice.precision, choice.reason)
    version = model_version(run_dir)
    h, w = predictor.image_size
    for n in (1, 2):  # trace the model once for any batch size before the first request
        predictor.probabilities(np.zeros((n, h, w, 3), np.float32))

    batcher = Batcher(predictor.probabilities, max_batch=max_batch, max_wait_s=max_wait_ms / 1000)
    # Decoding a photo is ~1 ms; more threads than half the cores only take CPU from inference.
    workers = max(1, min(4, (os.cpu_count() or 2) // 2))
    decode_pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="floranet-decode")
    # Grad-CAM (a gradient pass, tens of ms) in its own thread: it never holds up decoding.
    gradcam_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="floranet-gradcam")
    max_pending = 4 * max_batch
    pending = 0
    gradcam_state: dict[str, Any] = {}
    gradcam_lock = threading.Lock()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="floranet", version=version, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.predictor = predictor
    app.state.batcher = batcher
    app.state.model_version = version

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        return error(exc.status, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error(400, f"invalid request: {exc.errors()}")

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return error(500, f"internal error: {type(exc).__name__}")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "model_version": version, "runtime": f"{choice.runtime} {choice.precision}"}

    @app.get("/classes")
    async def classes() -> list[str]:
        return list(predictor.class_names)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(webpage.PAGE, headers=webpage.HEADERS)

    @app.post("/predict")
    async def predict_endpoint(request: Request) -> JSONResponse:
        nonlocal pending
        t0 = time.perf_counter()
        want_cam = request.query_params.get("gradcam", "").strip().lower() in _TRUE
        body = await read_body(request, max_upload_bytes, request_timeout_s)
        name, data = extract_upload(request.headers.get("content-type", ""), body)
        del body
        if not data:
            raise RequestError(400, "empty upload: the image has 0 bytes")
        if pending >= max_pending:
            raise RequestError(503, f"server busy: {pending} images already waiting; retry shortly",
                               headers={"Retry-After": "1"})
        pending += 1
        try:
            loop = asyncio.get_running_loop()
            original, pixels, decode_ms = await loop.run_in_executor(
                decode_pool, _decode, data, name, predictor, want_cam)
            del data
            probs, queue_ms, infer_ms, batch_size = await batcher.submit(pixels)
            row = predictor._row(name, probs, top_k)
            payload: dict[str, Any] = {"file": name, "top_k": [{"class": c, "probability": p} for c, p in row.top_k],
                                       "low_confidence": row.low_confidence, "model_version": version}
            if want_cam:
                try:
                    payload["gradcam_png"] = await loop.run_in_executor(
                        gradcam_pool, _gradcam_png, predictor, gradcam_state, gradcam_lock, original, pixels,
                        int(np.argmax(probs)))
                except ModelError as e:
                    payload["gradcam_png"] = None
                    payload["gradcam_error"] = str(e)
        finally:
            pending -= 1
        payload["timing_ms"] = {"decode": round(decode_ms, 3), "queue": round(queue_ms, 3),
                                "inference": round(infer_ms, 3), "total": round((time.perf_counter() - t0) * 1000, 3)}
        return JSONResponse(payload, headers={"X-Batch-Size": str(batch_size)})

    return app


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """Reads the request body asynchronously, at most ``limit`` bytes within ``timeout_s``.

    Raises:
        RequestError: 413 (declared or counted size over the limit), 408
            (too slow), 400 (bad Content-Length or the client went away).
    """
    from starlette.requests import ClientDisconnect

    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise RequestError(400, f"invalid Content-Length header: {declared[:40]!r}", close=True) from None
        if size > limit:
            raise RequestError(413, f"upload too large: {size:,} bytes declared; the limit is {limit:,} bytes",
                               close=True)
    chunks: list[bytes] = []
    received = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit:
                    raise RequestError(413, f"upload too large: more than {limit:,} bytes received "
                                       f"(the limit)", close=True)
                chunks.append(chunk)
    except TimeoutError:
        raise RequestError(408, f"request body not received within {timeout_s:g} s "
                           f"({received:,} bytes arrived)", close=True) from None
    except ClientDisconnect:
        raise RequestError(400, "client disconnected before sending the whole body", close=True) from None
    return b"".join(chunks)


def extract_upload(content_type: str, body: bytes) -> tuple[str, bytes]:
    """(label, image bytes): the ``file`` field of a multipart body, else the body itself."""
    from python_multipart.multipart import parse_options_header

    mime, params = parse_options_header(content_type)
    if mime != b"multipart/form-data":
        return "upload", body
    boundary = params.get(b"boundary")
    if not boundary:
        raise RequestError(400, "multipart body without a boundary in its Content-Type")
    parts = _parse_multipart(boundary, body)
    for disposition, data in parts:
        _, opts = parse_options_header(disposition)
        if opts.get(b"name") == b"file":
            return _label(opts.get(b"filename", b"upload").decode("utf-8", "replace")), data
    names = sorted({parse_options_header(d)[1].get(b"name", b"?").decode("utf-8", "replace")[:40] for d, _ in parts})
    raise RequestError(400, "multipart upload has no 'file' field"
                       + (f" (fields: {', '.join(names)})" if names else ""))


def _parse_multipart(boundary: bytes, body: bytes, max_parts: int = 16) -> list[tuple[bytes, bytes]]:
    """[(Content-Disposition value, data)] of each part, in memory (the body is already bounded)."""
    from python_multipart import MultipartParser
    from python_multipart.exceptions import MultipartParseError

    parts: list[tuple[bytes, bytes]] = []
    state: dict[str, Any] = {"field": b"", "value": b"", "headers": {}, "data": []}

    def on_part_begin() -> None:
        if len(parts) >= max_parts:
            raise RequestError(400, f"multipart upload has more than {max_parts} parts")
        state["headers"], state["data"] = {}, []

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        state["data"].append(data[start:end])

    def on_part_end() -> None:
        parts.append((state["headers"].get(b"content-disposition", b""), b"".join(state["data"])))
        state["data"] = []

    parser = MultipartParser(boundary, {"on_part_begin": on_part_begin, "on_header_field": on_header_field,
                                        "on_header_value": on_header_value, "on_header_end": on_header_end,
                                        "on_part_data": on_part_data, "on_part_end": on_part_end})
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as e:
        raise RequestError(400, f"malformed multipart body: {e}") from None
    return parts


def _label(filename: str) -> str:
    """The last path component, printable, at most 200 characters (a label, never opened)."""
    name = PurePosixPath(filename.replace("\\", "/")).name
    name = "".join(ch for ch in name if ch.isprintable())
    return name[:_MAX_LABEL] or "upload"


def _status_for(e: DatasetError) -> int:
    reason = getattr(e, "reason", str(e))
    if reason.startswith("too large"):
        return 413
    if reason.startswith("empty"):
        return 400
    if reason.startswith(("not an image", "unsupported format")):
        return 415
    return 422


def _decode(data: bytes, name: str, predictor: Any, keep_original: bool
            ) -> tuple[np.ndarray | None, np.ndarray, float]:
    """Decode + resize exactly like ``Predictor.predict_bytes`` (runs in the decode pool)."""
    import tensorflow as tf

    from floranet.data import images

    started = time.perf_counter()
    try:
        pixels = images.decode_image_bytes(data, name=name, max_pixels=predictor.max_pixels)
    except DatasetError as e:
        raise RequestError(_status_for(e), str(e)) from None
    resized = tf.image.resize(tf.convert_to_tensor(pixels, tf.float32), predictor.image_size).numpy()
    return (pixels if keep_original else None), resized, (time.perf_counter() - started) * 1000


def _gradcam_png(predictor: Any, state: dict[str, Any], lock: threading.Lock, original: np.ndarray,
                 pixels: np.ndarray, class_index: int, max_side: int = 384) -> str:
    """Base64 PNG: the upright photo (longer side at most ``max_side``) with the heat map blended over it."""
    from matplotlib import colormaps
    from PIL import Image

    from floranet.gradcam import GradCAM

    with lock:
        if "cam" not in state:
            try:
                state["cam"] = GradCAM(predictor.model)
            except Exception as e:  # noqa: BLE001 - not a floranet classifier (no backbone/head)
                state["cam"] = ModelError(f"Grad-CAM is not available for this model: {e}")
    cam = state["cam"]
    if isinstance(cam, ModelError):
        raise cam
    heat, _ = cam.heatmaps(pixels[None], class_index=class_index)
    photo = Image.fromarray(original)
    photo.thumbnail((max_side, max_side), Image.BILINEAR)
    heat_img = Image.fromarray((heat[0] * 255).astype(np.uint8)).resize(photo.size, Image.BILINEAR)
    colours = (colormaps["jet"](np.asarray(heat_img) / 255.0)[..., :3] * 255).astype(np.float32)
    blended = np.asarray(photo, np.float32) * 0.55 + colours * 0.45
    buf = io.BytesIO()
    Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; anything else may be reachable from the network."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def run_server(run_dir: str | os.PathLike[str], *, host: str = "127.0.0.1", port: int = 8000,
               log_level: str = "info", limit_concurrency: int | None = 256, **kw: Any) -> None:
    """Serves ``create_app(run_dir, **kw)`` with uvicorn until interrupted.

    Args:
        host: Interface to bind; the default is only reachable from this machine.
        port: TCP port.
        log_level: uvicorn's log level.
        limit_concurrency: Connections beyond this get 503 from uvicorn itself.
        **kw: Passed to :func:`create_app`.
    """
    import uvicorn

    if not is_loopback(host):
        logger.warning("floranet serve is binding to %s: the server is REACHABLE FROM THE NETWORK, without "
                       "authentication or TLS. Use --host 127.0.0.1 unless that is what you want.", host)
    app = create_app(run_dir, **kw)
    logger.warning("floranet serve: %s (model %s, %s %s) on http://%s:%d/", run_dir, app.state.model_version,
                   app.state.predictor.choice.runtime, app.state.predictor.choice.precision, f"[{host}]" if ":" in host else host, port)
    uvicorn.run(app, host=host, port=port, log_level=log_level, limit_concurrency=limit_concurrency,
                timeout_keep_alive=5)


@contextlib.contextmanager
def serve_in_thread(app: Any, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                    startup_timeout_s: float = 30.0) -> Iterator[str]:
    """Runs ``app`` with uvicorn in a daemon thread (tests, benchmarks); yields its base URL.

    Binds the socket first, so ``port=0`` picks a free port without a race.
    """
    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(app, log_level=log_level, log_config=None, access_log=False, lifespan="on",
                            timeout_keep_alive=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="floranet-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError("the uvicorn server did not start")
        time.sleep(0.02)
    bound = sock.getsockname()[1]
    try:
        yield f"http://{f'[{host}]' if ':' in host else host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
