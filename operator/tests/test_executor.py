"""executor.RetiringThreadPool: a burst grows the pool, idle threads end, light load uses few threads."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from k3svirt_operator.executor import RetiringThreadPool


def _burst(pool: RetiringThreadPool, n: int) -> list[int]:
    gate = threading.Barrier(n, timeout=10)  # n items at once: the pool grows to n threads
    return [f.result(timeout=10) for f in [pool.submit(lambda i=i: (gate.wait(), i)[1]) for i in range(n)]]


def _until(cond, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.02)
    return cond()


def test_idle_threads_end_and_a_new_burst_starts_them_again() -> None:
    pool = RetiringThreadPool(max_workers=6, thread_name_prefix="t-retire", idle_seconds=0.2)
    try:
        assert _burst(pool, 6) == list(range(6))
        assert pool.threads == 6
        assert _until(lambda: pool.threads == 0)
        assert _burst(pool, 4) == list(range(4))
        assert pool.submit(sum, [1, 2]).result(timeout=5) == 3
    finally:
        pool.shutdown(wait=True)
    assert not [t for t in threading.enumerate() if t.name.startswith("t-retire")]


def test_light_load_goes_to_the_last_idle_thread_so_the_others_end() -> None:
    pool = RetiringThreadPool(max_workers=8, thread_name_prefix="t-light", idle_seconds=0.5)
    try:
        _burst(pool, 8)
        used = set()
        for _ in range(40):  # one item every 25 ms: one thread suffices
            used.add(pool.submit(lambda: threading.current_thread().name).result(timeout=5))
            time.sleep(0.025)
        assert len(used) == 1
        assert _until(lambda: pool.threads <= 1)
    finally:
        pool.shutdown(wait=True)


def test_more_items_than_threads_all_run_and_errors_reach_the_caller() -> None:
    pool = RetiringThreadPool(max_workers=3, thread_name_prefix="t-busy", idle_seconds=30)
    futures = [pool.submit(time.sleep, 0.02) for _ in range(12)]
    assert all(f.result(timeout=10) is None for f in futures)
    assert pool.threads <= 3
    with pytest.raises(ZeroDivisionError):
        pool.submit(lambda: 1 / 0).result(timeout=5)
    pool.shutdown(wait=True)  # parked threads wake and end at once
    assert pool.threads == 0
    with pytest.raises(RuntimeError):
        pool.submit(sum, [1])


def test_asyncio_default_executor() -> None:
    async def main() -> list[int]:
        asyncio.get_running_loop().set_default_executor(RetiringThreadPool(4, "t-aio", idle_seconds=5))
        return list(await asyncio.gather(*(asyncio.to_thread(abs, -i) for i in range(10))))

    t0 = time.monotonic()
    assert asyncio.run(main()) == list(range(10))
    assert time.monotonic() - t0 < 3  # asyncio.run's shutdown_default_executor did not wait out idle_seconds
