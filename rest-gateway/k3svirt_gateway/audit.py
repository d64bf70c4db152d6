"""The audit log: one structured line per write through the gateway.

Logger `k3svirt_gateway.audit`, level INFO whatever K3SVIRT_LOG_LEVEL says (K3SVIRT_AUDIT_LOG=off turns
it off). The line is `audit {json}` with: who (the key's name, null when no valid key was given),
method, path, resource (vms, deployments, ...), action (start, scale, assign, ...), namespace, name,
status, remote. Never the key, never a header, never the request body: a create's name comes from the
Location the gateway answered with (or the name in its JSON answer).
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import parse_qs, urlsplit

from flask import Flask, Response, current_app, g, request

from .auth import READ_METHODS, target_namespace

log = logging.getLogger("k3svirt_gateway.audit")
API_PREFIX = "/api/v1/"
MAX_FIELD = 256  # a hostile path cannot make a log line long


def _clip(value: Any) -> Any:
    return value[:MAX_FIELD] if isinstance(value, str) else value


def record(response: Response) -> dict[str, Any] | None:
    """The audit record of this request, or None for a read (or a route the gateway does not have)."""
    if request.method in READ_METHODS:
        return None
    parts = request.path.removeprefix(API_PREFIX).split("/") if request.path.startswith(API_PREFIX) else []
    view = current_app.view_functions.get(request.endpoint) if request.endpoint else None
    args = request.view_args or {}
    name = args.get("name") or args.get("address")
    ns = target_namespace(view, request.method) if view is not None else None
    location = response.headers.get("Location")
    if response.status_code == 201 and location:  # a create: its name is in the answer, not the path
        loc = urlsplit(location)
        name = loc.path.rstrip("/").rsplit("/", 1)[-1]
        ns = (parse_qs(loc.query).get("namespace") or [ns])[0]
    elif name is None and response.is_json and not response.is_streamed and 200 <= response.status_code < 300:
        answered = response.get_json(silent=True)  # e.g. a template import that published new versions
        if isinstance(answered, dict):
            md = answered.get("metadata")
            found = answered.get("name") or (md.get("name") if isinstance(md, dict) else None)
            name = found if isinstance(found, str) else None
    return {
        "who": g.get("api_key_name"),
        "method": request.method,
        "path": _clip(request.path),
        "resource": _clip(parts[0]) if parts else None,
        "action": _clip(parts[2]) if len(parts) > 2 else None,
        "namespace": _clip(ns),
        "name": _clip(name),
        "status": response.status_code,
        "remote": request.remote_addr,
    }


def after_request(response: Response) -> Response:
    try:
        entry = record(response)
    except Exception:  # the audit line must never turn an answered write into an error
        log.exception("audit record failed")
        return response
    if entry is not None:
        log.info("audit %s", json.dumps(entry, ensure_ascii=True, separators=(",", ":")))
    return response


def install(app: Flask) -> None:
    if str(app.config.get("AUDIT_LOG", "on")).lower() in ("off", "false", "0", "no"):
        return
    log.setLevel(logging.INFO)
    app.after_request(after_request)
