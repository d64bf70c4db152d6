"""Which VirtualMachines reach this node's operator, and the claim that brings a VM to it.

kopf watches only the VMs this node runs: `fieldSelector=status.node=<node>` (the CRD declares
`spec.nodeName` and `status.node` selectable). A node's memory and CPU then follow its own VMs, not the
cluster's: with every VM watched, kopf kept a per-object record, two index entries and a memo for
each VM of every other node (146 MiB RSS with 2000 VMs pinned elsewhere, bench/README.md).

A VM reaches that watch once it is claimed (status.node = this node). The `Claimer` watches the VMs
nobody claimed yet that this node may run, in two narrow watches:

* `spec.nodeName=<node>,status.node=`: pinned here; claimed at once.
* `spec.nodeName=,status.node=`: placed by spec.nodeSelector; claimed when the selector matches this
  node's labels, with the resourceVersion-guarded write (`Runtime.claim_vm`), so of two matching nodes
  exactly one wins. Those that do not match are remembered (name, resourceVersion, selector) and looked
  at again when the node's labels change.

VMs pinned to other nodes never reach this operator at all. A field the object lacks selects as "".
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Mapping
from typing import Any

from k3svirt_common import names
from k3svirt_common.kube import SYNC, ApiError, Client, ListWatch, k3svirt_path

log = logging.getLogger(__name__)

Key = tuple[str, str]
ClaimFn = Callable[[str, str, str], "str | None"]  # (namespace, name, resourceVersion) -> owner


def watch_selector(node: str) -> str:
    """kopf's VM watch: the VMs this node runs."""
    return f"status.node={node}"


def claim_selectors(node: str) -> tuple[str, str]:
    """The unclaimed VMs pinned to this node, and the unclaimed VMs placed by selector."""
    return f"spec.nodeName={node},status.node=", "spec.nodeName=,status.node="


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def decide(vm: Mapping[str, Any], node: str, labels: Mapping[str, str]) -> str:
    """ "claim", "wait" (placed by a selector this node does not match now) or "skip" (deleted,
    claimed already, or pinned to another node)."""
    meta, spec, status = vm.get("metadata") or {}, vm.get("spec") or {}, vm.get("status") or {}
    if meta.get("deletionTimestamp") or status.get("node"):
        return "skip"
    if spec.get("nodeName"):
        return "claim" if spec["nodeName"] == node else "skip"
    return "claim" if selector_matches(spec.get("nodeSelector"), labels) else "wait"


class Claimer:
    """Two list+watch threads over the unclaimed VMs this node may run; claims them."""

    def __init__(self, api: Client, node: str, labels: Callable[[], Mapping[str, str]], claim: ClaimFn,
                 *, backoff_max: float = 10.0) -> None:  # fmt: skip
        self.api, self.node, self.labels, self.claim = api, node, labels, claim
        self.backoff_max = backoff_max
        self._lock = threading.Lock()
        # Selector-placed VMs this node does not match now: (resourceVersion, nodeSelector).
        self._waiting: dict[Key, tuple[str, dict[str, str]]] = {}
        self._stop = threading.Event()
        self._watches: list[ListWatch] = []
        self._threads: list[threading.Thread] = []
        self.claimed = 0

    def start(self) -> None:
        for i, selector in enumerate(claim_selectors(self.node)):
            t = threading.Thread(target=self._run, args=(selector,), name=f"claimer-{i}", daemon=True)
            self._threads.append(t)
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for lw in list(self._watches):
            lw.close()

    def relabeled(self) -> None:
        """The node's labels changed: the waiting VMs whose selector matches now are claimed."""
        labels = self.labels()
        with self._lock:
            due = [(k, rv) for k, (rv, sel) in self._waiting.items() if selector_matches(sel, labels)]
        for key, rv in due:
            try:
                self._claim(key, rv)
            except ApiError as exc:  # the watch's next relist finds it again
                log.warning("claiming a VM failed", extra={"vm": f"{key[0]}/{key[1]}", "error": str(exc)})

    # ------------------------------------------------------------------ the watch threads
    def _run(self, selector: str) -> None:
        path = k3svirt_path(names.VM_PLURAL)
        failures = 0
        while not self._stop.is_set():
            # A new ListWatch after a failure: its list brings back every VM a failed claim left unclaimed.
            lw = ListWatch(self.api, path, query={"fieldSelector": selector}, page=200, timeout_seconds=300)
            self._watches.append(lw)
            try:
                while not self._stop.is_set():
                    for ev in lw.events():
                        self._event(ev)
                        failures = 0
            except ApiError as exc:
                if self._stop.is_set():
                    break
                failures += 1
                log.warning("watch of unclaimed VMs failed", extra={"selector": selector, "error": str(exc)})
            except Exception:  # a surprise must not end claiming for the node
                failures += 1
                log.exception("claiming VMs failed", extra={"selector": selector})
            finally:
                lw.close()
                self._watches.remove(lw)
            delay = min(self.backoff_max, 0.5 * 2 ** min(failures, 5)) * random.uniform(0.5, 1.0)
            self._stop.wait(delay)

    def _event(self, ev: Any) -> None:
        if ev.type == SYNC:
            with self._lock:
                self._waiting.clear()
            for vm in ev.object["items"]:
                self._consider(vm)
        elif ev.type in ("ADDED", "MODIFIED"):
            self._consider(ev.object)
        elif ev.type == "DELETED":  # deleted, or claimed (it left the selection): nothing to wait for
            with self._lock:
                self._waiting.pop(_key(ev.object), None)

    def _consider(self, vm: Mapping[str, Any]) -> None:
        key, rv = _key(vm), (vm.get("metadata") or {}).get("resourceVersion", "")
        verdict = decide(vm, self.node, self.labels())
        with self._lock:
            if verdict == "wait":
                self._waiting[key] = (rv, dict((vm.get("spec") or {}).get("nodeSelector") or {}))
                return
            self._waiting.pop(key, None)
        if verdict == "claim":
            self._claim(key, rv)

    def _claim(self, key: Key, rv: str) -> None:
        """Raises ApiError when the API server did not take it: the watch starts over (and relists)."""
        try:
            owner = self.claim(key[0], key[1], rv)
        except ApiError as exc:
            if exc.status == 404:  # deleted meanwhile
                return
            raise
        with self._lock:
            self._waiting.pop(key, None)
        if owner == self.node:
            self.claimed += 1
            log.info("VM claimed", extra={"vm": f"{key[0]}/{key[1]}"})


def _key(vm: Mapping[str, Any]) -> Key:
    meta = vm.get("metadata") or {}
    return meta.get("namespace", ""), meta.get("name", "")
