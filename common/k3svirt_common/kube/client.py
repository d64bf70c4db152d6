"""A small synchronous Kubernetes REST client on the standard library (http.client + ssl).

Objects are plain dicts (no typed models); every failure is an ApiError. One kept-alive connection
per thread for plain requests (safe to share between threads); streams (watches, followed logs) get
a connection of their own. Why not the `kubernetes` package or lightkube: see docs/architecture.md,
"Kubernetes client layer" (memory).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import socket
import ssl
import tempfile
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .config import KubeConfig
from .errors import ApiError

if TYPE_CHECKING:  # watch.py imports this module
    from .watch import Watch

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"  # JSON is YAML: server-side apply takes our JSON body
PATCH_TYPES = {"merge": MERGE_PATCH, "strategic": STRATEGIC_MERGE_PATCH, "json": JSON_PATCH}

# A kept-alive connection the server closed while idle fails like this on its next use: reconnect once.
# A kept-alive connection the server closed while idle (the API server drops idle ones) fails on
# its next use like this; over TLS that is an EOF in the TLS layer. One reconnect and retry then.
_STALE = (
    http.client.RemoteDisconnected,
    BrokenPipeError,
    ConnectionResetError,
    http.client.BadStatusLine,
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
)


def encode_query(query: Mapping[str, Any] | None) -> str:
    """'?a=b&...' without the None values; booleans as true/false."""
    if not query:
        return ""
    pairs = [
        (k, ("true" if v else "false") if isinstance(v, bool) else str(v)) for k, v in query.items() if v is not None
    ]
    return "?" + urllib.parse.urlencode(pairs) if pairs else ""


def _ssl_context(cfg: KubeConfig) -> ssl.SSLContext:
    if cfg.insecure or not (cfg.ca_file or cfg.ca_data):
        ctx = ssl.create_default_context()  # the system's CAs
        if cfg.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
    else:  # the cluster's CA only, as kubectl trusts it; the system's ~140 CAs cost ~1-2 MiB of RSS per context
        ctx = ssl.create_default_context(cafile=cfg.ca_file, cadata=cfg.ca_data.decode() if cfg.ca_data else None)
    if not (cfg.cert_file or cfg.cert_data):
        return ctx
    # ssl reads a client certificate only from files: inline data goes through a private temp dir.
    with tempfile.TemporaryDirectory(prefix="k3svirt-kube-") as tmp:
        cert, key = cfg.cert_file, cfg.key_file
        for name, data in (("cert", cfg.cert_data), ("key", cfg.key_data)):
            if data:
                path = os.path.join(tmp, f"{name}.pem")
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                cert, key = (path, key) if name == "cert" else (cert, path)
        ctx.load_cert_chain(cert or "", key)
    return ctx


class Stream:
    """An open streaming response (a watch, followed logs). interrupt() may be called from any
    thread; close() belongs to the reading thread."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> None:
        self.conn, self.resp = conn, resp
        self.status = resp.status
        self.closed = False

    def lines(self) -> Iterator[bytes]:
        """Lines without their newline, until the server ends the response."""
        for line in self._pull(self.resp.readline):
            yield line.rstrip(b"\r\n")

    def chunks(self, size: int = 64 * 1024) -> Iterator[bytes]:
        return self._pull(lambda: self.resp.read1(size))

    def _pull(self, read: Callable[[], bytes]) -> Iterator[bytes]:
        """A broken stream raises ApiError (status 0, reason StreamBroken) unless close() broke it."""
        while True:
            try:
                data = read()
            except (OSError, http.client.HTTPException, ValueError) as exc:
                if self.closed:
                    return
                raise ApiError.no_answer("StreamBroken", exc) from exc
            if not data:
                return
            yield data

    def interrupt(self) -> None:
        """Thread-safe: ends a read blocked in another thread (which then sees the stream end)."""
        self.closed = True
        sock = self.conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """By the thread that reads (http.client is not thread-safe); never reused for another request."""
        self.interrupt()
        self.conn.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class Client:
    """Safe to share between threads. `config` may be a loader, called on first use (so building an
    application never needs the API server or its credentials)."""

    def __init__(
        self,
        config: KubeConfig | Callable[[], KubeConfig],
        *,
        timeout: float = 10.0,
        connect_timeout: float = 3.0,
        user_agent: str = "k3svirt",
    ) -> None:
        self._source = config
        self._cfg: KubeConfig | None = config if isinstance(config, KubeConfig) else None
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.user_agent = user_agent
        self._lock = threading.Lock()
        self._ssl: ssl.SSLContext | None = None
        self._target: tuple[str, str, int] | None = None
        self._token: tuple[float, str] = (-1.0, "")
        self._local = threading.local()

    # ------------------------------------------------------------------ connection
    @property
    def config(self) -> KubeConfig:
        if self._cfg is None:
            with self._lock:
                if self._cfg is None:
                    assert callable(self._source)
                    self._cfg = self._source()  # ConfigError (an ApiError) when there is none
        return self._cfg

    def _endpoint(self) -> tuple[str, str, int]:
        if self._target is None:
            cfg = self.config
            url = urllib.parse.urlsplit(cfg.server)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise ApiError(0, "NotConfigured", f"API server URL {cfg.server!r} is not http(s)://HOST[:PORT]")
            if url.scheme == "https":
                try:
                    self._ssl = _ssl_context(cfg)
                except (OSError, ValueError) as exc:
                    raise ApiError.no_answer("NotConfigured", exc) from exc
            self._target = (url.scheme, url.hostname, url.port or (443 if url.scheme == "https" else 80))
        return self._target

    def _auth(self) -> dict[str, str]:
        cfg = self.config
        token = cfg.token
        if cfg.token_file:
            try:
                mtime = os.stat(cfg.token_file).st_mtime
                if mtime != self._token[0]:
                    with open(cfg.token_file, encoding="utf-8") as fh:
                        self._token = (mtime, fh.read().strip())
            except OSError as exc:
                raise ApiError.no_answer("NotConfigured", exc) from exc
            token = self._token[1]
        if token:
            return {"Authorization": f"Bearer {token}"}
        if cfg.username:
            basic = base64.b64encode(f"{cfg.username}:{cfg.password or ''}".encode()).decode()
            return {"Authorization": f"Basic {basic}"}
        return {}

    def _connect(self, read_timeout: float) -> http.client.HTTPConnection:
        scheme, host, port = self._endpoint()
        conn: http.client.HTTPConnection
        if scheme == "https":
            conn = http.client.HTTPSConnection(host, port, timeout=self.connect_timeout, context=self._ssl)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self.connect_timeout)
        conn.connect()
        assert conn.sock is not None
        conn.sock.settimeout(read_timeout)
        return conn

    def _headers(self, accept: str, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": accept, "User-Agent": self.user_agent, **self._auth()}
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    def _exchange(self, method: str, url: str, payload: bytes | None, headers: dict[str, str], timeout: float):
        """One request on this thread's kept-alive connection -> (status, body)."""
        for attempt in (1, 2):
            conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
            reused = conn is not None
            try:
                if conn is None:
                    conn = self._local.conn = self._connect(timeout)
                else:
                    assert conn.sock is not None
                    conn.sock.settimeout(timeout)
                conn.request(method, url, body=payload, headers=headers)
                resp = conn.getresponse()
                return resp.status, resp.read()
            except (OSError, http.client.HTTPException) as exc:
                if conn is not None:
                    conn.close()
                self._local.conn = None
                if reused and attempt == 1 and isinstance(exc, _STALE):
                    continue
                reason = "Timeout" if isinstance(exc, TimeoutError) else "Unreachable"
                raise ApiError.no_answer(reason, exc) from exc
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ requests
    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = JSON,
        accept: str = JSON,
        raw: bool = False,
        timeout: float | None = None,
    ) -> Any:
        """Send one request; the decoded JSON answer ({} when empty), or its bytes with raw=True."""
        payload = None if body is None else json.dumps(body).encode()
        headers = self._headers(accept, content_type if payload is not None else None)
        status, data = self._exchange(method, path + encode_query(query), payload, headers, timeout or self.timeout)
        if status >= 400:
            raise ApiError.from_response(status, data)
        if raw:
            return data
        try:
            return json.loads(data) if data else {}
        except ValueError as exc:
            raise ApiError(status, "BadResponse", f"answer to {method} {path} is not JSON") from exc

    def stream(
        self, path: str, *, query: Mapping[str, Any] | None = None, accept: str = JSON, timeout: float | None = None
    ) -> Stream:
        """A streaming GET on a connection of its own; an error status raises ApiError."""
        url = path + encode_query(query)
        try:
            conn = self._connect(timeout or self.timeout)
            conn.request("GET", url, headers=self._headers(accept, None))
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            reason = "Timeout" if isinstance(exc, TimeoutError) else "Unreachable"
            raise ApiError.no_answer(reason, exc) from exc
        if resp.status >= 400:
            try:
                data = resp.read()
            except (OSError, http.client.HTTPException):
                data = b""
            conn.close()
            raise ApiError.from_response(resp.status, data)
        return Stream(conn, resp)

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def get_or_none(self, path: str, **kw: Any) -> Any:
        """The object, or None when the API server answers 404 (any other failure raises ApiError)."""
        try:
            return self.get(path, **kw)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def list(
        self, path: str, *, label_selector: str | None = None, field_selector: str | None = None, **kw: Any
    ) -> dict[str, Any]:
        """One List object (items + metadata.resourceVersion/continue)."""
        query = {"labelSelector": label_selector, "fieldSelector": field_selector, **(kw.pop("query", None) or {})}
        return self.request("GET", path, query=query, **kw)

    def list_all(
        self, path: str, *, query: Mapping[str, Any] | None = None, page: int = 500, timeout: float | None = None
    ) -> tuple[list[dict[str, Any]], str]:
        """Every item, in pages of `page`, and the list's resourceVersion. A continue token that
        expired (410) restarts the list from the beginning."""
        items: list[dict[str, Any]] = []
        token, rv = None, ""
        while True:
            try:
                out = self.get(path, query={**(query or {}), "limit": page, "continue": token}, timeout=timeout)
            except ApiError as exc:
                if not (exc.expired and token):
                    raise
                items, token, rv = [], None, ""
                continue
            items.extend(out.get("items") or [])
            meta = out.get("metadata") or {}
            rv = rv or meta.get("resourceVersion", "")
            token = meta.get("continue")
            if not token:
                return items, rv

    def create(self, path: str, body: Mapping[str, Any], **kw: Any) -> Any:
        return self.request("POST", path, body=body, **kw)

    def replace(self, path: str, body: Mapping[str, Any], **kw: Any) -> Any:
        return self.request("PUT", path, body=body, **kw)

    post, put = create, replace  # the HTTP names, for callers that think in verbs

    def patch(self, path: str, body: Any, patch: str = "merge", **kw: Any) -> Any:
        """patch: "merge" (RFC 7386), "strategic" (built-in kinds only) or "json" (RFC 6902, a list)."""
        return self.request("PATCH", path, body=body, content_type=PATCH_TYPES[patch], **kw)

    def apply(self, path: str, body: Mapping[str, Any], *, field_manager: str, force: bool = False, **kw: Any) -> Any:
        """Server-side apply of `body` (the fields this manager owns) to the object at `path`."""
        query = {"fieldManager": field_manager, "force": force or None, **(kw.pop("query", None) or {})}
        return self.request("PATCH", path, body=body, content_type=APPLY_PATCH, query=query, **kw)

    def delete(self, path: str, *, propagation: str | None = None, **kw: Any) -> Any:
        """propagation: None (the kind's default), "Background", "Foreground" or "Orphan"."""
        if propagation is not None:
            kw["body"] = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
        return self.request("DELETE", path, **kw)

    def text(self, path: str, *, query: Mapping[str, Any] | None = None, timeout: float | None = None) -> str:
        """A GET answered with text: pod logs (.../pods/NAME/log), node proxy (.../nodes/NAME/proxy/...),
        /readyz."""
        data = self.request("GET", path, query=query, accept="*/*", raw=True, timeout=timeout)
        return data.decode("utf-8", "replace")

    def watch(
        self,
        path: str,
        *,
        resource_version: str = "",
        timeout_seconds: int = 240,
        bookmarks: bool = True,
        query: Mapping[str, Any] | None = None,
    ) -> Watch:
        from .watch import Watch

        return Watch(
            self,
            path,
            resource_version=resource_version,
            timeout_seconds=timeout_seconds,
            bookmarks=bookmarks,
            query=query,
        )
