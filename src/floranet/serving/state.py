"""What every route shares: the server's state, admission before a body is read, and decoding an upload."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from fastapi import Request

from floranet.config import ServeConfig
from floranet.data import decode
from floranet.data.images import UnusableImageError
from floranet.inference import Predictor
from floranet.inference.runtime import RuntimeChoice
from floranet.serving.batcher import Batcher
from floranet.serving.fair import FairPool, QueueTimeout
from floranet.serving.overlay import GradCamOverlay
from floranet.serving.uploads import RequestError
from floranet.utils.text import utf8

T = TypeVar("T")
# An unusable image's kind → HTTP status (anything else: 422, a damaged image).
STATUS = {"too_large": 413, "empty": 400, "not_image": 415, "unsupported_format": 415}


@dataclass
class ClientShare:
    """What one client address holds now: image slots, bytes of request bodies received, and the requests that
    count against them (admitted and not yet ended)."""

    slots: int = 0
    bytes: int = 0
    requests: int = 0


@dataclass
class ServeState:
    """Everything the routes share, kept on ``app.state.serve``.

    Capacity is shared fairly: the server holds at most ``max_pending`` images (being decoded, waiting or in
    inference) and ``max_inflight_bytes`` of request bodies, and one client address at most
    ``client_share`` of each (:attr:`client_slots`, :attr:`client_bytes`), so one client, however busy, leaves
    room for the others.
    """

    predictor: Predictor
    choice: RuntimeChoice
    settings: ServeConfig
    version: str
    batcher: Batcher
    decode_pool: FairPool
    gradcam_pool: FairPool  # one thread, clients in turn
    overlay: GradCamOverlay
    pending: int = 0
    inflight_bytes: int = 0
    max_pending: int = field(init=False)
    class_names: list[str] = field(init=False)
    clients: dict[str, ClientShare] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.max_pending = 4 * self.settings.max_batch
        # As answers name them: JSON is UTF-8, and a folder's bytes that are not UTF-8 are sent as \xNN.
        self.class_names = [utf8(n) for n in self.predictor.class_names]

    @property
    def client_slots(self) -> int:
        """The most images one client may have pending at once (also the most in one request)."""
        return max(1, int(self.max_pending * self.settings.client_share))

    @property
    def client_bytes(self) -> int:
        """The most request-body bytes one client may have in memory at once (at least one largest upload)."""
        settings = self.settings
        one_upload = min(settings.max_upload_bytes, settings.max_inflight_bytes)
        return max(one_upload, int(settings.max_inflight_bytes * settings.client_share))


def state_of(request: Request) -> ServeState:
    state: ServeState = request.app.state.serve
    return state


def _busy(message: str) -> RequestError:
    return RequestError(503, f"server busy: {message}; retry shortly", close=True, headers={"Retry-After": "1"})


@dataclass
class Ticket:
    """One request's hold on the server: the body bytes it has received and the image slots it has taken,
    counted for the server and for its client, and all given back when the request ends."""

    state: ServeState
    client: str
    share: ClientShare
    bytes: int = 0
    slots: int = 0

    def refusal(self, slots: int, nbytes: int) -> str | None:
        """Why ``slots`` more image slots and ``nbytes`` more body bytes would pass the server's or this client's
        bound (None: they would not)."""
        state, share = self.state, self.share
        if state.pending + slots > state.max_pending:
            return f"{state.pending} images already waiting"
        if state.inflight_bytes + nbytes > state.settings.max_inflight_bytes:
            return f"{state.inflight_bytes:,} bytes of uploads already in memory"
        if share.slots + slots > state.client_slots:
            return f"this client already has {share.slots} images waiting (its share: {state.client_slots})"
        if share.bytes + nbytes > state.client_bytes:
            return f"this client already has {share.bytes:,} bytes of uploads in memory"
        return None

    def _take(self, slots: int, nbytes: int) -> None:
        if (why := self.refusal(slots, nbytes)) is not None:
            raise _busy(why)
        self.state.pending += slots
        self.state.inflight_bytes += nbytes
        self.share.slots += slots
        self.share.bytes += nbytes
        self.slots += slots
        self.bytes += nbytes

    def hold_bytes(self, n: int) -> None:
        """Counts ``n`` more bytes of the body as they arrive (a slow client holds only what it has sent).

        Raises:
            RequestError: 503 when the server's or this client's bytes budget would be passed.
        """
        self._take(0, n)

    def take_slots(self, n: int) -> None:
        """Takes ``n`` image slots (a request's images, once its body is read).

        Raises:
            RequestError: 503 when the server's or this client's slots would be passed.
        """
        self._take(n, 0)

    def release(self) -> None:
        state = self.state
        state.pending -= self.slots
        state.inflight_bytes -= self.bytes
        self.share.slots -= self.slots
        self.share.bytes -= self.bytes
        self.slots = self.bytes = 0

    def end(self) -> None:
        """Gives back what the request holds, and forgets the client's share once no request of its holds it: a
        share dropped while another request still held it (admitted, no byte yet) would leave that request counting
        against a share nobody else sees, and the client's next request starting a fresh one."""
        self.release()
        self.share.requests -= 1
        if self.share.requests == 0 and self.state.clients.get(self.client) is self.share:
            del self.state.clients[self.client]


def client_of(request: Request) -> str:
    """The client's address (uvicorn's, which honours ``X-Forwarded-For`` only from trusted proxies)."""
    return request.client.host if request.client else "?"


@contextlib.asynccontextmanager
async def admitted(state: ServeState, request: Request) -> AsyncIterator[Ticket]:
    """A :class:`Ticket` for the request, or 503 at once, before a byte of the body is read, when the server or
    this client is already full (every slot taken, or the bytes budget spent)."""
    client = client_of(request)
    ticket = Ticket(state, client, state.clients.get(client) or ClientShare())
    if (why := ticket.refusal(1, 1)) is not None:  # not even one image or one byte would fit
        raise _busy(why)
    state.clients[client] = ticket.share
    ticket.share.requests += 1
    try:
        yield ticket
    finally:
        ticket.end()


async def all_or_none(jobs: Iterable[Awaitable[T]]) -> list[T]:
    """The results of ``jobs`` in order; when one fails, the others are cancelled (a job still queued in the
    decode pool never runs) and awaited before its error is raised, so an answered request leaves no work behind
    that its released ticket no longer counts."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def in_decode_pool(state: ServeState, ticket: Ticket, fn: Callable[..., T], *args: Any, too_slow: str) -> T:
    """Runs ``fn(*args)`` in the decode pool, clients in turn: 503 when no thread takes it within
    ``request_timeout_s``, or when it runs past ``decode_timeout_s`` (``too_slow`` says why; the thread finishes on
    its own, bounded by ``max_pixels``: every allowed decoder's cost is linear in the pixels, a JPEG's in pixels
    times its scans, which are capped)."""
    settings = state.settings
    try:
        return await state.decode_pool.run(
            ticket.client, fn, *args, timeout_s=settings.decode_timeout_s, wait_s=settings.request_timeout_s
        )
    except QueueTimeout:
        why = f"server busy: no decode thread was free for {settings.request_timeout_s:g} s; retry later"
        raise RequestError(503, why, headers={"Retry-After": "1"}) from None
    except TimeoutError:
        raise RequestError(503, too_slow, headers={"Retry-After": "1"}) from None


async def decode_upload(
    state: ServeState, ticket: Ticket, data: bytes, name: str, *, keep_photo: bool
) -> tuple[np.ndarray | None, np.ndarray, float]:
    """Decodes one upload in the decode pool (:func:`in_decode_pool`)."""
    too_slow = (
        f"image took longer than {state.settings.decode_timeout_s:g} s to decode; retry later or send a smaller image"
    )
    return await in_decode_pool(state, ticket, decode_sync, data, name, state, keep_photo, too_slow=too_slow)


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
    except UnusableImageError as e:  # without the local user's hint: the client cannot change the server's limits
        advice = "; send a smaller image" if e.kind == "too_large" else ""
        raise RequestError(STATUS.get(e.kind, 422), f"Cannot decode image: {e.name!r} is {e.phrase}{advice}") from None
    kept = state.overlay.shrink(photo) if keep_photo else None
    return kept, pixels, (time.perf_counter() - started) * 1000
