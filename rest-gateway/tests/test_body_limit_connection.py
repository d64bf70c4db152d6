"""A 413 answer and its connection agree (issue 14): the production gateway (gunicorn) over a raw socket.

The app refuses a body above K3SVIRT_MAX_BODY_BYTES without reading it; gunicorn cannot keep such a
connection (it gives up draining the body and closes), so the answer must say `Connection: close`
and the connection must then end. A body within the limit keeps the connection for the next request.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading

import pytest
from k3svirt_gateway.gunicorn_hooks import closes_after

from tests.gateway_proc import gateway

LIMIT = 4096


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a complete answer: {buf!r}"
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    want = int(headers.get("content-length", "0"))
    while len(body) < want:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside the answer's body"
        body += chunk
    return status, headers, body[:want]


def _closed_by_server(sock: socket.socket, timeout: float = 10.0) -> bool:
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _post(key: str, length: int, extra: str = "") -> bytes:
    return (
        f"POST /api/v1/vms?namespace=default HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n{extra}\r\n"
    ).encode()


@pytest.fixture(scope="module")
def small_limit_gateway(gw_kubeconfig, keys, tmp_path_factory):
    env = {"KUBECONFIG": gw_kubeconfig, "K3SVIRT_API_KEYS_FILE": keys["file"], "K3SVIRT_MAX_BODY_BYTES": str(LIMIT)}
    log = tmp_path_factory.mktemp("gw413") / "gateway.log"
    with gateway(env, log) as (url, _proc):
        host, port = url.removeprefix("http://").split(":")
        yield (host, int(port)), keys["admin"]


@pytest.mark.parametrize("sent", ["headers-only", "whole-body"])
def test_an_oversized_body_is_answered_413_and_the_connection_closes(small_limit_gateway, sent):
    addr, key = small_limit_gateway
    size = 2 << 20
    with socket.create_connection(addr, timeout=10) as sock:
        sock.sendall(_post(key, size))
        sender = None
        if sent == "whole-body":  # in a thread: the server may stop reading (and close) half-way
            sender = threading.Thread(target=lambda: _send_quietly(sock, b"x" * size), daemon=True)
            sender.start()
        status, headers, body = _read_response(sock)
        assert status == 413 and headers["content-type"] == "application/problem+json"
        assert str(LIMIT) in json.loads(body)["detail"]
        assert headers["connection"].lower() == "close", headers
        assert _closed_by_server(sock), "the 413 said close but the gateway kept the connection"
        if sender is not None:
            sender.join(10)


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the server closed after its 413: expected
        sock.sendall(data)


def test_a_chunked_body_closes_its_connection_after_the_answer(small_limit_gateway):
    addr, key = small_limit_gateway
    chunk = b"x" * (LIMIT * 2)
    req = (
        "POST /api/v1/vms?namespace=default HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode() + b"%x\r\n%s\r\n0\r\n\r\n" % (len(chunk), chunk)
    with socket.create_connection(addr, timeout=10) as sock:
        sock.sendall(req)
        status, headers, _ = _read_response(sock)
        assert 400 <= status < 500 and headers["connection"].lower() == "close", (status, headers)
        assert _closed_by_server(sock)


def test_a_body_within_the_limit_keeps_the_connection_for_the_next_request(small_limit_gateway):
    addr, key = small_limit_gateway
    body = b'{"name": "x", "spec": '  # truncated JSON: a 400, read in full
    with socket.create_connection(addr, timeout=10) as sock:
        sock.sendall(_post(key, len(body)) + body)
        status, headers, _ = _read_response(sock)
        assert status == 400 and headers["connection"].lower() == "keep-alive", (status, headers)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, headers, _ = _read_response(sock)
        assert status == 200, (status, headers)


@pytest.mark.parametrize(
    ("headers", "closes"),
    [
        ([("CONTENT-LENGTH", "4097")], True),
        ([("CONTENT-LENGTH", "4096")], False),
        ([("TRANSFER-ENCODING", "chunked")], True),
        ([("CONTENT-LENGTH", "x")], True),
        ([], False),
    ],
)
def test_which_requests_close(headers, closes):
    assert closes_after(headers, LIMIT) is closes
