"""One process-wide stop signal for blocking work that runs in worker threads.

kopf runs sync handlers in threads, and Python cannot interrupt a thread: a download or a
``qemu-img convert`` in progress would keep the process alive long after SIGTERM. So blocking work
asks this module: child processes are run through :func:`run` (killed when the operator stops),
long loops call :func:`check`, and blocking sockets are registered with :func:`on_stop` so they can
be shut down from the signal side. Partial files are removed by their owners' ``except`` clauses.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence

STOP = threading.Event()
# kopf's own stop flag (kopf.run(stop_flag=...)): set together with STOP, from the event loop.
KOPF_STOP = asyncio.Event()
_callbacks: dict[int, Callable[[], None]] = {}
_lock = threading.Lock()
POLL = 0.2  # seconds between checks of a running child process


class Stopped(RuntimeError):
    """The operator is stopping: the work was cancelled (and its partial output removed)."""


def stopping() -> bool:
    return STOP.is_set()


def check(what: str) -> None:
    if STOP.is_set():
        raise Stopped(f"{what}: cancelled because the operator is stopping")


async def pause(seconds: float) -> bool:
    """Sleep up to ``seconds``; False at once when the operator is stopping. Background loops of
    our own use it, so they end with the operator (kopf waits 5 s for tasks it did not start)."""
    try:
        await asyncio.wait_for(KOPF_STOP.wait(), seconds)
    except TimeoutError:
        return True
    return False


async def wait_for_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``event``; False at once when the operator is stopping (as pause)."""
    waits = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(KOPF_STOP.wait())]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
    return not KOPF_STOP.is_set()


def install_signal_handlers(loop: asyncio.AbstractEventLoop) -> None:
    """Replace kopf's SIGTERM/SIGINT handlers: stop the worker threads' work first, then kopf."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop)


def request_stop() -> None:
    """Set the stop signal and run every registered callback once (idempotent). Call it from the
    event loop's thread (signal handlers and kopf hooks run there)."""
    STOP.set()
    KOPF_STOP.set()
    with _lock:
        callbacks = list(_callbacks.values())
        _callbacks.clear()
    for cb in callbacks:
        with contextlib.suppress(Exception):
            cb()


@contextlib.contextmanager
def on_stop(callback: Callable[[], None]) -> Iterator[None]:
    """Run ``callback`` (from the stopping thread) if the operator stops while the block runs."""
    key = id(callback)
    with _lock:
        _callbacks[key] = callback
    try:
        if STOP.is_set():
            callback()
        yield
    finally:
        with _lock:
            _callbacks.pop(key, None)


def run(argv: Sequence[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``subprocess.run(capture_output=True, text=True)`` that kills the child when the operator stops.

    Raises ``subprocess.TimeoutExpired`` after ``timeout`` seconds and :class:`Stopped` on stop, in
    both cases after the child has been killed and reaped.
    """
    check(argv[0])
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    waited = 0.0
    with on_stop(proc.kill):
        while True:
            try:
                out, err = proc.communicate(timeout=POLL)
                break
            except subprocess.TimeoutExpired:
                waited += POLL
                if STOP.is_set() or waited >= timeout:
                    proc.kill()
                    proc.communicate()
                    if STOP.is_set():
                        raise Stopped(f"{argv[0]}: cancelled because the operator is stopping") from None
                    raise subprocess.TimeoutExpired(list(argv), timeout) from None
    if STOP.is_set() and proc.returncode < 0:
        raise Stopped(f"{argv[0]}: cancelled because the operator is stopping")
    return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)
