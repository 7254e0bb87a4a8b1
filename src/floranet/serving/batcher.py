"""Dynamic batching: requests queue single images; one task groups them into model calls, clients in turn."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

logger = logging.getLogger("floranet.serve")


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

    Each client (its address) has its own queue, and a batch takes the clients in turn, one image each, starting
    with the one served longest ago: a client with a full batch of images waiting delays another's one image by at
    most the batch in progress, not by its whole backlog.

    Bound to the event loop it was first used on; a new loop (e.g. a new test
    client) gets fresh queues and a fresh task.
    """

    def __init__(self, infer: Any, *, max_batch: int, max_wait_s: float) -> None:
        self._infer = infer
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.stats = BatchStats()
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="floranet-infer")
        self._loop: asyncio.AbstractEventLoop | None = None
        # Clients with images waiting, in turn order; one that is served goes to the back.
        self._queues: collections.OrderedDict[str, collections.deque[_Item]] = collections.OrderedDict()
        self._waiting = 0
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._task is not None and not self._task.done():
            return
        self._loop = loop
        self._queues, self._waiting, self._arrived = collections.OrderedDict(), 0, asyncio.Event()
        self._task = loop.create_task(self._run(), name="floranet-batcher")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await task

    def queued(self, client: str | None = None) -> int:
        """Images waiting for a batch (of ``client``, or of everyone)."""
        return self._waiting if client is None else len(self._queues.get(client, ()))

    async def submit(self, pixels: np.ndarray, client: str = "") -> tuple[np.ndarray, float, float, int]:
        """Queues one image of ``client``; returns (probabilities, queue ms, inference ms, batch size)."""
        self.start()
        assert self._arrived is not None
        future = asyncio.get_running_loop().create_future()
        self._queues.setdefault(client, collections.deque()).append(_Item(pixels, future, time.perf_counter()))
        self._waiting += 1
        self._arrived.set()
        return await future

    def _take(self) -> list[_Item]:
        """Up to ``max_batch`` waiting images, one per client in turn."""
        batch: list[_Item] = []
        while self._queues and len(batch) < self.max_batch:
            client, queue = next(iter(self._queues.items()))
            batch.append(queue.popleft())
            self._waiting -= 1
            if queue:
                self._queues.move_to_end(client)  # its next image waits for the other clients' turns
            else:
                del self._queues[client]
        return batch

    async def _gather(self, loop: asyncio.AbstractEventLoop) -> list[_Item]:
        """Waits for a first image, then at most ``max_wait_s`` for a full batch; takes the batch."""
        arrived = self._arrived
        assert arrived is not None
        while not self._waiting:
            arrived.clear()
            await arrived.wait()
        deadline = loop.time() + self.max_wait_s
        while self._waiting < self.max_batch and (remaining := deadline - loop.time()) > 0:
            arrived.clear()
            try:
                await asyncio.wait_for(arrived.wait(), remaining)
            except TimeoutError:
                break
        return self._take()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather(loop)
            live = [item for item in batch if not item.future.done()]  # drop requests already gone
            if not live:
                continue
            started = time.perf_counter()
            try:
                probs = await loop.run_in_executor(self._pool, self._infer, np.stack([i.pixels for i in live]))
            except Exception as e:
                logger.exception("inference failed for a batch of %d", len(live))
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(e)
                continue
            infer_ms = (time.perf_counter() - started) * 1000
            self.stats.add(len(live))
            for item, p in zip(live, probs, strict=True):
                if not item.future.done():
                    item.future.set_result((p, (started - item.queued_at) * 1000, infer_ms, len(live)))
