"""VMTemplate status (latest version, versions, usedBy, Valid) from a fresh, paged list of the namespace's VMs.

The operator watches only its own node's VMs (placement.py), so it cannot count a template's users from
its watch: every refresh reads the namespace's VMs (in pages, keeping only what `usedBy` reads). Marks
are coalesced: a burst of 100 VMs created from one template costs one list per namespace per round,
not 100. Every node computes the same answer from the same list, so their writes agree.

Refreshes: every event of a template (its own status writes included: the next list finds nothing to
change), a spec change or deletion of one of this node's VMs that references it, and a slow full round
(`full_seconds`) for the users this node does not see change (VMs of other nodes, unclaimed VMs).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from k3svirt_common import names, templates
from k3svirt_common.kube import ApiError

from . import shutdown

log = logging.getLogger(__name__)

Marks = dict[str, dict[str, Mapping[str, Any] | None]]  # namespace -> template name -> body (None: GET it)


class TemplateStatus:
    def __init__(self, get_template: Callable[[str, str], Mapping[str, Any] | None],
                 list_templates: Callable[[], list[dict[str, Any]]],
                 usage: Callable[[str], list[dict[str, Any]]],
                 patch_status: Callable[[str, str | None, str, Mapping[str, Any]], None],
                 *, coalesce_seconds: float = 1.0, full_seconds: float = 300.0) -> None:  # fmt: skip
        self.get_template, self.list_templates, self.usage = get_template, list_templates, usage
        self.patch_status = patch_status
        self.coalesce_seconds, self.full_seconds = coalesce_seconds, full_seconds
        self._marks: Marks = {}
        self.wake = asyncio.Event()
        self.lists = 0  # namespace lists made (bench/tests read it)

    def mark(self, namespace: str, name: str, body: Mapping[str, Any] | None = None) -> None:
        """Refresh this template soon (event loop thread). `body`: the template as just seen."""
        self._marks.setdefault(namespace, {})[name] = body
        self.wake.set()

    def take(self) -> Marks:
        marks, self._marks = self._marks, {}
        self.wake.clear()
        return marks

    def refresh(self, marks: Marks) -> int:
        """One round (worker thread): the statuses that changed are written; how many."""
        written = 0
        for ns, wanted in sorted(marks.items()):
            bodies = [b if b is not None else self.get_template(ns, n) for n, b in sorted(wanted.items())]
            bodies = [b for b in bodies if b is not None and not (b.get("metadata") or {}).get("deletionTimestamp")]
            if not bodies:
                continue
            users = self.usage(ns)
            self.lists += 1
            for body in bodies:
                status = templates.compute_status(body, users)
                if status != {k: v for k, v in (body.get("status") or {}).items() if not k.startswith("kopf")}:
                    self.patch_status(names.VMTEMPLATE_PLURAL, ns, body["metadata"]["name"], status)
                    written += 1
        return written

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        last_full = loop.time()
        while not shutdown.KOPF_STOP.is_set():
            try:
                if loop.time() - last_full >= self.full_seconds:
                    last_full = loop.time()
                    for t in await asyncio.to_thread(self.list_templates):
                        meta = t.get("metadata") or {}
                        self.mark(meta.get("namespace", ""), meta.get("name", ""), t)
                marks = self.take()
                if marks:
                    await asyncio.to_thread(self.refresh, marks)
            except ApiError as exc:  # retried at the next mark or round
                log.warning("VMTemplate status not refreshed", extra={"error": str(exc)})
            except Exception:  # a surprise must not end template status for the node
                log.exception("VMTemplate status refresh failed")
            if not await shutdown.pause(self.coalesce_seconds):  # marks arriving meanwhile join this round
                return
            if not self._marks and not await shutdown.wait_for_event(self.wake, self.full_seconds):
                return
