"""gunicorn hooks of the gateway: a 413 answer and its connection agree.

The app refuses a body larger than MAX_CONTENT_LENGTH (413) without reading it. gunicorn then tries to
drain the unread body before the next request on the connection, gives up after 64 KiB or a few
seconds and closes, although the 413 it had sent said `Connection: keep-alive`: a client that trusted
it lost its next request. gunicorn ignores a Connection header set by the application (hop-by-hop),
so the decision is made before the app runs: a request whose body cannot be read (declared larger
than the limit, or chunked with no declared length, which may run past it) is answered with
`Connection: close` and the connection is closed after the answer.

`k3svirt-gateway` installs this itself; with plain gunicorn: `gunicorn -c python:k3svirt_gateway.gunicorn_hooks
'k3svirt_gateway.wsgi:app'`.
"""

from __future__ import annotations

from typing import Any

from . import config


def closes_after(headers: list[tuple[str, str]], limit: int) -> bool:
    """True when the request's body may exceed `limit` bytes: then its connection is not kept alive."""
    for name, value in headers:
        upper = name.upper()
        if upper == "TRANSFER-ENCODING" and "chunked" in value.lower():
            return True
        if upper == "CONTENT-LENGTH":
            try:
                return int(value.strip()) > limit
            except ValueError:
                return True  # gunicorn refuses it anyway
    return False


def make_pre_request(limit: int) -> Any:
    def pre_request(worker: Any, req: Any) -> None:
        if closes_after(req.headers, limit):
            req.must_close = True  # gunicorn: "Connection: close" in the answer, then close

    return pre_request


# read by gunicorn when this module is its config file (`-c python:k3svirt_gateway.gunicorn_hooks`)
pre_request = make_pre_request(int(config.settings()["MAX_CONTENT_LENGTH"]))
