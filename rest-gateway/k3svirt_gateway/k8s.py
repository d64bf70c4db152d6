"""The one place that talks to the Kubernetes API server.

Builds the ApiClient (KUBECONFIG, in-cluster, or ~/.kube/config), sends raw JSON requests (no typed
models: the gateway passes Kubernetes objects through as plain dicts), and maps every failure onto a
Problem: 404, 409, 422 (with the API server's field causes), 503 when the API server is unreachable,
times out, or answers 5xx/429/401/403 (the gateway's own credentials are not the caller's fault).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

import urllib3
from kubernetes import client as kclient
from kubernetes import config as kconfig

from .errors import Problem

log = logging.getLogger(__name__)

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"


def q(segment: str) -> str:
    """Quote one path segment."""
    return quote(str(segment), safe="")


def core_path(resource: str, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
    path = "/api/v1"
    if namespace is not None:
        path += f"/namespaces/{q(namespace)}"
    path += f"/{resource}"
    if name is not None:
        path += f"/{q(name)}"
    if sub:
        path += f"/{sub}"
    return path


def group_path(
    group: str,
    version: str,
    resource: str,
    namespace: str | None = None,
    name: str | None = None,
    sub: str | None = None,
) -> str:
    path = f"/apis/{group}/{version}"
    if namespace is not None:
        path += f"/namespaces/{q(namespace)}"
    path += f"/{resource}"
    if name is not None:
        path += f"/{q(name)}"
    if sub:
        path += f"/{sub}"
    return path


class Kube:
    """A lazily-built API client; safe to share between threads."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self._api: kclient.ApiClient | None = None
        self._lock = threading.Lock()
        # Called with (method, path, decoded result) after every successful write (cache.Cache.observe).
        self.on_write: Callable[[str, str, Any], None] | None = None
        self.timeout = urllib3.Timeout(
            connect=float(settings.get("KUBE_CONNECT_TIMEOUT", 3.0)),
            read=float(settings.get("KUBE_TIMEOUT", 10.0)),
        )

    # ----------------------------------------------------------------- client
    def _load(self) -> kclient.ApiClient:
        cfg = kclient.Configuration()
        path = self.settings.get("KUBECONFIG")
        try:
            if path:
                kconfig.load_kube_config(
                    config_file=path.split(os.pathsep)[0],
                    context=self.settings.get("KUBE_CONTEXT"),
                    client_configuration=cfg,
                    persist_config=False,
                )
            elif os.environ.get("KUBERNETES_SERVICE_HOST"):
                kconfig.load_incluster_config(client_configuration=cfg)
            else:
                kconfig.load_kube_config(client_configuration=cfg, persist_config=False)
        except Exception as exc:  # missing file, bad YAML, no service account...
            raise Problem(503, f"Kubernetes API server not configured: {exc}") from exc
        # Fail fast when the API server is down: one quick reconnect, no status retries.
        cfg.retries = urllib3.Retry(
            total=1, connect=1, read=0, status=0, redirect=0, backoff_factor=0.05, respect_retry_after_header=False
        )
        cfg.connection_pool_maxsize = 16
        return kclient.ApiClient(cfg)

    @property
    def api(self) -> kclient.ApiClient:
        if self._api is None:
            with self._lock:
                if self._api is None:
                    self._api = self._load()
        return self._api

    # --------------------------------------------------------------- requests
    def request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        body: Any = None,
        content_type: str = JSON,
        accept: str = JSON,
        raw: bool = False,
        timeout: urllib3.Timeout | float | None = None,
    ) -> Any:
        """Send one request; return the decoded JSON (or bytes when raw=True). Raise Problem on failure."""
        api = self.api
        try:
            _m, url, headers, _b, _p = api.param_serialize(
                method, path, header_params={"Accept": accept}, auth_settings=["BearerToken"]
            )
            if query:
                url += "?" + urlencode({k: v for k, v in query.items() if v is not None})
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = content_type
            resp = api.rest_client.pool_manager.request(
                method,
                url,
                body=data,
                headers=headers,
                timeout=timeout if timeout is not None else self.timeout,
                preload_content=True,
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            log.warning("API server unreachable", extra={"method": method, "path": path, "error": str(exc)})
            raise Problem(
                503, f"Kubernetes API server unreachable: {type(exc).__name__}", headers={"Retry-After": "5"}
            ) from exc
        status = resp.status
        payload = resp.data
        if 200 <= status < 300:
            if raw:
                return payload
            result = json.loads(payload) if payload else {}
            if method != "GET" and self.on_write is not None:
                try:
                    self.on_write(method, path, result)
                except Exception:  # a cache bug must never fail a write that happened
                    log.exception("write observer failed", extra={"method": method, "path": path})
            return result
        raise self._problem(status, payload, method, path)

    def stream(self, path: str, *, query: dict[str, Any], timeout: urllib3.Timeout) -> Any:
        """Open a streaming GET (a watch); the caller reads and releases the urllib3 response, whatever
        its status. Connection failures raise urllib3/OS errors, not Problem."""
        api = self.api
        _m, url, headers, _b, _p = api.param_serialize(
            "GET", path, header_params={"Accept": JSON}, auth_settings=["BearerToken"]
        )
        url += "?" + urlencode({k: v for k, v in query.items() if v is not None and v != ""})
        return api.rest_client.pool_manager.request("GET", url, headers=headers, timeout=timeout, preload_content=False)

    @staticmethod
    def _problem(status: int, payload: bytes, method: str, path: str) -> Problem:
        try:
            st = json.loads(payload)
            if not isinstance(st, dict):
                st = {}
        except ValueError:
            st = {}
        message = st.get("message") or payload.decode("utf-8", "replace")[:300] or f"HTTP {status}"
        reason = st.get("reason", "")
        details = st.get("details") or {}
        if status == 404:
            if not details:
                # The resource type itself is not served: CRD not applied (yet).
                return Problem(
                    503,
                    f"the API server does not serve {path.split('?')[0]}: {message} (are the k3svirt CRDs applied?)",
                )
            return Problem(404, message, reason=reason)
        if status == 409:
            return Problem(409, message, reason=reason)
        if status == 422:
            errors = [
                {"field": c.get("field", ""), "message": c.get("message", c.get("reason", "invalid"))}
                for c in details.get("causes", [])
            ] or [{"field": "", "message": message}]
            return Problem(422, message, title="Validation failed", errors=errors)
        if status == 400:
            return Problem(400, message)
        if status == 410:
            return Problem(409, message, reason=reason)
        log.warning("API server error", extra={"method": method, "path": path, "status": status, "reason": reason})
        return Problem(
            503, f"Kubernetes API server answered {status} {reason}: {message}", headers={"Retry-After": "5"}
        )

    # convenience wrappers
    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any, **kw: Any) -> Any:
        return self.request("POST", path, body=body, **kw)

    def put(self, path: str, body: Any, **kw: Any) -> Any:
        return self.request("PUT", path, body=body, **kw)

    def patch(self, path: str, body: Any, content_type: str = MERGE_PATCH, **kw: Any) -> Any:
        return self.request("PATCH", path, body=body, content_type=content_type, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.request("DELETE", path, **kw)

    def ready(self) -> tuple[bool, str]:
        try:
            out = self.request(
                "GET",
                "/readyz",
                accept="text/plain",
                raw=True,
                timeout=urllib3.Timeout(connect=2.0, read=3.0),
            )
            return True, out.decode("utf-8", "replace").strip() or "ok"
        except Problem as exc:
            return False, exc.detail
