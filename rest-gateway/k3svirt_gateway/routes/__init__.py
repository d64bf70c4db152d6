"""One blueprint per resource."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import current_app

from ..api import namespace, query_str
from ..cache import Cache, Resource
from ..conventions import page_request, paged
from ..k8s import Kube


def kube() -> Kube:
    return current_app.extensions["k3svirt.kube"]


def cache() -> Cache:
    return current_app.extensions["k3svirt.cache"]


def list_items(
    list_fn: Callable[[str, dict[str, Any]], dict[str, Any]],
    project: Callable[[dict[str, Any]], dict[str, Any]],
    *,
    cached: Resource | None = None,
    namespaced: bool = True,
) -> tuple[Any, int, dict[str, str]]:
    """Every list route's answer. `list_fn(namespace, query)` lists from the API server (query:
    labelSelector, limit, continue); `project` makes an item of each object. With `limit`/`continue`
    one page comes from the API server (conventions.paged); without, the whole list, from the watch
    cache when the route has one (`cached`) and it can answer: then a Response whose body is encoded
    once per change of the cache (Informer.encoded)."""
    ns = namespace() if namespaced else ""
    selector = query_str("labelSelector") or None
    page = page_request(ns, selector)
    if page is not None:
        return paged(lambda query: list_fn(ns, query), project, ns, selector, page)
    if cached is not None:
        listing = cache().list(cached, ns, selector)
        if listing is not None:
            body = cache().encoded(cached, listing, _encode_items)
            return current_app.response_class(body, mimetype="application/json"), 200, cache().stale_warning(listing)
    out = list_fn(ns, {"labelSelector": selector})
    return {"items": [project(o) for o in out.get("items", [])]}, 200, {}


def _encode_items(items: list[dict[str, Any]]) -> bytes:
    """What jsonify would answer for {"items": items} (the app's JSON settings)."""
    return (current_app.json.dumps({"items": items}) + "\n").encode()


def deletion_accepted(kind: str, name: str, ns: str | None = None, message: str = "deletion requested"):
    """The 202 answer of every DELETE route (schema Accepted)."""
    body = {"kind": kind, "name": name, **({"namespace": ns} if ns is not None else {}), "message": message}
    return body, 202


def clean_metadata(obj: dict[str, Any]) -> dict[str, Any]:
    """Drop managedFields (noise) from an object we return."""
    md = obj.get("metadata")
    if isinstance(md, dict):
        md.pop("managedFields", None)
    return obj
