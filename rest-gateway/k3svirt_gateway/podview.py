"""Pure views of Pod objects (as the API server returns them): per-container states with reasons,
a one-word status like kubectl's STATUS column, and the explanation a user needs (an image that is not
on the node). No I/O here: the routes fetch, these functions shape."""

from __future__ import annotations

from typing import Any

from k3svirt_common.quantity import quantity_value

# Waiting reasons meaning "the kubelet could not get the image".
IMAGE_PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull"})
NO_REGISTRY = "images are imported locally, no registry is reachable"


def image_hint(image: str, pull_policy: str) -> str:
    """What a failed pull means on a k3svirt node."""
    if pull_policy == "Always":
        return (
            f"image {image!r} cannot be pulled: imagePullPolicy Always needs a registry, and {NO_REGISTRY}; "
            "use IfNotPresent with an imported image"
        )
    return f"image {image!r} is not present on the node; {NO_REGISTRY}"


def _state(raw: dict[str, Any] | None) -> dict[str, Any]:
    """One ContainerState ({waiting|running|terminated: {...}}) flattened to {state, reason, ...}."""
    raw = raw or {}
    if "running" in raw:
        out: dict[str, Any] = {"state": "running"}
        if (raw["running"] or {}).get("startedAt"):
            out["startedAt"] = raw["running"]["startedAt"]
        return out
    if "terminated" in raw:
        t = raw["terminated"] or {}
        out = {"state": "terminated", "exitCode": int(t.get("exitCode", 0))}
        for key in ("reason", "message", "startedAt", "finishedAt"):
            if t.get(key):
                out[key] = t[key]
        if t.get("signal"):
            out["signal"] = int(t["signal"])
        return out
    w = raw.get("waiting") or {}
    out = {"state": "waiting"}
    for key in ("reason", "message"):
        if w.get(key):
            out[key] = w[key]
    return out


def container_view(spec: dict[str, Any], status: dict[str, Any] | None) -> dict[str, Any]:
    """A container's spec joined with its ContainerStatus (None before the kubelet reports one)."""
    image = spec.get("image", "")
    out: dict[str, Any] = {"name": spec.get("name", ""), "image": image}
    if status is None:
        out.update(state="waiting", ready=False, restarts=0)
        return out
    out.update(_state(status.get("state")))
    out["ready"] = bool(status.get("ready"))
    out["restarts"] = int(status.get("restartCount", 0))
    if out["state"] == "waiting" and out.get("reason") in IMAGE_PULL_REASONS:
        out["hint"] = image_hint(image, spec.get("imagePullPolicy", ""))
    last = status.get("lastState") or {}
    if last.get("terminated"):
        out["lastState"] = _state(last)
    return out


def _by_name(statuses: list[dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    return {s.get("name", ""): s for s in statuses or []}


def _term_reason(t: dict[str, Any], prefix: str = "") -> str:
    if t.get("reason"):
        return prefix + t["reason"]
    if t.get("signal"):
        return f"{prefix}Signal:{int(t['signal'])}"
    return f"{prefix}ExitCode:{int(t.get('exitCode', 0))}"


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for cond in status.get("conditions") or []:
        if cond.get("type") == kind:
            return cond
    return None


def _is_sidecar(spec: dict[str, Any]) -> bool:
    return spec.get("restartPolicy") == "Always"


def pod_status(pod: dict[str, Any]) -> str:
    """The one-word status kubectl prints in its STATUS column, same precedence:
    deletion > last non-empty container reason (waiting, then terminated) > init progress >
    pod reason (Evicted, ...) > phase. "Completed" becomes "Running" while a container still runs."""
    md = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    reason = status.get("reason") or phase
    scheduled = _condition(status, "PodScheduled")
    if scheduled and scheduled.get("status") == "False" and scheduled.get("reason") == "SchedulingGated":
        reason = "SchedulingGated"

    init_specs = {c.get("name", ""): c for c in spec.get("initContainers") or []}
    initializing = False
    init_statuses = status.get("initContainerStatuses") or []
    for i, cs in enumerate(init_statuses):
        st = cs.get("state") or {}
        term = st.get("terminated")
        waiting = st.get("waiting") or {}
        if term and int(term.get("exitCode", 0)) == 0:
            continue
        if _is_sidecar(init_specs.get(cs.get("name", ""), {})) and cs.get("started"):
            continue
        initializing = True
        if term:
            reason = _term_reason(term, "Init:")
        elif waiting.get("reason") and waiting["reason"] != "PodInitializing":
            reason = "Init:" + waiting["reason"]
        else:
            reason = f"Init:{i}/{len(init_specs) or len(init_statuses)}"
        break

    initialized = _condition(status, "Initialized")
    if not initializing or (initialized and initialized.get("status") == "True"):
        running = False
        for cs in reversed(status.get("containerStatuses") or []):
            st = cs.get("state") or {}
            waiting = st.get("waiting") or {}
            term = st.get("terminated")
            if waiting.get("reason"):
                reason = waiting["reason"]
            elif term:
                reason = _term_reason(term)
            elif cs.get("ready") and "running" in st:
                running = True
        if reason == "Completed" and running:
            ready = _condition(status, "Ready")
            reason = "Running" if ready and ready.get("status") == "True" else "NotReady"

    if md.get("deletionTimestamp"):
        if status.get("reason") == "NodeLost":
            return "Unknown"
        if phase not in ("Succeeded", "Failed"):
            return "Terminating"
    return reason


def status_message(pod: dict[str, Any], containers: list[dict[str, Any]]) -> str:
    """Why the pod is in its status, in one sentence (empty when there is nothing to explain)."""
    for c in containers:
        if c.get("hint"):
            return f"container {c['name']!r}: {c['hint']}"
    for c in containers:
        last = c.get("lastState") or {}
        if c["state"] == "waiting" and c.get("reason") == "CrashLoopBackOff" and last:
            return (
                f"container {c['name']!r} keeps exiting: last exit code {last.get('exitCode')} "
                f"({last.get('reason', 'Error')}), {c['restarts']} restarts"
            )
        if c["state"] == "waiting" and c.get("message"):
            return f"container {c['name']!r}: {c.get('reason', 'waiting')}: {c['message']}"
        if c["state"] == "terminated" and c.get("exitCode"):
            return f"container {c['name']!r} exited with code {c['exitCode']} ({c.get('reason', 'Error')})"
    status = pod.get("status") or {}
    scheduled = _condition(status, "PodScheduled")
    if scheduled and scheduled.get("status") == "False":
        return f"not scheduled: {scheduled.get('reason', '')}: {scheduled.get('message', '')}".rstrip(": ")
    if not (pod.get("spec") or {}).get("nodeName") and status.get("phase", "Pending") == "Pending":
        return "waiting for the scheduler to place the pod on a node"
    return status.get("message", "")


def pod_view(pod: dict[str, Any]) -> dict[str, Any]:
    """The gateway's Pod shape."""
    md = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    statuses = _by_name(status.get("containerStatuses"))
    init_statuses = _by_name(status.get("initContainerStatuses"))
    containers = [container_view(c, statuses.get(c.get("name", ""))) for c in spec.get("containers") or []]
    inits = [container_view(c, init_statuses.get(c.get("name", ""))) for c in spec.get("initContainers") or []]
    ready = sum(1 for c in containers if c["ready"])
    out: dict[str, Any] = {"name": md.get("name", ""), "namespace": md.get("namespace", "")}
    if md.get("creationTimestamp"):
        out["created"] = md["creationTimestamp"]
    out.update(
        {
            "phase": status.get("phase", "Unknown"),
            "status": pod_status(pod),
            "statusMessage": status_message(pod, inits + containers),
            "ready": bool(containers) and ready == len(containers),
            "readyContainers": f"{ready}/{len(containers)}",
            "restarts": sum(c["restarts"] for c in containers + inits),
            "node": spec.get("nodeName", ""),
            "podIP": status.get("podIP", ""),
            "hostIP": status.get("hostIP", ""),
            "startTime": status.get("startTime", ""),
            "qosClass": status.get("qosClass", ""),
            "deleting": bool(md.get("deletionTimestamp")),
            "containers": containers,
            "labels": md.get("labels") or {},
            "conditions": [
                {k: cond[k] for k in ("type", "status", "reason", "message") if k in cond}
                for cond in status.get("conditions") or []
            ],
        }
    )
    if inits:
        out["initContainers"] = inits
    return out


def log_blocker(pod: dict[str, Any], container: str, previous: bool) -> str | None:
    """Why `container` of `pod` has no log to read yet (None when it has one)."""
    status = pod.get("status") or {}
    if not (pod.get("spec") or {}).get("nodeName"):
        return "it is not scheduled on a node yet"
    cs = _by_name(status.get("containerStatuses")).get(container) or _by_name(status.get("initContainerStatuses")).get(
        container
    )
    if cs is None:
        return f"container {container!r} has not been created yet"
    last = (cs.get("lastState") or {}).get("terminated")
    if previous:
        return None if last else f"container {container!r} has no previous (terminated) instance"
    state = cs.get("state") or {}
    if "running" in state or "terminated" in state or last:
        return None
    reason = (state.get("waiting") or {}).get("reason") or "waiting"
    return f"container {container!r} has not started ({reason})"


# ---------------------------------------------------------------------------------- requests
def _amount(value: Any) -> float:
    try:
        return float(quantity_value(value))
    except ValueError:
        return 0.0


def pod_resources(pod: dict[str, Any], kind: str) -> dict[str, float | None]:
    """Effective pod-level `kind` ("requests" or "limits") for cpu (cores) and memory (bytes), the way
    the scheduler counts them: max(sum of app + sidecar containers, largest init container) + overhead.
    A limit is None when any app container has none (the pod is then unbounded)."""
    spec = pod.get("spec") or {}
    out: dict[str, float | None] = {}
    for res in ("cpu", "memory"):
        total = 0.0
        unbounded = False
        for c in spec.get("containers") or []:
            value = ((c.get("resources") or {}).get(kind) or {}).get(res)
            if value is None:
                unbounded = True
            else:
                total += _amount(value)
        init_max = 0.0
        for c in spec.get("initContainers") or []:
            value = ((c.get("resources") or {}).get(kind) or {}).get(res)
            if value is None:
                continue
            if _is_sidecar(c):
                total += _amount(value)
            else:
                init_max = max(init_max, _amount(value))
        total = max(total, init_max) + _amount((spec.get("overhead") or {}).get(res, 0))
        out[res] = None if kind == "limits" and unbounded else total
    return out


def container_limits(container: dict[str, Any]) -> dict[str, float | None]:
    limits = (container.get("resources") or {}).get("limits") or {}
    return {res: (_amount(limits[res]) if res in limits else None) for res in ("cpu", "memory")}
