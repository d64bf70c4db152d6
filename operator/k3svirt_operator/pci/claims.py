"""This node's claims on its PCIPassthroughs between deciding them and seeing them come back.

A VM's pass decides which devices it claims; the handler writes those statuses after the pass. Until
the watch brings a written status back (a new resourceVersion in kopf's index), the decided one is
laid over the indexed object, so two VMs of this node never both get a device.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

from .assignment import Assignment, StatusPatch, plan_for_vm, plan_release


class Claims:
    def __init__(self) -> None:
        self._lock = threading.Lock()  # planning and recording must not interleave between two VMs
        self._pending: dict[str, tuple[str | None, dict[str, Any]]] = {}  # name -> (indexed rv, status)

    def _view(self, objs: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """The objects with the statuses decided here that the index does not show yet."""
        out = []
        for o in objs:
            meta = o["metadata"]
            pending = self._pending.get(meta["name"])
            if pending is not None and pending[0] == meta.get("resourceVersion"):
                o = {**o, "status": pending[1]}
            elif pending is not None:
                del self._pending[meta["name"]]  # the index caught up (or moved on)
            out.append(o)
        return out

    def assign(
        self, objs: Iterable[Mapping[str, Any]], node: str, vm: Mapping[str, str], spec: Mapping[str, Any]
    ) -> Assignment:
        with self._lock:
            objs = list(objs)
            assignment = plan_for_vm(self._view(objs), node, vm, spec)
            self._record(objs, assignment.patches)
        return assignment

    def release(self, objs: Iterable[Mapping[str, Any]], vm: Mapping[str, str]) -> list[StatusPatch]:
        with self._lock:
            objs = list(objs)
            patches = plan_release(self._view(objs), vm)
            self._record(objs, patches)
        return patches

    def _record(self, objs: list[Mapping[str, Any]], patches: list[StatusPatch]) -> None:
        rv = {o["metadata"]["name"]: o["metadata"].get("resourceVersion") for o in objs}
        for name, status in patches:
            self._pending[name] = (rv.get(name), status)
