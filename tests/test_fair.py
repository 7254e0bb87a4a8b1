"""The serving pool that takes clients in turn: order, timeouts, and requests that go away."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from floranet.serving.fair import FairPool


def test_a_client_with_one_job_waits_for_at_most_one_of_anothers() -> None:
    pool = FairPool(1)
    finished: list[str] = []

    def job(name: str) -> str:
        time.sleep(0.02)
        finished.append(name)
        return name

    async def go() -> list[str]:
        many = [pool.run("busy", job, f"busy-{i}", timeout_s=5) for i in range(6)]
        tasks = [asyncio.ensure_future(c) for c in many]
        await asyncio.sleep(0)  # the busy client's six are queued first
        one = asyncio.ensure_future(pool.run("other", job, "other", timeout_s=5))
        return list(await asyncio.gather(*tasks, one))

    results = asyncio.run(go())
    assert results == [f"busy-{i}" for i in range(6)] + ["other"]
    assert finished.index("other") <= 1, finished  # FIFO would have made it last (index 6)


def test_clients_alternate_and_threads_are_all_used() -> None:
    pool = FairPool(2)
    running, peak, lock = [0], [0], threading.Lock()
    order: list[str] = []

    def job(name: str) -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            order.append(name)
        time.sleep(0.02)
        with lock:
            running[0] -= 1

    async def go() -> None:
        held = [asyncio.ensure_future(pool.run("x", job, f"x{i}", timeout_s=5)) for i in range(2)]
        await asyncio.sleep(0)  # both threads busy: what follows queues up
        queued = [asyncio.ensure_future(pool.run(c, job, f"{c}{i}", timeout_s=5)) for c in "ab" for i in range(4)]
        await asyncio.sleep(0)
        assert pool.queued() == 8 and pool.queued("a") == 4
        await asyncio.gather(*held, *queued)

    asyncio.run(go())
    assert peak[0] == 2
    # a queued all four first, yet neither client gets ahead of the other by more than one job
    started = {"a": 0, "b": 0}
    for name in order[2:]:
        started[name[0]] += 1
        if max(started.values()) < 4:
            assert abs(started["a"] - started["b"]) <= 1, order


def test_the_timeout_counts_from_the_start_and_errors_reach_the_caller() -> None:
    pool = FairPool(1)

    def fail() -> None:
        raise ValueError("bad image")

    async def go() -> None:
        # Queued behind a 0.3 s job, a 0.1 s job with a 0.2 s timeout still finishes: its wait is not counted.
        first = asyncio.ensure_future(pool.run("a", time.sleep, 0.3, timeout_s=5))
        await asyncio.sleep(0)
        await pool.run("b", time.sleep, 0.1, timeout_s=0.2)
        await first
        with pytest.raises(TimeoutError):
            await pool.run("a", time.sleep, 0.3, timeout_s=0.05)
        with pytest.raises(ValueError, match="bad image"):
            await pool.run("a", fail, timeout_s=5)

    asyncio.run(go())


def test_a_request_that_goes_away_while_queued_never_runs() -> None:
    pool = FairPool(1)
    ran: list[int] = []

    async def go() -> None:
        first = asyncio.ensure_future(pool.run("a", time.sleep, 0.1, timeout_s=5))
        await asyncio.sleep(0)
        gone = asyncio.ensure_future(pool.run("b", ran.append, 1, timeout_s=5))
        await asyncio.sleep(0.01)
        gone.cancel()
        await first
        await pool.run("c", ran.append, 2, timeout_s=5)
        assert pool.queued() == 0

    asyncio.run(go())
    assert ran == [2]


def test_a_job_waits_at_most_wait_s_for_a_thread_and_then_never_runs() -> None:
    """A decode thread stuck on one image used to hold every queued job, with no bound on the wait."""
    from floranet.serving.fair import QueueTimeout

    pool = FairPool(1)
    release, ran = threading.Event(), []

    async def go() -> None:
        stuck = asyncio.ensure_future(pool.run("a", release.wait, 5, timeout_s=10))
        await asyncio.sleep(0)
        start = time.perf_counter()
        with pytest.raises(QueueTimeout, match="no thread was free within 0.2 s"):
            await pool.run("b", ran.append, "b", timeout_s=10, wait_s=0.2)
        assert 0.2 <= time.perf_counter() - start < 2.0 and pool.queued() == 1  # dropped when a thread frees
        release.set()
        await stuck
        assert await pool.run("c", ran.append, "c", timeout_s=10, wait_s=1.0) is None

    asyncio.run(go())
    assert ran == ["c"] and pool.queued() == 0
