"""This node's side of the VM reservations (k3svirt_common.reservation): the reconciler asks `admit`
before a domain starts and `settle` after each pass; the sweep removes reservations of VMs that are
gone. Decisions are the pure reservation.read/plan/orphaned; this module only carries them out."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from k3svirt_common import names
from k3svirt_common import reservation as rsv
from k3svirt_common.kube import ApiError, Client, k3svirt_path
from k3svirt_common.kube import reservations as api_rsv

log = logging.getLogger(__name__)


class Refused(Exception):
    """The API server refused the reservation (quota, LimitRange, Pod Security, ...): its message."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


def refusal(exc: ApiError) -> Refused:
    if exc.status == 403 and "exceeded quota" in exc.message:
        return Refused("QuotaExceeded", exc.message)
    return Refused("ReservationRefused", exc.message if exc.answered else f"the API server did not answer: {exc}")


@dataclass
class Reservations:
    api: Client
    node: str
    emulated: bool
    image: str = rsv.PAUSE_IMAGE

    def want(self, spec: Mapping[str, Any], devices: Mapping[str, int] | None = None) -> dict[str, str]:
        """`devices`: the extended resources of the VM's passthrough devices (pci_resources)."""
        return rsv.resources(spec, emulated=self.emulated, devices=devices)

    # `pod`: the VM's reservation pod as the watch (kopf's index) last showed it, None if not seen;
    # it may lag behind our own writes: a create answered 409 reads the pod, a delete answered 404
    # was done already.
    def prepare(self, ns: str, vm: str, uid: str, spec: Mapping[str, Any], pod: Mapping | None,
                devices: Mapping[str, int] | None = None) -> Mapping | None:  # fmt: skip
        """At the start of a pass that is to start the domain: creates a missing reservation at once,
        so the scheduler and the kubelet admit it while the pass provisions disks and defines the
        domain. The pod as it is now; a refusal is left to `admit`, which reports it."""
        want = self.want(spec, devices)
        if rsv.plan(rsv.read(pod, uid=uid, node=self.node, want=want), hold=True) != rsv.Intent.CREATE:
            return pod
        try:
            return api_rsv.create(self.api, rsv.pod_body(ns, vm, uid, self.node, want, self.image))
        except ApiError:
            return pod

    def admit(self, ns: str, vm: str, uid: str, spec: Mapping[str, Any], pod: Mapping | None,
              devices: Mapping[str, int] | None = None) -> rsv.View:  # fmt: skip
        """Makes sure a reservation sized for `spec` exists; its state (ADMITTED: the domain may start).
        A reservation on its way (created earlier in this pass, or placed and not yet admitted) is read
        fresh, so a pod admitted meanwhile starts the domain in this pass rather than the next one.
        Raises Refused when the API server will not create it."""
        return self.admit_fresh(ns, vm, uid, spec, pod, devices)[0]

    def admit_fresh(self, ns: str, vm: str, uid: str, spec: Mapping[str, Any], pod: Mapping | None,
                    devices: Mapping[str, int] | None = None) -> tuple[rsv.View, Mapping | None]:  # fmt: skip
        """`admit`, and the pod as it was read for the verdict."""
        want = self.want(spec, devices)
        view = rsv.read(pod, uid=uid, node=self.node, want=want)
        if view.state in (rsv.State.PENDING, rsv.State.BOUND):
            try:
                pod = api_rsv.get(self.api, ns, rsv.pod_name(vm))
            except ApiError as exc:
                raise refusal(exc) from exc
            view = rsv.read(pod, uid=uid, node=self.node, want=want)
        return self._carry_out(ns, vm, uid, view, pod, want, hold=True), pod

    def settle(self, ns: str, vm: str, uid: str, spec: Mapping[str, Any], pod: Mapping | None, *,
               running: bool, devices: Mapping[str, int] | None = None) -> rsv.View:  # fmt: skip
        """After a pass: a running domain keeps (or gets back) a reservation, whatever size it was
        started with; a stopped one gives its share back."""
        view = rsv.read(pod, uid=uid, node=self.node, want=None)
        return self._carry_out(ns, vm, uid, view, pod, self.want(spec, devices) if running else None, hold=running)

    def release(self, ns: str, vm: str) -> None:
        """Deletes the VM's reservation, read fresh (a deleted VM must give it back whatever the watch
        says); a pod of that name that is not a reservation is left alone."""
        pod = api_rsv.get(self.api, ns, rsv.pod_name(vm))
        if pod is not None and rsv.LABEL_VM in (pod["metadata"].get("labels") or {}):
            api_rsv.delete(self.api, ns, rsv.pod_name(vm), pod_uid=pod["metadata"].get("uid"))

    def _carry_out(self, ns: str, vm: str, uid: str, view: rsv.View, pod: Mapping | None,
                   want: Mapping[str, str] | None, *, hold: bool) -> rsv.View:  # fmt: skip
        intent = rsv.plan(view, hold=hold)
        try:
            if intent == rsv.Intent.CREATE:
                assert want is not None
                created = api_rsv.create(self.api, rsv.pod_body(ns, vm, uid, self.node, want, self.image))
                # An existing pod (409: the watch had not shown it yet) is judged like any other.
                return rsv.read(created, uid=uid, node=self.node, want=want)
            if intent == rsv.Intent.DELETE:
                pod_uid = ((pod or {}).get("metadata") or {}).get("uid")
                api_rsv.delete(self.api, ns, rsv.pod_name(vm), pod_uid=pod_uid)
                log.info("reservation released", extra={"vm": f"{ns}/{vm}", "why": view.state.value})
                return rsv.View(rsv.State.MISSING if not hold else rsv.State.DELETING, view.message)
        except ApiError as exc:
            raise refusal(exc) from exc
        return view

    def sweep(self) -> int:
        """Removes this node's reservations whose VM is gone or runs elsewhere; how many."""
        removed = 0
        for pod in api_rsv.list_on_node(self.api, rsv.LABEL_NODE, self.node):
            meta = pod["metadata"]
            vm_name = (meta.get("labels") or {}).get(rsv.LABEL_VM)
            if not vm_name:
                continue
            try:
                vm = self.api.get(k3svirt_path(names.VM_PLURAL, meta["namespace"], vm_name))
            except ApiError as exc:
                if exc.status != 404:
                    raise
                vm = None
            if rsv.orphaned(pod, vm, self.node) and api_rsv.delete(
                self.api, meta["namespace"], meta["name"], pod_uid=meta.get("uid")
            ):
                removed += 1
        return removed

    def ensure_priority_class(self) -> None:
        api_rsv.ensure_priority_class(self.api, rsv.priority_class_body())
