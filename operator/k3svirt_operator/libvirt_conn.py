"""The one libvirt connection of the operator process: event loop thread, reconnects, callbacks.

libvirt delivers domain lifecycle events only while its event loop runs, so a daemon thread runs
it for the whole process. When libvirtd goes away the close callback fires; the next `get()`
reconnects and registers the lifecycle callback again, and listeners hear `on_reconnect`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator

import libvirt

log = logging.getLogger(__name__)

LifecycleListener = Callable[[str, int, int], None]  # (domain name, event, detail)

_event_loop_started = threading.Lock()
_event_loop_running = False


def _start_event_loop() -> None:
    global _event_loop_running
    with _event_loop_started:
        if _event_loop_running:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_running = True


def _silence_default_error_handler() -> None:
    # libvirt prints every error to stderr by default; we raise and log them ourselves.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


class LibvirtConnection:
    """``events=False``: a connection that only makes calls (the stats sampler's own), no lifecycle events."""

    def __init__(self, uri: str, *, events: bool = True) -> None:
        self.uri = uri
        self.events = events
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.RLock()
        self._listeners: list[LifecycleListener] = []
        self._reconnect_listeners: list[Callable[[], None]] = []
        _silence_default_error_handler()
        _start_event_loop()

    def add_lifecycle_listener(self, fn: LifecycleListener) -> None:
        self._listeners.append(fn)

    def add_reconnect_listener(self, fn: Callable[[], None]) -> None:
        self._reconnect_listeners.append(fn)

    def get(self) -> libvirt.virConnect:
        """A live connection; reconnects (once per call) after libvirtd restarted."""
        with self._lock:
            if self._conn is not None:
                try:
                    if self._conn.isAlive():
                        return self._conn
                except libvirt.libvirtError:
                    pass
                self._drop()
            self._conn = self._open()
            return self._conn

    def wait_connected(self, timeout: float) -> libvirt.virConnect:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.get()
            except libvirt.libvirtError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)

    def _open(self) -> libvirt.virConnect:
        conn = libvirt.open(self.uri)
        conn.setKeepAlive(5, 3)
        conn.registerCloseCallback(self._closed, None)
        if self.events:
            conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle, None)
        log.info("connected to libvirt", extra={"uri": self.uri})
        for fn in self._reconnect_listeners:
            fn()
        return conn

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                self._conn.close()
        self._conn = None

    def _closed(self, _conn: libvirt.virConnect, reason: int, _opaque: object) -> None:
        log.warning("libvirt connection closed", extra={"reason": reason})
        # Reconnect from a fresh thread: the event loop thread must not block on open().
        threading.Thread(target=self._reconnect_soon, name="libvirt-reconnect", daemon=True).start()

    def _reconnect_soon(self) -> None:
        with self._lock:
            self._conn = None
        while True:
            try:
                self.get()
                return
            except libvirt.libvirtError as exc:
                log.warning("libvirt not reachable yet", extra={"error": exc.get_error_message()})
                time.sleep(1.0)

    def _lifecycle(
        self, _conn: libvirt.virConnect, dom: libvirt.virDomain, event: int, detail: int, _opaque: object
    ) -> None:
        name = dom.name()
        for fn in self._listeners:
            try:
                fn(name, event, detail)
            except Exception:  # a listener's bug must not kill libvirt's event thread
                log.exception("lifecycle listener failed")

    @contextlib.contextmanager
    def dedicated(self) -> Iterator[libvirt.virConnect]:
        """A connection of its own for one long call (a domain start). libvirtd serves at most
        max_client_requests (default 5) calls of one connection at a time: 16 starts on the shared
        connection would make every other call of this operator (defines, lookups, status) wait
        behind them, and a burst would start 5 domains at a time where 50 `virsh create` run 20."""
        conn = libvirt.open(self.uri)
        try:
            yield conn
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

    def close(self) -> None:
        with self._lock:
            self._drop()
