"""The node's serial-console endpoint: WebSocket /console/<namespace>/<name> on the node address.

    server = ConsoleServer(settings, conn.get)   # started by the operator when a console key is set
    server.start(); ...; server.stop()

A client (the REST gateway, the kubectl plugin) presents a console ticket (k3svirt_common.console_ticket)
as `Authorization: Bearer <ticket>`; it names the VM (namespace, name, uid), is unexpired and unused.
The endpoint then opens the guest's serial pty, the one libvirt made for <console type='pty'> (its
path from the live domain XML), and pumps bytes both ways as binary WebSocket messages:

* back-pressure, no drops: the next read from the pty waits until the previous chunk is in the
  socket's buffer (websockets' send() waits above `write_limit`); a slow reader stalls QEMU's UART
  and with it the guest's writes, it never loses output;
* idle sessions live: WebSocket pings every PING_SECONDS (a dead peer is dropped after as long);
* one session per VM: a second is refused at the handshake with HTTP 409 (no read-only watchers:
  a watcher slower than the writer would stall the writer's output, or lose its own);
* the VM stops (QEMU closes the pty): the session closes with code 1000, reason "VM stopped".

Runs in its own thread with its own asyncio loop, so a console session never delays kopf's loop.
Libvirt is only asked (from a worker thread) for the domain's UUID, state and pty path.
"""

from __future__ import annotations

import asyncio
import errno
import http
import json
import logging
import os
import re
import termios
import threading
import tty
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import libvirt
from k3svirt_common import console_ticket as tickets
from k3svirt_common.names import domain_name
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

log = logging.getLogger(__name__)

DEFAULT_PORT = 9471
PING_SECONDS = 20.0
MAX_MESSAGE_BYTES = 64 * 1024  # keystrokes and pastes; a larger frame closes the session (1009)
READ_CHUNK = 64 * 1024
WRITE_LIMIT = 256 * 1024  # send() waits while more than this is queued for the peer
_PATH = re.compile(r"/console/([a-z0-9][-a-z0-9]{0,62})/([a-z0-9][-a-z0-9]{0,62})")


@dataclass(frozen=True)
class Target:
    """What a session needs to know of the domain."""

    pty: str | None
    running: bool
    uuid: str


def serial_pty(xml: str) -> str | None:
    """The host path of the domain's serial console pty (live XML), None without one."""
    devices = ET.fromstring(xml).find("devices")
    if devices is None:
        return None
    for tag in ("console", "serial"):
        for el in devices.findall(tag):
            if el.get("type") != "pty":
                continue
            source = el.find("source")
            path = source.get("path") if source is not None else el.get("tty")
            if path and path.startswith("/dev/pts/"):
                return path
    return None


def _target(conn: libvirt.virConnect, namespace: str, name: str) -> Target | None:
    try:
        dom = conn.lookupByName(domain_name(namespace, name))
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise
    running = dom.isActive() == 1
    return Target(serial_pty(dom.XMLDesc(0)) if running else None, running, dom.UUIDString())


def _refuse(connection: ServerConnection, status: http.HTTPStatus, reason: str, detail: str) -> Response:
    body = json.dumps({"status": int(status), "reason": reason, "detail": detail}) + "\n"
    resp = connection.respond(status, body)
    resp.headers["Content-Type"] = "application/json"
    return resp


class ConsoleServer:
    """The WebSocket console endpoint; `port=0` picks a free port (tests: `.port`)."""

    def __init__(
        self,
        key: bytes,
        libvirt_conn: Callable[[], libvirt.virConnect],
        *,
        host: str,
        port: int = DEFAULT_PORT,
        ping_seconds: float = PING_SECONDS,
    ) -> None:
        self.key, self.libvirt_conn, self.host = key, libvirt_conn, host
        self._requested_port, self.ping_seconds = port, ping_seconds
        self.nonces = tickets.NonceLedger()
        self.sessions: dict[tuple[str, str], ServerConnection] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            return self._requested_port
        return self._server.sockets[0].getsockname()[1]

    def url(self, namespace: str, name: str, host: str) -> str:
        host = f"[{host}]" if ":" in host else host
        return f"ws://{host}:{self.port}/console/{namespace}/{name}"

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="k3svirt-console", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop

        async def listen() -> Server:
            return await serve(
                self._session,
                self.host,
                self._requested_port,
                process_request=self._check,
                max_size=MAX_MESSAGE_BYTES,
                ping_interval=self.ping_seconds,
                ping_timeout=self.ping_seconds,
                write_limit=WRITE_LIMIT,
                close_timeout=2.0,  # a peer stuck behind unread output must not hold the VM's console
                compression=None,  # console bytes: deflate costs CPU and hides back-pressure
                server_header="k3svirt-operator",
            )

        try:
            self._server = loop.run_until_complete(listen())
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        log.info("console endpoint listening", extra={"host": self.host, "port": self.port})
        loop.run_forever()
        loop.close()

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is None or server is None or loop.is_closed():
            return

        async def close() -> None:
            server.close()
            await server.wait_closed()

        try:
            asyncio.run_coroutine_threadsafe(close(), loop).result(10)
        except Exception:  # noqa: BLE001 - stopping anyway
            log.warning("console endpoint did not close in time")
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    # ------------------------------------------------------------------ handshake
    async def _check(self, connection: ServerConnection, request: Request) -> Response | None:
        """Refuse before the upgrade (plain HTTP answers a client can read): bad path 404, no or a
        bad ticket 401, VM not running 409, console in use 409."""
        m = _PATH.fullmatch(urlsplit(request.path).path)
        if not m:
            return _refuse(connection, http.HTTPStatus.NOT_FOUND, "NotFound", "use /console/<namespace>/<name>")
        ns, name = unquote(m[1]), unquote(m[2])
        scheme, _, ticket = request.headers.get("Authorization", "").partition(" ")
        try:
            if scheme.lower() != "bearer":
                raise tickets.TicketError("a console ticket is required (Authorization: Bearer <ticket>)")
            claims = tickets.verify(self.key, ticket.strip(), ns, name)
        except tickets.TicketError as exc:
            log.warning("console ticket refused", extra={"namespace": ns, "vm": name, "why": str(exc)})
            return _refuse(connection, http.HTTPStatus.UNAUTHORIZED, "BadTicket", str(exc))
        try:
            target = await asyncio.to_thread(lambda: _target(self.libvirt_conn(), ns, name))
        except libvirt.libvirtError as exc:
            return _refuse(connection, http.HTTPStatus.SERVICE_UNAVAILABLE, "LibvirtError", exc.get_error_message())
        if target is None or target.uuid != claims.uid:
            return _refuse(connection, http.HTTPStatus.NOT_FOUND, "NotFound", f"VM {ns}/{name} has no domain here")
        if not target.running:
            return _refuse(connection, http.HTTPStatus.CONFLICT, "NotRunning", f"VM {ns}/{name} is not running")
        if target.pty is None:
            return _refuse(
                connection, http.HTTPStatus.CONFLICT, "NoSerialConsole", f"VM {ns}/{name} has no serial console"
            )
        if (ns, name) in self.sessions:
            return _refuse(connection, http.HTTPStatus.CONFLICT, "ConsoleInUse", self._busy(ns, name))
        try:
            self.nonces.use(claims)
        except tickets.TicketError as exc:
            return _refuse(connection, http.HTTPStatus.UNAUTHORIZED, "BadTicket", str(exc))
        connection.k3s_target = (ns, name, target.pty)  # type: ignore[attr-defined]
        return None

    @staticmethod
    def _busy(ns: str, name: str) -> str:
        return f"the console of VM {ns}/{name} is in use by another session (one at a time); try again once it closes"

    # ------------------------------------------------------------------ session
    async def _session(self, ws: ServerConnection) -> None:
        ns, name, pty = ws.k3s_target  # type: ignore[attr-defined]
        if (ns, name) in self.sessions:  # lost a race with a handshake checked at the same time
            await ws.close(4409, self._busy(ns, name)[:120])
            return
        self.sessions[(ns, name)] = ws
        fd = -1
        try:
            fd = os.open(pty, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            tty.setraw(fd, termios.TCSANOW)
            log.info("console session opened", extra={"namespace": ns, "vm": name})
            await _pump(ws, fd)
        except OSError as exc:
            await ws.close(1011, f"console unavailable: {exc.strerror}"[:120])
        finally:
            del self.sessions[(ns, name)]
            if fd >= 0:
                os.close(fd)
            log.info("console session closed", extra={"namespace": ns, "vm": name})


async def _wait_fd(fd: int, writable: bool) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    (loop.add_writer if writable else loop.add_reader)(fd, ready)
    try:
        await fut
    finally:
        (loop.remove_writer if writable else loop.remove_reader)(fd)


async def _guest_to_client(ws: ServerConnection, fd: int) -> str:
    while True:
        await _wait_fd(fd, writable=False)
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            continue
        except OSError as exc:
            if exc.errno == errno.EIO:  # QEMU closed the pty's other end: the VM stopped
                return "VM stopped"
            raise
        if not data:
            return "VM stopped"
        await ws.send(data)  # waits while the peer's buffer is full: back-pressure to the guest


async def _client_to_guest(ws: ServerConnection, fd: int) -> str:
    async for message in ws:
        data = message.encode() if isinstance(message, str) else message
        view = memoryview(data)
        while view:
            try:
                n = os.write(fd, view)
            except BlockingIOError:
                await _wait_fd(fd, writable=True)
                continue
            except OSError as exc:
                if exc.errno == errno.EIO:
                    return "VM stopped"
                raise
            view = view[n:]
    return ""


async def _pump(ws: ServerConnection, fd: int) -> None:
    tasks = [asyncio.create_task(_guest_to_client(ws, fd)), asyncio.create_task(_client_to_guest(ws, fd))]
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    reason = ""
    for t in done:
        exc: Any = t.exception()
        if exc is None:
            reason = t.result() or reason
        elif not isinstance(exc, asyncio.CancelledError):
            log.debug("console pump ended", extra={"error": repr(exc)})
    if reason:
        await ws.close(1000, reason)
