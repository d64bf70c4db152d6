"""One blueprint per resource."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import current_app

from ..cache import Cache, Resource
from ..k8s import Kube


def kube() -> Kube:
    return current_app.extensions["k3svirt.kube"]


def cache() -> Cache:
    return current_app.extensions["k3svirt.cache"]


def list_items(
    resource: Resource, ns: str, selector: str | None, direct: Callable[[], list[dict[str, Any]]]
) -> tuple[dict[str, Any], int, dict[str, str]]:
    """A list response: from the watch cache when it can answer, else `direct()` (the API server)."""
    listing = cache().list(resource, ns, selector)
    if listing is None:
        return {"items": direct()}, 200, {}
    return {"items": listing.items}, 200, cache().stale_warning(listing)


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
