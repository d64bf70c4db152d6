"""Unauthenticated routes (liveness, readiness, the OpenAPI document and its HTML rendering) and the
API index, GET /api/v1: the resources and optional features this gateway serves (feature detection)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, json

from ..api import op
from ..errors import Problem
from . import kube

bp = Blueprint("meta", __name__)


@op(
    bp,
    "/healthz",
    "GET",
    summary="Liveness: the gateway process answers",
    public=True,
    response=(200, "Health", "alive"),
    errors=(),
)
def healthz():
    return {"status": "ok"}


@op(
    bp,
    "/readyz",
    "GET",
    summary="Readiness: the Kubernetes API server is reachable",
    public=True,
    response=(200, "Health", "ready"),
    errors=(503,),
)
def readyz():
    ok, detail = kube().ready()
    if not ok:
        raise Problem(503, f"Kubernetes API server not ready: {detail}", headers={"Retry-After": "5"})
    return {"status": "ok", "detail": detail}


@op(
    bp,
    "/openapi.json",
    "GET",
    summary="This API's OpenAPI 3.0 document",
    public=True,
    response=(200, None, "the OpenAPI document"),
    errors=(),
)
def openapi_json():
    from ..openapi import build

    doc = current_app.extensions.get("k3svirt.openapi")
    if doc is None:
        doc = current_app.extensions["k3svirt.openapi"] = json.dumps(build(current_app), indent=2)
    return Response(doc, mimetype="application/json")


@op(
    bp,
    "/docs",
    "GET",
    summary="Human-readable API documentation (HTML, self-contained)",
    public=True,
    response=(200, None, "HTML page"),
    response_type="text/html",
    errors=(),
)
def docs():
    from ..docs import render
    from ..openapi import build

    page = current_app.extensions.get("k3svirt.docs")
    if page is None:
        page = current_app.extensions["k3svirt.docs"] = render(build(current_app))
    return Response(page, mimetype="text/html")


# What clients can feature-detect (like Incus's api_extensions): name -> what it means. Optional ones
# are listed only when this gateway's settings enable them.
FEATURES: dict[str, str] = {
    "etag": "single-object GETs answer `ETag` (the object's resourceVersion)",
    "if-match": "PATCH, PUT and DELETE honour `If-Match` (412 precondition-failed on another version)",
    "pagination": "lists take `limit` and `continue`; pages carry `continue`, `next` and `Link: rel=next`",
    "problem-types": "errors are application/problem+json with a stable `type` URI (components.examples)",
    "template-yaml": "VMTemplates import (POST /templates) and export as YAML manifests",
    "vm-stats": "live VM figures from the node operator (GET /vms/{name}/stats)",
    "pod-stats": "container figures from the kubelet Summary API (GET /pods/{name}/stats, /stats/pods)",
    "pci-passthrough": "PCI devices of every node, assignable to VMs (/pci-devices)",
    "snapshots": "VM disk snapshots, restore in place and into a new VM (/vms/{name}/snapshots)",
}
OPTIONAL_FEATURES: dict[str, tuple[str, str]] = {
    "list-cache": ("LIST_CACHE", "VM and template lists are answered from a watch cache (`Warning: 110` when stale)"),
}


def features() -> list[str]:
    out = list(FEATURES)
    from ..cache import ENABLED_WORDS

    for name, (setting, _) in OPTIONAL_FEATURES.items():
        if str(current_app.config.get(setting, "on")).strip().lower() in ENABLED_WORDS:
            out.append(name)
    return sorted(out)


def resources() -> list[dict[str, Any]]:
    """Every top-level collection under /api/v1 with the methods its routes answer."""
    found: dict[str, set[str]] = {}
    for rule in current_app.url_map.iter_rules():
        parts = rule.rule.split("/")
        if rule.rule.startswith("/api/v1/") and len(parts) > 3:
            found.setdefault(parts[3], set()).update(rule.methods - {"HEAD", "OPTIONS"})
    return [{"name": n, "path": f"/api/v1/{n}", "methods": sorted(m)} for n, m in sorted(found.items())]


@op(
    bp,
    "/api/v1",
    "GET",
    summary="The API index: resources and optional features this gateway serves",
    response=(200, "APIIndex", "the index"),
    errors=(401,),
    any_scope=True,
)
def api_index():
    from ..openapi import _version

    return {
        "apiVersion": "v1",
        "gatewayVersion": _version(),
        "openapi": "/openapi.json",
        "resources": resources(),
        "features": features(),
    }
