"""Unauthenticated routes: liveness, readiness, the OpenAPI document and its HTML rendering."""

from __future__ import annotations

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
