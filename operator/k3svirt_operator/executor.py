"""The operator's thread pool: up to max_workers threads, of which the idle ones end.

A 100-VM burst grows the loop's executor to its 32 threads (handlers.startup); a plain
ThreadPoolExecutor keeps them all for good, each with the stack pages and allocator caches the burst
touched, and its kept-alive API connection (bench/README.md, "Session 8"). Here work goes to the thread
that became idle last (LIFO), so a light steady load (status writes at rest) keeps a few threads
busy while the others stay idle; a thread idle for `idle_seconds` ends (glibc hands an ended
thread's stack pages back) and the next burst starts threads again.

A ThreadPoolExecutor subclass only because asyncio's set_default_executor wants one: submit() and
shutdown() are its own, none of ThreadPoolExecutor's threads or queue is used.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class _Idle:
    """A parked thread: submit() hands it one item and sets `wake`."""

    __slots__ = ("item", "wake")

    def __init__(self) -> None:
        self.wake = threading.Event()
        self.item: tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]] | None = None


class RetiringThreadPool(ThreadPoolExecutor):
    def __init__(self, max_workers: int, thread_name_prefix: str = "pool", idle_seconds: float = 20.0) -> None:
        super().__init__(max_workers=1)  # no thread: only for isinstance checks
        self.max_workers = max_workers
        self.prefix = thread_name_prefix
        self.idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._pending: collections.deque[Any] = collections.deque()  # items no thread took yet
        self._idle: list[_Idle] = []  # parked threads, the last parked on top
        self._workers: set[threading.Thread] = set()
        self._serial = 0
        self._closed = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        item = (fut, fn, args, kwargs)
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if self._idle:
                parked = self._idle.pop()  # LIFO: the threads at the bottom stay idle and end
                parked.item = item
                parked.wake.set()
            elif len(self._workers) < self.max_workers:
                self._serial += 1
                t = threading.Thread(target=self._run, args=(item,), name=f"{self.prefix}_{self._serial}")
                self._workers.add(t)
                t.start()
            else:
                self._pending.append(item)
        return fut

    def _run(self, item: Any) -> None:
        me = threading.current_thread()
        while item is not None:
            fut, fn, args, kwargs = item
            del item
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(*args, **kwargs))
                except BaseException as exc:  # handed to the caller, as ThreadPoolExecutor does
                    fut.set_exception(exc)
                    del exc
            del fut, fn, args, kwargs
            item = self._next(me)

    def _next(self, me: threading.Thread) -> Any:
        """The thread's next item, or None when it ends (idle too long, or shut down)."""
        with self._lock:
            if self._pending:
                return self._pending.popleft()
            if self._closed:
                self._workers.discard(me)
                return None
            parked = _Idle()
            self._idle.append(parked)
        parked.wake.wait(self.idle_seconds)
        with self._lock:
            if parked.item is None:  # nothing handed over: end (timeout or shutdown)
                if parked in self._idle:
                    self._idle.remove(parked)
                self._workers.discard(me)
            return parked.item

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            if cancel_futures:
                while self._pending:
                    self._pending.popleft()[0].cancel()
            workers = list(self._workers)
            for parked in self._idle:
                parked.wake.set()
            self._idle.clear()
        if wait:
            for t in workers:
                t.join()

    @property
    def threads(self) -> int:
        with self._lock:
            return len(self._workers)
