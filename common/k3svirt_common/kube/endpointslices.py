"""The API calls of the EndpointSlices k3svirt publishes for Services that select VMs (bodies and
decisions: k3svirt_common.vmservice). Refusals raise ApiError with the API server's message."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .client import Client
from .errors import ApiError
from .paths import group_path

GROUP, VERSION, PLURAL = "discovery.k8s.io", "v1", "endpointslices"


def _path(namespace: str, name: str | None = None) -> str:
    return group_path(GROUP, VERSION, PLURAL, namespace, name)


def put(api: Client, body: Mapping[str, Any], current: Mapping[str, Any] | None) -> dict[str, Any]:
    """Creates the slice, or replaces `current` (its resourceVersion guards the write: a conflict
    raises 409 and the caller's next pass reads again)."""
    md = body["metadata"]
    if current is None:
        try:
            return api.create(_path(md["namespace"]), body)
        except ApiError as exc:
            if exc.status != 409:
                raise
            current = api.get(_path(md["namespace"], md["name"]))
    new = {**body, "metadata": {**md, "resourceVersion": (current.get("metadata") or {}).get("resourceVersion")}}
    return api.replace(_path(md["namespace"], md["name"]), new)


def delete(api: Client, namespace: str, name: str) -> bool:
    """False when it was gone already."""
    try:
        api.delete(_path(namespace, name))
    except ApiError as exc:
        if exc.status == 404:
            return False
        raise
    return True
