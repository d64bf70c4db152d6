"""/vms/{name}/console: the VM's serial console as a WebSocket, proxied from its node's operator.

The gateway never opens libvirt. It checks the caller (API key, role `operate`, namespace scope:
auth.check_request), reads the VM (409 unless Running), mints a console ticket for exactly this VM
(k3svirt_common.console_ticket, signed with the key it shares with the operators), connects to the
endpoint the operator published in status.consoleEndpoint and only then accepts the client's
upgrade, so every refusal (VM not running, console in use, node unreachable) is an ordinary
problem+json answer. The client's WebSocket runs over the socket gunicorn hands on (websockets'
threaded connection; websockets is also the client towards the node). Then two threads copy
messages each way; each send blocks while its peer's socket is full, so a slow client slows the
guest down instead of losing output.

Under gunicorn's gthread worker a session holds one of the worker's threads while it lasts (plus the
one copying the other way): K3SVIRT_THREADS bounds the concurrent consoles of a gateway process, and
MAX_SESSIONS keeps one thread free for ordinary requests.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app, request
from k3svirt_common import console_ticket
from k3svirt_common.names import PrintableStatus
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.http11 import Request as WsRequest
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.sync.client import ClientConnection, connect
from websockets.sync.connection import Connection

from ..api import check_name, namespace, op
from ..errors import Problem
from .vms import vm_path

log = logging.getLogger(__name__)
bp = Blueprint("console", __name__)

MAX_MESSAGE_BYTES = 64 * 1024  # a client frame above this closes the session (1009): keystrokes, pastes
PING_SECONDS = 20.0
CONNECT_TIMEOUT = 5.0
# A closing side waits at most this long for the peer's close frame: the peer may be stuck behind console
# output nobody reads any more, and the node frees the VM's console only once the session is gone.
CLOSE_SECONDS = 2.0


def blueprints() -> list[Blueprint]:
    return [bp]


def _key() -> bytes:
    cached = current_app.extensions.get("k3svirt.console_key")
    if cached is not None:
        return cached
    path = current_app.config.get("CONSOLE_KEY_FILE")
    if not path:
        raise Problem(503, "serial consoles are not configured on this gateway (K3SVIRT_CONSOLE_KEY_FILE)")
    try:
        key = console_ticket.load_key(Path(path))
    except (OSError, ValueError) as exc:
        log.error("console key unusable", extra={"path": path, "error": str(exc)})
        raise Problem(503, "the gateway's console key cannot be read; see its log") from None
    current_app.extensions["k3svirt.console_key"] = key
    return key


def _slots() -> threading.BoundedSemaphore:
    slots = current_app.extensions.get("k3svirt.console_slots")
    if slots is None:
        slots = threading.BoundedSemaphore(max(1, int(current_app.config.get("CONSOLE_MAX_SESSIONS", 2))))
        current_app.extensions["k3svirt.console_slots"] = slots
    return slots


def _upstream_refusal(exc: InvalidStatus) -> Problem:
    """The operator's refusal (HTTP status + JSON reason) as the caller's problem."""
    status = exc.response.status_code
    try:
        body = json.loads(exc.response.body or b"{}")
    except ValueError:
        body = {}
    detail = str(body.get("detail") or f"the node's console endpoint answered HTTP {status}")[:300]
    reason = str(body.get("reason") or "")[:40] or None
    if status == 409:
        return Problem(409, detail, reason=reason)
    if status == 404:
        return Problem(409, f"the VM's node does not run it now: {detail}", reason="NotRunning")
    # 401 here is the gateway's own ticket refused: the keys differ (misconfiguration), not the caller.
    log.error("node console endpoint refused the gateway", extra={"status": status, "detail": detail})
    return Problem(502, f"the node's console endpoint refused the gateway (HTTP {status}: {detail})")


def _open_upstream(endpoint: str, ticket: str) -> ClientConnection:
    try:
        return connect(
            endpoint,
            additional_headers={"Authorization": f"Bearer {ticket}"},
            open_timeout=CONNECT_TIMEOUT,
            ping_interval=PING_SECONDS,
            ping_timeout=PING_SECONDS,
            max_size=None,  # the operator sends chunks of at most 64 KiB
            compression=None,
            close_timeout=CLOSE_SECONDS,
            user_agent_header="k3svirt-gateway",
            legacy=True,  # the connection outlives this function (closed by _copy)
        )
    except InvalidStatus as exc:
        raise _upstream_refusal(exc) from None
    except (InvalidHandshake, OSError, TimeoutError) as exc:
        raise Problem(
            503, f"the VM's node console endpoint is unreachable: {type(exc).__name__}", headers={"Retry-After": "5"}
        ) from None


def _accept_client(max_size: int) -> Connection:
    """Complete the client's WebSocket handshake on the socket gunicorn (or werkzeug) hands the request
    on, and run the WebSocket over it with websockets' threaded connection (one lock around every
    write: data, pings and pongs never interleave)."""
    sock: socket.socket | None = request.environ.get("gunicorn.socket") or request.environ.get("werkzeug.socket")
    if sock is None:
        raise Problem(503, "this server cannot hand its connection over to a WebSocket")
    headers = Headers()
    for key, value in request.headers.items():
        headers[key] = value
    handshake = ServerProtocol()  # no extensions: no deflate of console bytes
    response = handshake.accept(WsRequest(request.full_path, headers))
    if response.status_code != 101:
        raise Problem(400, f"WebSocket handshake refused: {response.body.decode(errors='replace').strip()[:200]}")
    response.headers["Server"] = "k3svirt-gateway"
    handshake.send_response(response)
    sock.settimeout(None)
    sock.sendall(b"".join(handshake.data_to_send()))
    # gunicorn parsed the request, so the connection's protocol starts OPEN (reading frames, not HTTP).
    protocol = ServerProtocol(state=State.OPEN, max_size=max_size)
    conn = Connection(sock, protocol, ping_interval=PING_SECONDS, ping_timeout=PING_SECONDS, max_queue=4,
                      close_timeout=CLOSE_SECONDS)  # fmt: skip
    conn.start_keepalive()
    return conn


def _close_code(conn: Connection, fallback: str) -> tuple[int, str]:
    rcvd = conn.protocol.close_rcvd
    if rcvd is None:
        return 1011, fallback
    return (rcvd.code if rcvd.code in (1000, 1009, 1011, 4409) else 1011), rcvd.reason


def _copy(src: Connection, dst: Connection, lost: str) -> None:
    """Messages from src to dst until src closes; then dst closes with src's code and reason. Each send
    waits while dst's socket is full, so the slower side sets the pace (nothing is dropped)."""
    try:
        for message in src:
            dst.send(message)
    except (ConnectionClosed, OSError):
        pass
    finally:
        code, reason = _close_code(src, lost)
        with contextlib.suppress(ConnectionClosed, OSError):
            dst.close(code, reason[:120])


class _Hijacked(Response):
    """What the view returns once the socket belongs to the WebSocket: nothing more is written to it
    (as flask-sock does: gunicorn closes the connection at StopIteration, werkzeug at ConnectionError)."""

    def __call__(self, environ: Any, start_response: Any) -> Any:
        if "gunicorn.socket" in environ:
            raise StopIteration()
        raise ConnectionError()


@op(
    bp,
    "/vms/<name>/console",
    "GET",
    role="operate",
    summary="Serial console (WebSocket upgrade; binary frames both ways)",
    description=(
        "Upgrade to a WebSocket (RFC 6455: `Connection: Upgrade`, `Upgrade: websocket`) carrying the VM's "
        "serial console: binary messages from the client are typed into the guest, the guest's output "
        "arrives as binary messages. One session per VM at a time (a second: 409, reason ConsoleInUse); "
        "no read-only watchers. Pings every 20 s keep idle sessions open; output is never dropped (a slow "
        "client slows the guest's console down). The socket closes with code 1000, reason `VM stopped`, "
        "when the VM stops. Client messages above 64 KiB close the session (1009). Needs role operate."
    ),
    response=(101, None, "switching to the WebSocket protocol"),
    query=("namespace",),
    names="label",
    errors=(400, 401, 403, 404, 409, 422, 426, 502, 503),
    websocket=True,
)
def console_vm(name: str):
    ns = namespace()
    check_name(name, label=True)
    from . import kube

    vm = kube().get(vm_path(ns, name))
    status = vm.get("status") or {}
    printable = status.get("printableStatus") or PrintableStatus.PENDING
    if (vm.get("metadata") or {}).get("deletionTimestamp"):
        raise Problem(409, f"VirtualMachine {name!r} is being deleted", reason="Deleting")
    if printable != PrintableStatus.RUNNING:
        raise Problem(409, f"VirtualMachine {name!r} is not running (status {printable})", reason="NotRunning")
    endpoint = status.get("consoleEndpoint")
    if not isinstance(endpoint, str) or not endpoint.startswith("ws://"):
        raise Problem(503, f"VirtualMachine {name!r} has no console endpoint (yet)", headers={"Retry-After": "5"})
    key = _key()
    slots = _slots()
    if not slots.acquire(blocking=False):
        raise Problem(503, "this gateway serves as many consoles as it can; try again later",
                      headers={"Retry-After": "10"})  # fmt: skip
    try:
        uid = str((vm.get("metadata") or {}).get("uid") or "")
        upstream = _open_upstream(endpoint, console_ticket.mint(key, ns, name, uid))
        try:
            client = _accept_client(MAX_MESSAGE_BYTES)
        except BaseException:
            upstream.close()
            raise
        log.info("console session", extra={"namespace": ns, "vm": name})
        out = threading.Thread(target=_copy, args=(upstream, client, "node connection lost"), daemon=True)
        out.start()
        _copy(client, upstream, "client gone")
        out.join()
    finally:
        slots.release()
    return _Hijacked()
