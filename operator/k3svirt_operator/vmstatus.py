"""Pure status computation for a VirtualMachine: conditions and the one-word printableStatus."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from k3svirt_common import names
from k3svirt_common.names import PrintableStatus

from .lifecycle import Power


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(ctype: str, ok: bool | None, reason: str, message: str = "") -> dict[str, Any]:
    status = "Unknown" if ok is None else ("True" if ok else "False")
    return {"type": ctype, "status": status, "reason": reason, "message": message}


def merge_conditions(old: Sequence[Mapping[str, Any]] | None, new: Sequence[Mapping[str, Any]]) -> list[dict]:
    """New conditions replace old ones of the same type; lastTransitionTime moves only on a status change."""
    by_type = {c["type"]: dict(c) for c in old or ()}
    for c in new:
        prev = by_type.get(c["type"])
        stamp = prev.get("lastTransitionTime") if prev and prev.get("status") == c["status"] else None
        by_type[c["type"]] = {**c, "lastTransitionTime": stamp or now()}
    return sorted(by_type.values(), key=lambda c: c["type"])


def printable_status(
    *, failed: PrintableStatus | None = None, power: Power = Power.ABSENT, stopping: bool = False
) -> PrintableStatus:
    """The one word of status.printableStatus, decided here only: first match wins (the precedence
    documented in the CRD and in names.PrintableStatus)."""
    if failed:
        return failed  # ErrorProvisioning, ErrorUnschedulable or Failed
    if power == Power.STOPPING or stopping:
        return PrintableStatus.STOPPING
    return {
        Power.RUNNING: PrintableStatus.RUNNING,
        Power.PAUSED: PrintableStatus.PAUSED,
        Power.SHUTOFF: PrintableStatus.STOPPED,
        Power.CRASHED: PrintableStatus.FAILED,
        Power.ABSENT: PrintableStatus.STOPPED,
    }.get(power, PrintableStatus.UNKNOWN)


def ready_condition(power: Power) -> dict[str, Any]:
    if power == Power.RUNNING:
        return condition(names.COND_READY, True, "DomainRunning", "the libvirt domain is running")
    if power == Power.PAUSED:
        return condition(names.COND_READY, False, "DomainPaused", "the libvirt domain is paused")
    if power == Power.CRASHED:
        return condition(names.COND_READY, False, "DomainCrashed", "the guest crashed")
    return condition(names.COND_READY, False, "DomainNotRunning", "the libvirt domain is not running")


def monitoring(previous: Mapping[str, Any], summary: Mapping[str, Any] | None, endpoint: str) -> dict[str, Any]:
    """status.monitoring from the latest figures; keys of the previous one that are gone become None
    (a merge patch keeps keys it is not told to clear)."""
    return {**{k: None for k in previous}, **(summary or {}), "endpoint": endpoint}
