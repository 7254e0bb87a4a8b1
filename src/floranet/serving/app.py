"""A REST server and web page for one finished run, with dynamic batching.

``create_app(run_dir)`` returns a FastAPI app; ``run_server(run_dir)`` serves
it with uvicorn on 127.0.0.1:8000.

Endpoints:

* ``POST /predict``: one image, either as the ``file`` field of a multipart
  form or as the raw request body (any other content type). Answers
  ``{"file", "top_k": [{"class", "probability"}], "low_confidence", "unknown",
  "ood_score", "model_version", "timing_ms": {"decode", "queue", "inference", "total"}}``;
  ``?gradcam=1`` adds ``"gradcam_png"`` (base64 PNG of the photo with the Grad-CAM heat map over it; null, with
  ``"gradcam_error"`` saying why, when it cannot be drawn) and ``"gradcam_note"`` (why the map is one flat tint
  when it is: a 1x1 feature map, or no positive evidence for the class; else null); ``1``/``true``/``yes``/``on``
  ask for it, ``0``/``false``/``no``/``off`` or no value do not, and anything else is a 400. The
  ``X-Batch-Size`` response header says how many images shared the model call.
* ``GET /health``: ``{"status": "ok", "model_version", "runtime", "unknown"}`` (the unknown method, or "off").
* ``GET /classes``: the class names, in model order.
* ``GET /``: a self-contained page (see :mod:`floranet.serving.page`).
* ``/v2/...``: the Open Inference Protocol (KServe v2, Triton's HTTP client), see :mod:`floranet.serving.kserve`.

Batching: each request reads its body asynchronously, decodes and resizes the
image in a thread pool (with :func:`floranet.data.decode.decode_bytes`, the decode path of
every other command, so the probabilities are the same), then queues the pixels. One batcher task takes
up to ``max_batch`` queued images (clients in turn, one image each), waiting at most ``max_wait_ms`` after the
first for more, runs a single :meth:`Predictor.outputs` call (probabilities and unknown score) in a
dedicated worker thread (the event loop stays free) and resolves each
request's future. While a batch runs, new requests queue up, so under load
batches fill by themselves and ``max_wait_ms`` only matters when traffic is
light.

Safety (every error answers JSON ``{"error": message}``):

* 400: empty body, malformed multipart, no ``file`` field, or a ``gradcam`` value that is neither yes nor no.
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
* 503 with ``Retry-After``: the server is full (``4 * max_batch`` images being
  decoded, waiting or in inference, or ``max_inflight_bytes`` of bodies received),
  or this client already holds its share of either (``client_share``; bodies are
  counted as they arrive, so a slow client holds only what it has sent).

Fairness: the decode threads and the Grad-CAM thread take clients in turn
(:class:`~floranet.serving.fair.FairPool`), so a client with many or huge images delays another
client's image by at most one image's decode, and its overlays another's by at most one overlay;
the batcher fills each batch with the waiting clients in turn, so another client's image rides in
the next batch, not behind the busy client's whole backlog.

No endpoint reads a path from the request; an uploaded file name is only
echoed back as a label (its last path component). The model loads in Keras
safe mode: a model with code in it (a ``Lambda`` layer) is refused with
:class:`ModelError` unless ``unsafe=True``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from floranet.config import InferenceConfig, ServeConfig
from floranet.data.formats import allowed_formats
from floranet.errors import ModelError
from floranet.inference import load
from floranet.inference.predictor import NON_FINITE
from floranet.serving import kserve, page
from floranet.serving.access import AccessMiddleware
from floranet.serving.batcher import Batcher
from floranet.serving.fair import FairPool
from floranet.serving.overlay import GradCamOverlay
from floranet.serving.state import ServeState, admitted, decode_upload, state_of
from floranet.serving.uploads import RequestError, extract_upload, read_body
from floranet.utils.system import usable_cpus
from floranet.utils.text import map_strings, printable, utf8

logger = logging.getLogger("floranet.serve")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
router = APIRouter()


def create_app(
    run_dir: str | os.PathLike[str],
    *,
    unsafe: bool = False,
    runtime: str = "auto",
    precision: str = "auto",
    unknown: bool = True,
    **settings: Any,
) -> FastAPI:
    """Loads the run and builds the FastAPI app (the model is warmed up before this returns).

    Args:
        run_dir: A finished run (``model.keras`` and ``class_names.json``).
        unsafe: Allow a model that contains code (``Lambda`` layers); only for models you trust.
        runtime, precision: Inference runtime (:func:`floranet.inference.runtime.choose`); ``auto``
            uses the fastest one installed, since a server amortises its start-up.
        unknown: Answer ``"unknown": true`` for images the run's out-of-distribution score rejects.
        **settings: :class:`floranet.config.ServeConfig` fields (``max_batch``, ``max_pixels``,
            ``api_key``, ``allowed_hosts``, ``model_name``, ...).

    Raises:
        ModelError: Not a finished run, or a model with code and ``unsafe`` is off.
        ConfigError: A setting is out of range.
    """
    limits = ServeConfig(**settings)
    allowed_formats()  # a bad FLORANET_EXTRA_IMAGE_FORMATS stops the start, not every upload
    if unsafe:
        logger.warning("loading %s with safe mode OFF: code inside the model will run", printable(os.fspath(run_dir)))
    predictor = load(
        run_dir,
        InferenceConfig(
            runtime=runtime, precision=precision, top_k=limits.top_k, safe_mode=not unsafe, unknown=unknown
        ),
    )
    choice = predictor.select(None)
    logger.info("inference on %s %s: %s", choice.runtime, choice.precision, choice.reason)
    h, w = predictor.image_size
    for n in (1, 2):  # trace the model once for any batch size before the first request
        blank = predictor.probabilities(np.zeros((n, h, w, 3), np.float32))
    if not np.isfinite(blank).all():  # a model that answers NaN would answer every client with garbage
        raise ModelError(f"Cannot serve {run_dir}: on a blank image {NON_FINITE}")
    # Decoding a photo is ~1 ms; more threads than half the cores only take CPU from inference. Clients take
    # turns at them, so one client's many or huge images never hold up another's.
    workers = max(1, min(4, usable_cpus() // 2))
    state = ServeState(
        predictor,
        choice,
        limits,
        utf8(predictor.run.model_version()),
        Batcher(predictor.outputs, max_batch=limits.max_batch, max_wait_s=limits.max_wait_ms / 1000),
        FairPool(workers, "floranet-decode"),
        # Grad-CAM (a gradient pass, tens of ms) in its own thread, so it never holds up decoding, and clients
        # take turns at it as at decoding: one client's many overlays never hold up another's one.
        FairPool(1, "floranet-gradcam"),
        GradCamOverlay(lambda: predictor.model),  # Keras is loaded only when Grad-CAM is asked for
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.batcher.start()
        yield
        await state.batcher.stop()

    app = FastAPI(
        title="floranet", version=state.version, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.serve = state
    app.state.predictor = predictor
    app.state.batcher = state.batcher
    app.state.model_version = state.version
    for kind, handler in _HANDLERS.items():
        app.add_exception_handler(kind, handler)
    app.include_router(router)
    app.include_router(kserve.router)
    app.add_middleware(AccessMiddleware, allowed_hosts=limits.allowed_hosts, api_key=limits.api_key)
    return app


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _request_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestError)
    return _error(exc.status, exc.message, exc.headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return _error(400, f"invalid request: {exc.errors()}")


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error on %s %s", request.method, request.url.path)
    return _error(500, f"internal error: {type(exc).__name__}")


_HANDLERS: dict[Any, Any] = {
    RequestError: _request_error,
    StarletteHTTPException: _http_error,
    RequestValidationError: _validation_error,
    Exception: _internal_error,
}


@router.api_route("/health", methods=["GET", "HEAD"])  # HEAD: probes that want only the status
async def health(request: Request) -> dict[str, str]:
    state = state_of(request)
    return {
        "status": "ok",
        "model_version": state.version,
        "runtime": f"{state.choice.runtime} {state.choice.precision}",
        "unknown": state.predictor.detector.method if state.predictor.detector else "off",
    }


@router.get("/classes")
async def classes(request: Request) -> list[str]:
    return state_of(request).class_names


@router.get("/", response_class=HTMLResponse)
async def index() -> HTMLResponse:
    return HTMLResponse(page.PAGE, headers=page.HEADERS)


@router.post("/predict")
async def predict(request: Request) -> JSONResponse:
    state = state_of(request)
    t0 = time.perf_counter()
    want_cam = _flag(request, "gradcam")  # a bad value is refused before the body is read
    async with admitted(state, request) as ticket:  # capacity is checked before a byte of the body is read
        settings = state.settings
        body = await read_body(request, settings.max_upload_bytes, settings.request_timeout_s, ticket.hold_bytes)
        name, data = extract_upload(request.headers.get("content-type", ""), body)
        del body
        if not data:
            raise RequestError(400, "empty upload: the image has 0 bytes")
        ticket.take_slots(1)
        photo, pixels, decode_ms = await decode_upload(state, ticket, data, name, keep_photo=want_cam)
        del data
        output, queue_ms, infer_ms, batch_size = await state.batcher.submit(pixels, ticket.client)  # probs + unknown
        answer = state.predictor.row(name, output)
        if answer.error:  # non-finite probabilities: the model's fault, not the image's
            raise RequestError(500, f"cannot answer for {name!r}: {answer.error}")
        payload: dict[str, Any] = {**answer.to_dict(), "model_version": state.version}
        del payload["error"]
        if photo is not None:
            payload.update(
                await _gradcam(
                    state, ticket.client, photo, pixels, int(np.argmax(output[: len(state.predictor.class_names)]))
                )
            )
    payload["timing_ms"] = {
        "decode": round(decode_ms, 3),
        "queue": round(queue_ms, 3),
        "inference": round(infer_ms, 3),
        "total": round((time.perf_counter() - t0) * 1000, 3),
    }
    return JSONResponse(map_strings(payload, utf8), headers={"X-Batch-Size": str(batch_size)})


def _flag(request: Request, name: str) -> bool:
    """The query parameter ``name`` as a yes/no (absent or empty: no).

    Raises:
        RequestError: 400 for a value that is neither, naming the parameter and the accepted values.
    """
    value = request.query_params.get(name, "")
    said = value.strip().lower()
    if said and said not in _TRUE + _FALSE:
        accepted = ", ".join(_TRUE + _FALSE)
        raise RequestError(400, f"{name} must be one of {accepted}. Received: {name}={value[:40]!r}", close=True)
    return said in _TRUE


async def _gradcam(
    state: ServeState, client: str, photo: np.ndarray, pixels: np.ndarray, class_index: int
) -> dict[str, Any]:
    """The overlay's fields of an answer, drawn in the Grad-CAM thread when it is ``client``'s turn: the PNG, and
    ``gradcam_note`` saying why its tint is flat when it is (sent without a word, a flat tint looked like an
    answer), or ``gradcam_error``."""
    name = state.predictor.class_names[class_index]
    try:
        png, note = await state.gradcam_pool.run(
            client, state.overlay.png, photo, pixels, class_index, name, timeout_s=None
        )
    except ModelError as e:
        return {"gradcam_png": None, "gradcam_note": None, "gradcam_error": str(e)}
    except Exception as e:  # the overlay is extra: its failure must not lose the prediction
        logger.exception("Grad-CAM failed")  # the details (paths, internals) go to the log, not to the client
        error = f"Grad-CAM failed (internal error: {type(e).__name__})"
        return {"gradcam_png": None, "gradcam_note": None, "gradcam_error": error}
    return {"gradcam_png": png, "gradcam_note": note}


def model_version(run_dir: str | os.PathLike[str]) -> str:
    """``<first 12 hex digits of sha256(model.keras)>-<run folder name>``."""
    from floranet.rundir import RunDir

    return RunDir(run_dir).model_version()
