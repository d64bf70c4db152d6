"""API paths: every segment taken from a caller (namespace, name, subresource parts) is quoted."""

from __future__ import annotations

from urllib.parse import quote

from ..names import GROUP, VERSION


def segment(value: str) -> str:
    """One quoted path segment: '/', '?', '#', '%' and spaces can never change the path's shape."""
    text = str(value)
    if text in ("", ".", ".."):
        raise ValueError(f"not a usable path segment: {text!r}")
    return quote(text, safe="")


def _path(prefix: str, resource: str, namespace: str | None, name: str | None, sub: str | None) -> str:
    parts = [prefix]
    if namespace is not None:
        parts += ["namespaces", segment(namespace)]
    parts.append(segment(resource))
    if name is not None:
        parts.append(segment(name))
    if sub:
        if name is None:
            raise ValueError("a subresource needs an object name")
        parts += [segment(s) for s in sub.split("/")]  # e.g. "status", "scale", "proxy/stats/summary"
    return "/".join(parts)


def core_path(resource: str, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
    """/api/v1[/namespaces/NS]/RESOURCE[/NAME[/SUB...]]"""
    return _path("/api/v1", resource, namespace, name, sub)


def group_path(
    group: str,
    version: str,
    resource: str,
    namespace: str | None = None,
    name: str | None = None,
    sub: str | None = None,
) -> str:
    """/apis/GROUP/VERSION[/namespaces/NS]/RESOURCE[/NAME[/SUB...]]"""
    return _path(f"/apis/{segment(group)}/{segment(version)}", resource, namespace, name, sub)


def k3svirt_path(resource: str, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
    """/apis/k3svirt.io/v1alpha1[/namespaces/NS]/RESOURCE[/NAME[/SUB...]]: our own kinds."""
    return group_path(GROUP, VERSION, resource, namespace, name, sub)
