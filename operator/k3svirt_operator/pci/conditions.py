"""The ``conditions`` list of our PCI objects' status: upsert one, keeping its transition time."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from . import discovery

COND_READY = "Ready"


def set_condition(
    conditions: Iterable[Mapping[str, Any]] | None,
    type_: str,
    status: bool | str,
    reason: str,
    message: str,
    now: str | None = None,
) -> list[dict[str, Any]]:
    """Upsert one condition, keeping ``lastTransitionTime`` when ``status`` did not change."""
    now = now or discovery.utcnow()
    st = status if isinstance(status, str) else ("True" if status else "False")
    out, found = [], False
    for c in conditions or []:
        c = dict(c)
        if c.get("type") == type_:
            found = True
            ltt = c.get("lastTransitionTime") if c.get("status") == st else now
            c = {"type": type_, "status": st, "reason": reason, "message": message, "lastTransitionTime": ltt or now}
        out.append(c)
    if not found:
        out.append({"type": type_, "status": st, "reason": reason, "message": message, "lastTransitionTime": now})
    return out
