"""The gateway's door to the Kubernetes API server: k3svirt_common.kube, with its errors as Problems.

`Kube.api` is the shared layer's Client (configured on first use from KUBECONFIG, the pod's service
account, or ~/.kube/config); `Kube`'s request methods map every ApiError onto a Problem: 404, 409,
422 (with the API server's field causes), 503 when the API server is not configured, unreachable,
times out, or answers 5xx/429/401/403 (the gateway's own credentials are not the caller's fault).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from k3svirt_common.kube import JSON, MERGE_PATCH, ApiError, Client, core_path, group_path, k3svirt_path, load_config

from .errors import Problem

__all__ = ["JSON", "MERGE_PATCH", "Kube", "core_path", "group_path", "k3svirt_path", "problem_for"]

log = logging.getLogger(__name__)

RETRY_LATER = {"Retry-After": "5"}


def problem_for(exc: ApiError, method: str, path: str) -> Problem:
    """The Problem a gateway client sees for an API-server failure."""
    if not exc.answered:
        if exc.reason == "NotConfigured":
            return Problem(503, f"Kubernetes API server not configured: {exc.message}")
        log.warning("API server unreachable", extra={"method": method, "path": path, "error": exc.message})
        return Problem(503, f"Kubernetes API server unreachable: {exc.message}", headers=RETRY_LATER)
    status, message, reason = exc.status, exc.message, exc.reason
    if status == 404:
        if not exc.details:  # the resource type itself is not served: CRD not applied (yet)
            return Problem(
                503, f"the API server does not serve {path.split('?')[0]}: {message} (are the k3svirt CRDs applied?)"
            )
        return Problem(404, message, reason=reason)
    if status in (409, 410):
        return Problem(409, message, reason=reason)
    if status == 422:
        errors = [
            {"field": c.get("field", ""), "message": c.get("message", c.get("reason", "invalid"))} for c in exc.causes
        ] or [{"field": "", "message": message}]
        return Problem(422, message, title="Validation failed", errors=errors)
    if status == 400:
        return Problem(400, message)
    if status == 403 and "exceeded quota" in message:  # the tenant's ResourceQuota (docs/accounting.md)
        return Problem(403, message, title="Quota exceeded", reason="QuotaExceeded")
    log.warning("API server error", extra={"method": method, "path": path, "status": status, "reason": reason})
    return Problem(503, f"Kubernetes API server answered {status} {reason}: {message}", headers=RETRY_LATER)


class Kube:
    """Safe to share between threads; building it contacts nothing."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.api = Client(
            lambda: load_config(settings.get("KUBECONFIG"), settings.get("KUBE_CONTEXT")),
            timeout=float(settings.get("KUBE_TIMEOUT", 10.0)),
            connect_timeout=float(settings.get("KUBE_CONNECT_TIMEOUT", 3.0)),
            user_agent="k3svirt-gateway",
        )
        # Called with (method, path, decoded result) after every successful write (cache.Cache.observe).
        self.on_write: Callable[[str, str, Any], None] | None = None

    def request(self, method: str, path: str, **kw: Any) -> Any:
        """Client.request (query, body, content_type, accept, raw, timeout); failures raise Problem."""
        try:
            result = self.api.request(method, path, **kw)
        except ApiError as exc:
            raise problem_for(exc, method, path) from exc
        if method != "GET" and self.on_write is not None and not kw.get("raw"):
            try:
                self.on_write(method, path, result)
            except Exception:  # a cache bug must never fail a write that happened
                log.exception("write observer failed", extra={"method": method, "path": path})
        return result

    # The verbs the routes use; each is one request() call.
    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def get_or_none(self, path: str, **kw: Any) -> Any:
        """The object, or None for a 404 (Client.get_or_none); other failures raise Problem."""
        try:
            return self.api.get_or_none(path, **kw)
        except ApiError as exc:
            raise problem_for(exc, "GET", path) from exc

    def post(self, path: str, body: Any, **kw: Any) -> Any:
        return self.request("POST", path, body=body, **kw)

    def put(self, path: str, body: Any, **kw: Any) -> Any:
        return self.request("PUT", path, body=body, **kw)

    def patch(self, path: str, body: Any, content_type: str = MERGE_PATCH, **kw: Any) -> Any:
        return self.request("PATCH", path, body=body, content_type=content_type, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.request("DELETE", path, **kw)

    def text(self, path: str, *, query: dict[str, Any] | None = None, **kw: Any) -> str:
        """A text answer (pod logs, the node proxy: nodes/NAME/proxy/stats/summary)."""
        data = self.request("GET", path, query=query, accept="*/*", raw=True, **kw)
        return data.decode("utf-8", "replace")

    def ready(self) -> tuple[bool, str]:
        try:
            return True, self.text("/readyz", timeout=3.0).strip() or "ok"
        except Problem as exc:
            return False, exc.detail
