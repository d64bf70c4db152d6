"""Hostile clients of the node's console endpoint (operator/k3svirt_operator/console.py), served by the
real ConsoleServer on loopback with the shared libvirt: every connection without a genuine, fresh
ticket for the VM it names is refused before any domain is looked at, with a plain HTTP answer, and
the endpoint keeps serving afterwards. (The gateway side, key scope and other namespaces, is in
tests/e2e/test_vm_console.py against a running guest.)"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator

import libvirt
import pytest
from k3svirt_common import console_ticket as t
from websockets.exceptions import InvalidMessage, InvalidStatus
from websockets.sync.client import connect

KEY = t.new_key().encode()


@pytest.fixture(scope="module")
def endpoint(libvirt_uri: str) -> Iterator[str]:
    from k3svirt_operator.console import ConsoleServer

    conn = libvirt.open(libvirt_uri)
    server = ConsoleServer(KEY, lambda: conn, host="127.0.0.1", port=0)
    server.start()
    yield f"ws://127.0.0.1:{server.port}"
    server.stop()
    conn.close()


def refused(url: str, headers: dict[str, str]) -> tuple[int, dict]:
    with pytest.raises(InvalidStatus) as info:
        connect(url, additional_headers=headers, open_timeout=10, legacy=True)
    resp = info.value.response
    return resp.status_code, json.loads(resp.body or b"{}")


UID = "00000000-0000-4000-8000-000000000001"


def _bearer(ticket: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {ticket}"}


# Tickets are minted when the test runs (a module-level one would expire while other tests run first).
CASES = [
    ("no ticket", lambda: {}, "required"),
    ("basic auth", lambda: {"Authorization": "Basic YTpi"}, "required"),
    ("empty bearer", lambda: {"Authorization": "Bearer "}, "no console ticket"),
    ("garbage", lambda: _bearer("abc.def"), "not signed"),
    ("oversized", lambda: _bearer("A" * 5000), "longer"),
    ("forged key", lambda: _bearer(t.mint(b"z" * 32, "ns1", "vm1", UID)), "not signed"),
    ("other vm", lambda: _bearer(t.mint(KEY, "ns1", "vm2", UID)), "is for VM ns1/vm2"),
    ("other namespace", lambda: _bearer(t.mint(KEY, "ns2", "vm1", UID)), "is for VM ns2/vm1"),
]


@pytest.mark.parametrize(("case", "headers", "why"), CASES, ids=[c[0] for c in CASES])
def test_bad_tickets_are_401(endpoint, case, headers, why):
    status, body = refused(f"{endpoint}/console/ns1/vm1", headers())
    assert status == 401 and body["reason"] == "BadTicket", body
    assert why in body["detail"], body


def test_expired_ticket_is_401(endpoint):
    ticket = t.mint(KEY, "ns1", "vm1", UID, lifetime=1)
    time.sleep(1.2)
    status, body = refused(f"{endpoint}/console/ns1/vm1", {"Authorization": f"Bearer {ticket}"})
    assert status == 401 and "expired" in body["detail"]


@pytest.mark.parametrize(
    "path", ["/", "/console", "/console/ns1", "/console/../etc/passwd", "/console/NS/vm", "/console/ns1/vm1/x",
             "/console/" + "a" * 64 + "/vm1", "/console/ns1/vm%2F1"],
)  # fmt: skip
def test_other_paths_are_404(endpoint, path):
    ticket = t.mint(KEY, "ns1", "vm1", UID)
    status, body = refused(endpoint + path, {"Authorization": f"Bearer {ticket}"})
    assert status == 404, (path, body)


def test_a_genuine_ticket_for_a_vm_this_node_does_not_run_is_404(endpoint):
    ticket = t.mint(KEY, "ns1", "no-such-vm", UID)
    status, body = refused(f"{endpoint}/console/ns1/no-such-vm", {"Authorization": f"Bearer {ticket}"})
    assert status == 404 and "no domain here" in body["detail"]


def test_control_characters_in_the_ticket_are_refused(endpoint):
    host, port = endpoint.removeprefix("ws://").split(":")
    request = (
        "GET /console/ns1/vm1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        "Authorization: Bearer \x01\x7f\xff\r\n\r\n"
    ).encode("latin-1")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request)
        answer = s.recv(4096)
    # Refused either way: a 4xx answer, or the connection closed unanswered (an unparsable header).
    assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer[:200]


def test_garbage_bytes_and_half_handshakes_leave_it_serving(endpoint):
    host, port = endpoint.removeprefix("ws://").split(":")
    for junk in (b"\x16\x03\x01\x00\xa5\x01\x00", b"GET / HTTP/1.1\r\n" + b"X: " + b"y" * 70000 + b"\r\n\r\n", b""):
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(junk)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(10)
            with contextlib.suppress(TimeoutError, ConnectionResetError):
                s.recv(4096)
    with pytest.raises((InvalidStatus, InvalidMessage)) as info:
        connect(f"{endpoint}/console/ns1/vm1", open_timeout=10, legacy=True)
    assert isinstance(info.value, InvalidStatus) and info.value.response.status_code == 401
