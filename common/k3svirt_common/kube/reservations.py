"""The API calls of VM reservation pods (bodies and decisions: k3svirt_common.reservation).

Every call answers plainly: a pod or None, True when something was done; refusals (quota, LimitRange,
Pod Security, a missing PriorityClass) raise ApiError with the API server's message for the caller
to show.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .client import Client
from .errors import ApiError
from .paths import core_path, group_path


def get(api: Client, namespace: str, name: str) -> dict[str, Any] | None:
    return api.get_or_none(core_path("pods", namespace, name))


def create(api: Client, body: Mapping[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
    """Creates the pod; one that exists already (409) is read and returned as it is."""
    meta = body["metadata"]
    try:
        return api.create(core_path("pods", meta["namespace"]), body, query={"dryRun": "All" if dry_run else None})
    except ApiError as exc:
        if exc.status != 409 or dry_run:
            raise
    found = get(api, meta["namespace"], meta["name"])
    if found is None:  # deleted between the two calls: the caller's next pass creates it
        raise ApiError(409, "Conflict", f"pod {meta['name']} was being replaced; retrying")
    return found


def delete(api: Client, namespace: str, name: str, *, pod_uid: str | None = None) -> bool:
    """Releases at once (grace 0: a pause container has nothing to shut down, and the scheduler frees
    the share only when the object is gone). pod_uid: only that pod, never a newer one of the name.
    False when there was nothing to delete."""
    body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0}
    if pod_uid:
        body["preconditions"] = {"uid": pod_uid}
    try:
        api.request("DELETE", core_path("pods", namespace, name), body=body)
    except ApiError as exc:
        if exc.status in (404, 409):  # gone, or the name now belongs to another pod
            return False
        raise
    return True


def list_on_node(api: Client, label: str, node: str) -> list[dict[str, Any]]:
    """Every reservation pod of `node`, in all namespaces (label `label`=node)."""
    items, _ = api.list_all(core_path("pods"), query={"labelSelector": f"{label}={node}"})
    return items


def ensure_priority_class(api: Client, body: Mapping[str, Any]) -> None:
    """Creates the reservations' PriorityClass unless it exists (its value and policy are immutable)."""
    try:
        api.create(group_path("scheduling.k8s.io", "v1", "priorityclasses"), body)
    except ApiError as exc:
        if exc.status != 409:
            raise
