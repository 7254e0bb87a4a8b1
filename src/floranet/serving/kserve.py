"""The Open Inference Protocol (KServe v2 / Triton HTTP) beside floranet's own API, on the same app.

Routes (``{name}``: the run folder's name, or ``--model-name``; every model route also answers under
``/v2/models/{name}/versions/{version}/...``, where ``{version}`` is the model version of ``/health``)::

    GET  /v2                        server metadata (name, version, extensions)
    GET  /v2/health/live            200 while the process serves
    GET  /v2/health/ready           200 once the model is loaded (it is before the server starts)
    GET  /v2/models/{name}          model metadata: inputs, outputs, datatypes, shapes, class names
    GET  /v2/models/{name}/ready    200
    POST /v2/models/{name}/infer    inference

Inputs (exactly one per request)::

    image   BYTES [N]             encoded images (JPEG, PNG, ...): decoded and resized as everywhere else
    pixels  FP32 or UINT8 [N, H, W, 3]   decoded RGB 0..255 at the model's size (FP32: finite, in [0, 255])

Outputs (all of them unless the request names some)::

    probabilities  FP32 [N, C]    class probabilities, columns in class order
    labels         BYTES [N, k]   the top-k class names, most probable first (k: the server's top_k)
    ood_score      FP32 [N]       the out-of-distribution score (higher: less like the training classes)
    unknown        BOOL [N]       ood_score > the run's threshold: the image looks like none of the classes

``ood_score`` and ``unknown`` exist when the run has an unknown answer (``ood.json``) and the server runs
with it on (``--unknown on``, the default); the model metadata lists them then, and the threshold.

Requested outputs may ask for binary data (``"binary_data": true``), and ``probabilities`` answers
Triton's classification extension (``"classification": k``: BYTES ``"<probability>:<index>:<label>"``).
JSON and the binary tensor data extension (``Inference-Header-Content-Length``) work both ways.

The same limits, batching and safety as ``POST /predict``: the body is read with
:func:`~floranet.serving.uploads.read_body` (size and time limits), every image goes through the shared
batcher one by one (so answers equal ``/predict``'s), images are decoded by
:func:`floranet.data.decode.decode_bytes` in the decode pool (clients in turn) with the same status per
unusable kind, a request holds at most one client's share of images (413 past it), and more pending images
than the server or the client's share allows answer 503. Errors answer ``{"error": message}``, which is also
the protocol's error object. The routes are plain routes of the app, so whatever middleware the app has
(authentication, host checks) applies to them too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response

from floranet.config import as_name
from floranet.inference.predictor import NON_FINITE, top_k
from floranet.serving import tensors
from floranet.serving.state import ServeState, Ticket, admitted, all_or_none, decode_upload, in_decode_pool
from floranet.serving.tensors import InferRequest, OutputTensor
from floranet.serving.uploads import RequestError, read_body

router = APIRouter()
IMAGE, PIXELS = "image", "pixels"
PROBABILITIES, LABELS = "probabilities", "labels"
OOD_SCORE, UNKNOWN = "ood_score", "unknown"
EXTENSIONS = ["binary_tensor_data", "classification"]


def model_name(state: ServeState) -> str:
    """The name the protocol uses: ``--model-name``, else the run folder's name made one (``my run #1`` →
    ``my_run__1``: the rule ``--model-name`` follows, so that every client can put it in a URL)."""
    return state.settings.model_name or as_name(state.predictor.run.path.resolve().name)


def _state(request: Request, name: str | None = None, version: str | None = None) -> ServeState:
    state: ServeState = request.app.state.serve
    if name is not None and name != model_name(state):
        raise RequestError(404, f"unknown model {name[:100]!r}; this server has {model_name(state)!r}")
    if version is not None and version != state.version:
        raise RequestError(404, f"unknown version {version[:100]!r} of {name!r}; this server has {state.version!r}")
    return state


def _top_k(state: ServeState) -> int:
    return min(state.settings.top_k, len(state.predictor.class_names))


def output_names(state: ServeState) -> tuple[str, ...]:
    """The outputs this server offers: the unknown answer's two only when it has one."""
    return (PROBABILITIES, LABELS, *((OOD_SCORE, UNKNOWN) if state.predictor.detector is not None else ()))


@router.get("/v2")
async def server_metadata(request: Request) -> dict[str, Any]:
    from floranet import __version__

    _state(request)
    return {"name": "floranet", "version": __version__, "extensions": EXTENSIONS}


@router.api_route("/v2/health/live", methods=["GET", "HEAD"])
@router.api_route("/v2/health/ready", methods=["GET", "HEAD"])
async def health(request: Request) -> Response:
    _state(request)  # the app exists only once its model is loaded and warmed up
    return Response(status_code=200)


@router.get("/v2/models/{name}/ready")
@router.get("/v2/models/{name}/versions/{version}/ready")
async def model_ready(request: Request, name: str, version: str | None = None) -> Response:
    _state(request, name, version)
    return Response(status_code=200)


@router.get("/v2/models/{name}")
@router.get("/v2/models/{name}/versions/{version}")
async def model_metadata(request: Request, name: str, version: str | None = None) -> dict[str, Any]:
    state = _state(request, name, version)
    h, w = state.predictor.image_size
    names = state.class_names
    detector = state.predictor.detector
    unknown_outputs = [
        {"name": OOD_SCORE, "datatype": "FP32", "shape": [-1]},
        {"name": UNKNOWN, "datatype": "BOOL", "shape": [-1]},
    ]
    return {
        "name": model_name(state),
        "versions": [state.version],
        "platform": "floranet",
        "inputs": [
            {"name": IMAGE, "datatype": "BYTES", "shape": [-1]},
            {"name": PIXELS, "datatype": "FP32", "shape": [-1, h, w, 3]},
        ],
        "outputs": [
            {"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, len(names)]},
            {"name": LABELS, "datatype": "BYTES", "shape": [-1, _top_k(state)]},
            *(unknown_outputs if detector is not None else []),
        ],
        "parameters": {
            "class_names": names,
            "unknown": {
                "method": detector.method,
                "threshold": detector.threshold,
                "rule": f"{UNKNOWN}: {OOD_SCORE} > threshold",
            }
            if detector is not None
            else "off",
            "image_size": [h, w],
            "inputs": f"exactly one: {IMAGE} (encoded images; base64 strings in JSON) or {PIXELS} "
            f"(RGB 0..255, NHWC, FP32 or UINT8, {h}x{w})",
            "runtime": f"{state.choice.runtime} {state.choice.precision}",
        },
    }


@router.post("/v2/models/{name}/infer")
@router.post("/v2/models/{name}/versions/{version}/infer")
async def infer(request: Request, name: str, version: str | None = None) -> Response:
    state = _state(request, name, version)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise RequestError(415, f"Content-Encoding {encoding[:40]!r} is not supported; send the body uncompressed")
    settings = state.settings
    async with admitted(state, request) as ticket:  # refused before the body is read when full
        body = await read_body(request, settings.max_upload_bytes, settings.request_timeout_s, ticket.hold_bytes)
        h, w = state.predictor.image_size
        # Parsing is CPU work like decoding: it takes the client's turn in the same pool, and JSON with more
        # numbers, lists or objects than a whole share of images could hold is refused before parsing: the
        # slowest 20 MB body under both limits parses in <2 s, about as long as a valid share of nested pixels
        # (1.3 s: 32 images of 224 x 224; without the lists' limit, 20 MB of empty lists took 4-6 s and 1-2 GB).
        parsed = await in_decode_pool(
            state,
            ticket,
            tensors.parse_request,
            body,
            request.headers.get("inference-header-content-length"),
            state.client_slots * h * w * 3 + 1024,  # + the JSON's own commas
            state.client_slots,  # a declared shape of more images is refused before its elements are read
            # Pixels [N, H, W, 3] nested by their shape hold 1 + N + N*H + N*H*W lists (the outer one, one per
            # image, row and pixel): at most a third of their 3*N*H*W values, plus N*(1 + H) + 1. The 1024 cover
            # the rest of the request (at most 8 inputs and 8 outputs, each with a shape and parameters).
            state.client_slots * (1 + h + h * w) + 1024,
            {IMAGE: ("BYTES",), PIXELS: ("FP32", "UINT8")},  # checked before the images are counted
            too_slow=f"the request took longer than {settings.decode_timeout_s:g} s to parse; retry later, or send "
            "images as BYTES or pixels as binary data",
        )
        del body
        ticket.take_slots(_count(state, parsed))
        pixels = await _pixels(state, ticket, parsed)
        results = await all_or_none(state.batcher.submit(p, ticket.client) for p in pixels)
    rows = np.stack([r[0] for r in results]).astype(np.float32)  # probabilities, then the unknown score
    if not np.isfinite(rows[:, : len(state.predictor.class_names)]).all():
        raise RequestError(500, f"cannot answer: {NON_FINITE}")
    header: dict[str, Any] = {"model_name": model_name(state), "model_version": state.version}
    if parsed.id is not None:
        header["id"] = parsed.id
    content, json_length = tensors.encode_response(header, _outputs(state, parsed, rows))
    if json_length is None:
        return Response(content, media_type="application/json")
    return Response(
        content,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(json_length)},
    )


def _count(state: ServeState, parsed: InferRequest) -> int:
    """Images in the request, after checking its one input and the outputs it asks for."""
    if len(parsed.inputs) != 1:
        names = ", ".join(repr(t.name) for t in parsed.inputs)
        raise RequestError(400, f"give exactly one input, {IMAGE!r} or {PIXELS!r}. Received: {names}")
    tensor = parsed.inputs[0]
    h, w = state.predictor.image_size
    if tensor.name == IMAGE:
        if tensor.datatype != "BYTES" or len(tensor.shape) != 1:
            raise RequestError(
                400, f"input {IMAGE!r} must be BYTES [N]. Received: {tensor.datatype} {list(tensor.shape)}"
            )
    elif tensor.name == PIXELS:
        if tensor.datatype not in tensors.FIXED or tensor.shape[1:] != (h, w, 3) or len(tensor.shape) != 4:
            raise RequestError(
                400,
                f"input {PIXELS!r} must be FP32 or UINT8 [N, {h}, {w}, 3] (the model's size; resize "
                f"bilinearly, or send encoded images as {IMAGE!r}). Received: {tensor.datatype} {list(tensor.shape)}",
            )
    else:
        raise RequestError(400, f"unknown input {tensor.name!r}; this model takes {IMAGE!r} or {PIXELS!r}")
    offered = output_names(state)
    unknown = [o.name for o in parsed.outputs or () if o.name not in offered]
    if unknown:  # refused before any work
        raise RequestError(400, f"unknown output {unknown[0]!r}; this model has {', '.join(repr(n) for n in offered)}")
    scalar = [o.name for o in parsed.outputs or () if o.classification and o.name != PROBABILITIES]
    if scalar:
        raise RequestError(400, f"output {scalar[0]!r} has no classification; ask it of {PROBABILITIES!r}")
    n = tensor.shape[0]
    if n < 1:
        raise RequestError(400, f"input {tensor.name!r} holds no image (shape {list(tensor.shape)})")
    if n > state.client_slots:
        raise tensors.too_many_images(n, state.client_slots)
    return int(n)


async def _pixels(state: ServeState, ticket: Ticket, parsed: InferRequest) -> list[np.ndarray]:
    """Float32 [H, W, 3] pixels of every image of the request."""
    tensor = parsed.inputs[0]
    if tensor.name == IMAGE:
        for i, data in enumerate(tensor.data):
            if not data:
                raise RequestError(400, f"image {i}: empty (0 bytes)")
        jobs = [
            decode_upload(state, ticket, data, f"image {i}", keep_photo=False) for i, data in enumerate(tensor.data)
        ]
        return [pixels for _, pixels, _ in await all_or_none(jobs)]
    array = tensor.data.reshape(tensor.shape)
    if tensor.datatype == "FP32":
        bad = ~np.isfinite(array) | (array < 0) | (array > 255)
        if bad.any():
            i = int(np.argwhere(bad)[0][0])
            raise RequestError(
                400, f"input {PIXELS!r}: image {i} has values outside [0, 255] (raw RGB, not normalized)"
            )
    return list(array.astype(np.float32))


def _outputs(state: ServeState, parsed: InferRequest, answers: np.ndarray) -> list[OutputTensor]:
    """The requested outputs (all offered ones when none are named) of ``answers``: :meth:`Predictor.outputs`."""
    names = state.class_names
    probs, scores = answers[:, : len(names)], answers[:, len(names)]
    wanted = parsed.outputs or tuple(tensors.RequestedOutput(n, parsed.binary_output) for n in output_names(state))
    out = []
    for req in wanted:
        binary = parsed.binary_output if req.binary is None else req.binary
        if req.name == OOD_SCORE:
            out.append(OutputTensor(req.name, "FP32", scores.shape, scores, binary))
        elif req.name == UNKNOWN:  # offered only with a detector (_count refuses it otherwise)
            detector = state.predictor.detector
            threshold = detector.threshold if detector is not None else np.inf
            out.append(OutputTensor(req.name, "BOOL", scores.shape, scores > threshold, binary))
        elif req.classification or req.name == LABELS:
            k = min(req.classification or _top_k(state), len(names))
            rows = [top_k(p, names, k) for p in probs]
            if req.classification:  # Triton's classification extension: "<value>:<index>:<label>"
                data = [f"{p:f}:{names.index(c)}:{c}" for row in rows for c, p in row]
            else:
                data = [c for row in rows for c, _ in row]
            out.append(OutputTensor(req.name, "BYTES", (len(probs), k), data, binary))
        else:
            out.append(OutputTensor(req.name, "FP32", probs.shape, probs, binary))
    return out
