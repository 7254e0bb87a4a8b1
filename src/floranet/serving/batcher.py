"""Dynamic batching: requests queue single images; one task groups them into model calls."""

from __future__ import annotations

import asyncio
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
