"""One blueprint per resource."""

from __future__ import annotations

from typing import Any

from flask import current_app

from ..k8s import Kube


def kube() -> Kube:
    return current_app.extensions["k3svirt.kube"]


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
