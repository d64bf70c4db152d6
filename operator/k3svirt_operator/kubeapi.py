"""A small synchronous Kubernetes REST client for the operator's few direct calls.

The official `kubernetes` package costs ~28 MiB of RSS for the handful of get/list/patch calls the
operator makes outside kopf, so the operator speaks HTTP itself with kopf's own credentials
(`kopf.login_with_kubeconfig` / `login_with_service_account`). One keep-alive connection per thread.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import tempfile
import threading
import urllib.parse
from collections.abc import Mapping
from typing import Any


class ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status = status
        self.body = body


def _data_file(data: str | bytes) -> str:
    """kopf hands certificate data base64-encoded or raw; ssl wants files."""
    raw = data.encode() if isinstance(data, str) else data
    if b"-----BEGIN" not in raw:
        raw = base64.b64decode(raw)
    fd, path = tempfile.mkstemp(prefix="k3svirt-kube-", suffix=".pem")
    with os.fdopen(fd, "wb") as f:
        f.write(raw)
    return path


class KubeAPI:
    def __init__(self, info: Any) -> None:
        url = urllib.parse.urlsplit(info.server)
        self.host, self.port = url.hostname or "localhost", url.port or 443
        self.https = url.scheme == "https"
        self.headers = {"Accept": "application/json"}
        if info.token:
            self.headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
        elif info.username:
            basic = base64.b64encode(f"{info.username}:{info.password or ''}".encode()).decode()
            self.headers["Authorization"] = f"Basic {basic}"
        self.context: ssl.SSLContext | None = None
        if self.https:
            ctx = ssl.create_default_context()
            if info.insecure:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            elif info.ca_path or info.ca_data:
                ctx.load_verify_locations(cafile=info.ca_path or _data_file(info.ca_data))
            cert = info.certificate_path or (info.certificate_data and _data_file(info.certificate_data))
            key = info.private_key_path or (info.private_key_data and _data_file(info.private_key_data))
            if cert:
                ctx.load_cert_chain(cert, key or None)
            self.context = ctx
        self._local = threading.local()

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self.https:
                conn = http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=30)
            else:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            self._local.conn = conn
        return conn

    def request(self, method: str, path: str, body: Mapping[str, Any] | None = None,
                content_type: str = "application/json") -> dict[str, Any]:
        payload = None if body is None else json.dumps(body).encode()
        headers = dict(self.headers)
        if payload is not None:
            headers["Content-Type"] = content_type
        for attempt in (1, 2):  # a kept-alive connection the server closed fails once, then reconnects
            conn = self._conn()
            try:
                conn.request(method, path, body=payload, headers=headers)
                resp = conn.getresponse()
                data = resp.read().decode()
                break
            except (ConnectionError, http.client.HTTPException, OSError):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
        if resp.status >= 400:
            raise ApiError(resp.status, data)
        return json.loads(data) if data else {}

    def get(self, path: str) -> dict[str, Any]:
        return self.request("GET", path)

    def post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return self.request("POST", path, body)

    def merge_patch(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return self.request("PATCH", path, body, "application/merge-patch+json")
