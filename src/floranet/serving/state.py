"""What every route shares: the server's state, admission before a body is read, and decoding an upload."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np
from fastapi import Request

from floranet.config import ServeConfig
from floranet.data import decode
from floranet.data.images import UnusableImageError
from floranet.inference import Predictor
from floranet.inference.runtime import RuntimeChoice
from floranet.serving.batcher import Batcher
from floranet.serving.overlay import GradCamOverlay
from floranet.serving.uploads import RequestError

# An unusable image's kind → HTTP status (anything else: 422, a damaged image).
STATUS = {"too_large": 413, "empty": 400, "not_image": 415, "unsupported_format": 415}


@dataclass
class ServeState:
    """Everything the routes share, kept on ``app.state.serve``."""

    predictor: Predictor
    choice: RuntimeChoice
    settings: ServeConfig
    version: str
    batcher: Batcher
    decode_pool: concurrent.futures.ThreadPoolExecutor
    gradcam_pool: concurrent.futures.ThreadPoolExecutor
    overlay: GradCamOverlay
    pending: int = 0
    inflight_bytes: int = 0
    max_pending: int = field(init=False)

    def __post_init__(self) -> None:
        self.max_pending = 4 * self.settings.max_batch


def state_of(request: Request) -> ServeState:
    state: ServeState = request.app.state.serve
    return state


@contextlib.asynccontextmanager
async def admitted(state: ServeState, request: Request) -> AsyncIterator[None]:
    """Holds one of the server's request slots and the body's bytes budget, or answers 503 at once.

    The bytes reserved are the declared ``Content-Length`` (bodies over ``max_upload_bytes`` are refused by
    :func:`read_body`), or ``max_upload_bytes`` when the client declares none.
    """
    settings = state.settings
    declared = request.headers.get("content-length", "")
    reserve = min(int(declared), settings.max_upload_bytes) if declared.isdigit() else settings.max_upload_bytes
    if state.pending >= state.max_pending or state.inflight_bytes + reserve > settings.max_inflight_bytes:
        raise RequestError(
            503,
            f"server busy: {state.pending} images already waiting; retry shortly",
            close=True,
            headers={"Retry-After": "1"},
        )
    state.pending += 1
    state.inflight_bytes += reserve
    try:
        yield
    finally:
        state.pending -= 1
        state.inflight_bytes -= reserve


async def decode_upload(
    state: ServeState, data: bytes, name: str, *, keep_photo: bool
) -> tuple[np.ndarray | None, np.ndarray, float]:
    """Decodes in the decode pool within ``decode_timeout_s`` (503 past it; the thread finishes on its own,
    bounded by ``max_pixels``, which every allowed decoder's cost is linear in)."""
    loop = asyncio.get_running_loop()
    work = loop.run_in_executor(state.decode_pool, decode_sync, data, name, state, keep_photo)
    try:
        return await asyncio.wait_for(work, state.settings.decode_timeout_s)
    except TimeoutError:
        raise RequestError(
            503,
            f"image took longer than {state.settings.decode_timeout_s:g} s to decode; retry "
            "later or send a smaller image",
            headers={"Retry-After": "1"},
        ) from None


def decode_sync(
    data: bytes, name: str, state: ServeState, keep_photo: bool
) -> tuple[np.ndarray | None, np.ndarray, float]:
    """Decode + resize exactly as every other command does (runs in the decode pool); the photo itself is
    kept, shrunk to the overlay's size, only when Grad-CAM is asked for."""
    started = time.perf_counter()
    try:
        photo, pixels = decode.decode_bytes(
            data,
            state.predictor.image_size,
            name=name,
            max_pixels=min(state.settings.max_pixels, state.predictor.max_pixels),
        )
    except UnusableImageError as e:
        raise RequestError(STATUS.get(e.kind, 422), str(e)) from None
    kept = state.overlay.shrink(photo) if keep_photo else None
    return kept, pixels, (time.perf_counter() - started) * 1000
