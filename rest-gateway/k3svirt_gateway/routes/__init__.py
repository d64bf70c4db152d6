"""One blueprint per resource."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import current_app

from ..cache import Cache, Resource
from ..conventions import page_request, paged
from ..k8s import Kube


def kube() -> Kube:
    return current_app.extensions["k3svirt.kube"]


def cache() -> Cache:
    return current_app.extensions["k3svirt.cache"]


def list_items(
    list_fn: Callable[[dict[str, Any]], dict[str, Any]],
    project: Callable[[dict[str, Any]], dict[str, Any]],
    ns: str,
    selector: str | None = None,
    cached: Resource | None = None,
) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Every list route's answer. `list_fn(query)` lists from the API server (query: labelSelector,
    limit, continue); `project` makes an item of each object. With `limit`/`continue` one page comes
    from the API server (conventions.paged); without, the whole list, from the watch cache when the
    route has one (`cached`) and it can answer."""
    page = page_request(ns, selector)
    if page is not None:
        return paged(list_fn, project, ns, selector, page)
    if cached is not None:
        listing = cache().list(cached, ns, selector)
        if listing is not None:
            return {"items": listing.items}, 200, cache().stale_warning(listing)
    out = list_fn({"labelSelector": selector})
    return {"items": [project(o) for o in out.get("items", [])]}, 200, {}


def meta_summary(obj: dict[str, Any]) -> dict[str, Any]:
    md = obj.get("metadata") or {}
    out = {"name": md.get("name", ""), "namespace": md.get("namespace", "")}
    if md.get("creationTimestamp"):
        out["created"] = md["creationTimestamp"]
    return out


def clean_metadata(obj: dict[str, Any]) -> dict[str, Any]:
    """Drop managedFields (noise) from an object we return."""
    md = obj.get("metadata")
    if isinstance(md, dict):
        md.pop("managedFields", None)
    return obj
