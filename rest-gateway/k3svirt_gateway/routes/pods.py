"""/pods: status with per-container reasons (podview.py) and container logs from the API server's pod
log endpoint (which reads them from the kubelet)."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response, request

from ..api import bad_query, check_name, namespace, op, query_bool, query_int
from ..conventions import versioned
from ..errors import Problem
from ..k8s import core_path
from ..podview import log_blocker, pod_view
from ..schemas import NAME_PATTERN
from . import kube, list_items

pods = Blueprint("pods", __name__)

DEFAULT_LOG_BYTES = 1024 * 1024
_LABEL = re.compile(NAME_PATTERN)


def blueprints() -> list[Blueprint]:
    return [pods]


@op(
    pods,
    "/pods",
    "GET",
    summary="List Pods with their status",
    response=(200, "PodList", "pods"),
    query=("namespace", "labelSelector"),
    paged=True,
)
def list_pods():
    return list_items(lambda ns, query: kube().get(core_path("pods", ns), query=query), pod_view)


@op(
    pods,
    "/pods/<name>",
    "GET",
    summary="Get a Pod: status, per-container states and reasons",
    response=(200, "Pod", "the pod"),
    query=("namespace",),
    etag=True,
)
def get_pod(name: str):
    ns = namespace()
    return pod_view(versioned(kube().get(core_path("pods", ns, check_name(name)))))


def _container(pod: dict[str, Any], requested: str | None) -> str:
    spec = pod.get("spec") or {}
    names = [c.get("name", "") for c in spec.get("containers") or []]
    every = names + [c.get("name", "") for c in spec.get("initContainers") or []]
    if requested is None:
        if len(names) == 1:
            return names[0]
        raise bad_query("container", f"the pod has {len(names)} containers: choose one of {', '.join(every)}")
    if requested not in every:
        raise bad_query("container", f"the pod has no container {requested!r}: choose one of {', '.join(every)}")
    return requested


@op(
    pods,
    "/pods/<name>/logs",
    "GET",
    summary="A Pod's container log (text)",
    response=(200, None, "log text"),
    response_type="text/plain",
    query=("namespace", "container", "tailLines", "previous", "sinceSeconds", "timestamps", "limitBytes"),
)
def pod_logs(name: str):
    """Read through the API server (`pods/log`). A container that has not started yet answers 409 with
    the pod's status and container states; a bad parameter answers 400 naming it. At most
    `limitBytes` (default 1 MiB) are returned."""
    ns = namespace()
    check_name(name)
    requested = request.args.get("container")
    if requested is not None and (len(requested) > 63 or not _LABEL.match(requested)):
        raise bad_query("container", "must be a container name (DNS-1123 label)")
    query: dict[str, Any] = {
        "tailLines": query_int("tailLines"),
        "sinceSeconds": query_int("sinceSeconds"),
        "limitBytes": query_int("limitBytes") or DEFAULT_LOG_BYTES,
        "previous": "true" if query_bool("previous") else None,
        "timestamps": "true" if query_bool("timestamps") else None,
    }
    pod = kube().get(core_path("pods", ns, name))
    container = _container(pod, requested)
    query["container"] = container
    blocker = log_blocker(pod, container, bool(query["previous"]))
    if blocker:
        raise _not_started(name, pod, blocker)
    try:
        # Kube.text accepts any type: the log is text/plain, the API server's errors are JSON Status
        # objects (asking for text/plain alone turned every error into a 406)
        text = kube().text(core_path("pods", ns, name, "log"), query=query)
    except Problem as exc:
        if exc.status == 400:  # the container changed state since we read the pod
            raise _not_started(name, kube().get(core_path("pods", ns, name)), exc.detail) from exc
        if exc.status >= 500:
            raise Problem(
                503,
                f"logs of pod {name!r} unavailable (kubelet unreachable): {exc.detail}",
                headers={"Retry-After": "10"},
            ) from exc
        raise
    return Response(text, mimetype="text/plain")


def pod_state_conflict(what: str, name: str, pod: dict[str, Any], why: str, reason: str, **extra: Any) -> Problem:
    """The 409 for "no <what> for pod <name>" because of the pod's state, naming that state."""
    view = pod_view(pod)
    return Problem(409, f"no {what} for pod {name!r}: {why} (status {view['status']})", reason=reason,
                   podStatus=view["status"], statusMessage=view["statusMessage"], **extra)  # fmt: skip


def _not_started(name: str, pod: dict[str, Any], why: str) -> Problem:
    containers = pod_view(pod)["containers"]
    return pod_state_conflict("log", name, pod, why, "ContainerNotStarted", containers=containers)
