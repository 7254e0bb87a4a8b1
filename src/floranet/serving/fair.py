"""A thread pool that takes its clients in turn, so one client's many images never hold up another's one.

A plain pool runs jobs first come, first served: a request with 32 slow images (a 16-megapixel PNG takes about
half a second to decode) queued ahead of a one-image request makes that one wait for all 32. :class:`FairPool`
keeps a queue per client and, whenever a thread is free, starts the oldest job of the waiting client with the
fewest jobs running, and among those the one served longest ago (round robin), so a client waits for at most
one job of each other client before its own starts.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class QueueTimeout(TimeoutError):
    """A job waited longer than its bound for a thread (every thread stayed busy)."""


@dataclass
class _Job(Generic[T]):
    fn: Callable[..., T]
    args: tuple[Any, ...]
    started: asyncio.Future[None]
    done: asyncio.Future[T]
    cancelled: bool = False


@dataclass
class FairPool:
    """``workers`` threads, each client's jobs in its own queue, clients served in turn.

    Runs on one event loop at a time (a job's futures belong to the loop that submitted it); every method is
    called from that loop's thread, so the queues need no lock.
    """

    workers: int
    name: str = "floranet-fair"
    _pool: concurrent.futures.ThreadPoolExecutor = field(init=False)
    _queues: dict[str, collections.deque[_Job[Any]]] = field(init=False)
    _running: collections.Counter[str] = field(init=False)
    _last_start: dict[str, int] = field(init=False)  # a client's turn number when its last job started
    _turn: int = 0
    _free: int = field(init=False)

    def __post_init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix=self.name)
        self._queues, self._running, self._last_start = {}, collections.Counter(), {}
        self._free = self.workers

    def queued(self, client: str | None = None) -> int:
        """Jobs waiting for a thread (of ``client``, or of everyone)."""
        if client is not None:
            return len(self._queues.get(client, ()))
        return sum(len(q) for q in self._queues.values())

    async def run(
        self, client: str, fn: Callable[..., T], *args: Any, timeout_s: float | None, wait_s: float | None = None
    ) -> T:
        """Runs ``fn(*args)`` in a thread once it is ``client``'s turn; waits at most ``timeout_s`` once it starts.

        Args:
            timeout_s: Longest run once started (None: no bound).
            wait_s: Longest wait for a thread (None: no bound); past it the job is dropped before it starts.

        Raises:
            QueueTimeout: No thread took the job within ``wait_s``.
            TimeoutError: The job ran longer than ``timeout_s`` (its thread finishes on its own; the pool
                counts the thread busy until then).
        """
        loop = asyncio.get_running_loop()
        job: _Job[T] = _Job(fn, args, loop.create_future(), loop.create_future())
        # A job whose caller stopped waiting (timeout, disconnect) may still fail later: mark it seen.
        job.done.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._queues.setdefault(client, collections.deque()).append(job)
        self._dispatch(loop)
        try:
            await asyncio.wait_for(asyncio.shield(job.started), wait_s)
        except asyncio.CancelledError:
            job.cancelled = True  # the request went away while queued: its job never starts
            raise
        except TimeoutError:
            job.cancelled = True
            raise QueueTimeout(f"no thread was free within {wait_s:g} s") from None
        return await asyncio.wait_for(asyncio.shield(job.done), timeout_s)

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        while self._free and self._queues:
            client = min(self._queues, key=lambda c: (self._running[c], self._last_start.get(c, -1)))
            queue = self._queues[client]
            job = queue.popleft()
            if not queue:
                del self._queues[client]
            if job.cancelled:
                if client not in self._queues and not self._running[client]:
                    self._last_start.pop(client, None)  # gone while queued: forget it as _finished would
                continue
            self._free -= 1
            self._running[client] += 1
            self._last_start[client] = self._turn
            self._turn += 1
            job.started.set_result(None)
            work = loop.run_in_executor(self._pool, job.fn, *job.args)
            work.add_done_callback(functools.partial(self._finished, loop, client, job))

    def _finished(
        self, loop: asyncio.AbstractEventLoop, client: str, job: _Job[Any], work: asyncio.Future[Any]
    ) -> None:
        self._free += 1
        self._running[client] -= 1
        if not self._running[client]:
            del self._running[client]
            if client not in self._queues:  # idle: forget it (the bookkeeping stays as small as the clients)
                self._last_start.pop(client, None)
        if not job.done.done():
            if work.cancelled():
                job.done.cancel()
            elif (error := work.exception()) is not None:
                job.done.set_exception(error)
            else:
                job.done.set_result(work.result())
        self._dispatch(loop)
