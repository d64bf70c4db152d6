"""One reconcile pass of a VirtualMachine: resolve -> provision -> define -> power -> status.

Runs in a worker thread (libvirt and qemu-img block). It returns the status to write and the
events to post; the kopf handlers do the writing. Bad specs become failed conditions with the
field named, never exceptions that make kopf retry forever.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import libvirt
from k3svirt_common import names, pci_resources, templates
from k3svirt_common import reservation as rsv
from k3svirt_common.kube import ApiError
from k3svirt_common.names import PrintableStatus

from . import (
    cloudinit,
    cpupin,
    cpupool,
    cputopo,
    domains,
    hostpaths,
    hugepages,
    image_cache,
    live_update,
    shutdown,
    storage,
)
from .accel import Acceleration
from .config import Settings
from .domain_xml import DomainBuildError, DomainContext, VMRef, build_domain, default_mac
from .libvirt_conn import LibvirtConnection
from .lifecycle import Decision, Power, Step, decide
from .pci import irq
from .pci.assignment import StatusPatch
from .pci.claims import Claims
from .reservations import Refused, Reservations
from .startqueue import StartQueue
from .vmstate import StartFailure, Stopping, VMState
from .vmstatus import condition, merge_conditions, printable_status, ready_condition

log = logging.getLogger(__name__)
FAILED, ERROR_PROVISIONING = PrintableStatus.FAILED, PrintableStatus.ERROR_PROVISIONING
RESERVED = names.COND_RESOURCES_RESERVED
RESERVE_BACKOFF_MAX = 60.0  # seconds between attempts to create a reservation the API server refused
QUEUE_RECHECK = 10.0  # a VM waiting for a start slot re-checks (and re-reports) its place this often

ADDRESS_POLLS = 20  # quick re-checks (every 3 s) for a DHCP lease after a start

TemplateGetter = Callable[[str, str], Mapping[str, Any] | None]  # (namespace, name) -> VMTemplate


def stop_grace_seconds(spec: Mapping[str, Any], node_default: float) -> float:
    """Seconds between the ACPI shutdown request and destroy: the VM's
    terminationGracePeriodSeconds, else the node's default."""
    value = spec.get("terminationGracePeriodSeconds")
    return node_default if value is None else float(value)


@dataclass
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Result:
    status: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    requeue: float | None = None  # seconds until the next pass is needed (None: on events/resync)
    claims: list[StatusPatch] = field(default_factory=list)  # PCIPassthrough statuses to write
    laps: dict[str, float] = field(default_factory=dict)  # seconds per step of the pass (debug log)


class Laps:
    """Seconds spent in each step of one pass: the debug log says where a slow start went."""

    def __init__(self) -> None:
        self._mark = time.monotonic()
        self.seconds: dict[str, float] = {}

    def __call__(self, step: str) -> None:
        now = time.monotonic()
        self.seconds[step] = round(self.seconds.get(step, 0.0) + now - self._mark, 4)
        self._mark = now


class SpecProblem(Exception):
    """The VM cannot be realised as specified: becomes printableStatus `status` and a condition."""

    def __init__(self, status: PrintableStatus, cond_type: str, reason: str, message: str, *,
                 requeue: float | None = None, warning: bool = True, once: bool = False) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.cond_type, self.reason, self.message = status, cond_type, reason, message
        self.requeue, self.warning = requeue, warning
        self.once = once  # one Event while the reason lasts, whatever the message says (a queue position)


_UP = (Power.RUNNING, Power.PAUSED, Power.STOPPING)
START_BACKOFF_MAX = 300.0  # seconds between start attempts of a VM whose domain keeps failing to start


class VMReconciler:
    def __init__(
        self,
        settings: Settings,
        conn: LibvirtConnection,
        accel: Acceleration,
        get_template: TemplateGetter,
        claims: Claims | None = None,
        reservations: Reservations | None = None,
        starts: StartQueue | None = None,
        pool: cpupool.SharedPool | None = None,
    ) -> None:
        self.settings = settings
        self.conn = conn
        self.accel = accel
        self.get_template = get_template
        self.claims = claims  # None: PCI passthrough disabled on this node
        self.reservations = reservations  # None: no reservation pods (a node without a kubelet)
        self.starts = starts  # None: no limit on domain starts at once
        self.pool = pool  # None: VMs without dedicated cores are not confined to the shared CPUs
        self._libvirt_version_cache: int | None = None

    # ------------------------------------------------------------------ reconcile
    def reconcile(
        self,
        body: Mapping[str, Any],
        state: VMState,
        passthroughs: Sequence[Mapping[str, Any]] = (),
        reservation: Mapping[str, Any] | None = None,
        live_reservation: Callable[[], Mapping[str, Any] | None] | None = None,
    ) -> Result:
        """One pass over a copy of the VM; `passthroughs`: every PCIPassthrough (kopf's index);
        `reservation`: the VM's reservation pod as last seen (kopf's index), None if none was;
        `live_reservation`: what the watch shows of it now (the start gate looks there first)."""
        meta, spec = body["metadata"], body.get("spec") or {}
        status = dict(body.get("status") or {})
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        events: list[Event] = []
        conds: list[dict[str, Any]] = []
        claims: list[StatusPatch] = []
        base = {
            "node": self.settings.node_name,
            "observedGeneration": meta.get("generation"),
            "acceleration": self.accel.label,
            "domainName": names.domain_name(ns, name),
            "domainUUID": uid,
        }
        live_failure: str | None = None
        held: dict[str, Any] = {"pod": reservation, "devices": None, "live": live_reservation}
        laps = Laps()
        try:
            expanded = self._expand(ns, spec, status)
            laps("expand")
            if spec.get("template") or spec.get("presets"):
                conds.append(condition(names.COND_TEMPLATE_RESOLVED, True, "Resolved", _describe_resolution(expanded)))
            # The reservation as last read: the watch's, then what this pass created or read fresh.
            devices = pci_resources.device_requests(expanded.spec, passthroughs)  # units its reservation asks for
            held["devices"] = devices
            held["early"] = self._reserve_early(
                ns, name, uid, meta, status, spec, expanded.spec, state, reservation, devices
            )
            expanded, pinned, split = self._dedicated(ns, name, expanded, held)
            laps("reserve")
            adopt = (meta.get("annotations") or {}).get(names.ANNOTATION_ADOPT_STORAGE)
            ctx = self._provision(ns, name, uid, expanded.spec, adopt, passthroughs, claims)
            laps("provision")
            conds.append(condition(names.COND_PROVISIONED, True, "DisksReady", "disks and seed are in place"))
            if expanded.spec.get("hostDevices"):
                conds.append(
                    condition(
                        names.COND_HOST_DEVICES_READY,
                        True,
                        "Bound",
                        "host devices are bound to vfio-pci and reserved for this VM",
                    )
                )
            built = self._build(ns, name, uid, meta.get("generation") or 0, expanded.spec, ctx)
            laps("build")
            conn = self.conn.get()
            observed = self._observe(conn, ns, name, uid)
            dom = observed.domain
            spec_hash = _hash_of(built.xml)
            pool_moved = dom is not None and observed.defined_cpuset != cpupool.vcpu_cpuset(built.xml)
            if dom is None or observed.defined_spec_hash != spec_hash:
                dom, shared = domains.define_unless_clashing(conn, uid, built.xml)
                if dom is None:
                    raise SpecProblem(FAILED, names.COND_PROVISIONED, "HostResourceInUse", "; ".join(shared))
                events.append(
                    Event(
                        "Normal",
                        "Defined" if observed.domain is None else "Updated",
                        f"libvirt domain {names.domain_name(ns, name)} "
                        f"{'defined' if observed.domain is None else 'definition updated'}",
                    )
                )
                observed = self._observe(conn, ns, name, uid)
            elif pool_moved:  # the shared CPU pool changed: the next start uses the new one (live: cpupool)
                dom, shared = domains.define_unless_clashing(conn, uid, built.xml)
                if dom is None:
                    raise SpecProblem(FAILED, names.COND_PROVISIONED, "HostResourceInUse", "; ".join(shared))
                observed = self._observe(conn, ns, name, uid)
            self._grow_disks(ctx, observed, events)
            laps("define")
            for adj in built.adjustments:
                events.append(Event("Warning", adj.reason, f"{adj.field}: {adj.message}"))
            action, action_value = _pending_action(meta, status)
            failure = state.start_failure
            if failure is not None and (failure.generation != meta.get("generation") or action_value is not None):
                state.start_failure = None  # a new spec or an explicit request: try again at once
            grace = stop_grace_seconds(expanded.spec, self.settings.stop_grace_seconds)
            requeue = self._apply_power(
                names.run_strategy(spec),
                observed,
                action,
                events,
                state,
                meta.get("generation") or 0,
                grace,
                admit=lambda: self._before_start(ns, name, uid, expanded.spec, state, held),
                key=(ns, name),
            )
            laps("power")
            if pinned and any(e.reason == "Started" for e in events):
                events.append(Event("Normal", "DedicatedCores", pinned))
                if split:  # the kubelet's pick is worse than cputopo's reference: say so, and why
                    events.append(Event("Warning", "DedicatedCoresSplitL2", split))
            if action_value is not None and state.stopping is None:
                # Recorded once performed: a stop or restart under way lives in this process only, and
                # an operator killed before it finishes must find the request still pending (the
                # restart was otherwise marked done while the guest kept its old definition).
                status["lastActionRequest"] = action_value
            observed = self._observe(conn, ns, name, uid)
            if observed.power == Power.RUNNING and observed.running_spec_hash not in (None, spec_hash):
                live_failure = self._apply_live(observed.domain, built.xml, events)
                observed = self._observe(conn, ns, name, uid)
            pod = _held_pod(held)
            self._settle(ns, name, uid, expanded.spec, pod, observed.power, state, conds, held.get("devices"))
            if ctx.host_devices and observed.power in _UP:
                conds.append(self._steer_irqs(expanded.spec, ctx.host_devices))
        except SpecProblem as problem:
            if problem.reason != "Queued":
                self._leave_start_queue(ns, name)
            if problem.cond_type != RESERVED:
                self._release_unstarted(ns, name, uid, _held_pod(held))
            conds.append(condition(problem.cond_type, False, problem.reason, problem.message))
            conds.append(condition(names.COND_READY, False, problem.reason, problem.message))
            events.append(Event("Warning" if problem.warning else "Normal", problem.reason, problem.message))
            new_status = _status(status, base, printable_status(failed=problem.status), conds)
            if problem.once and _ready_reason(status) == problem.reason:
                events = [e for e in events if e.reason != problem.reason]
            laps("failed")
            return Result(new_status, _dedupe(events, status, problem.status), requeue=problem.requeue, claims=claims,
                          laps=laps.seconds)  # fmt: skip
        except libvirt.libvirtError as exc:
            self._leave_start_queue(ns, name)
            msg = f"libvirt: {exc.get_error_message()}"
            conds.append(condition(names.COND_READY, False, "LibvirtError", msg))
            events.append(Event("Warning", "LibvirtError", msg))
            new_status = _status(status, base, printable_status(failed=FAILED), conds)
            laps("failed")
            return Result(new_status, _dedupe(events, status, FAILED), requeue=10.0, claims=claims, laps=laps.seconds)

        conds.append(ready_condition(observed.power))
        restart_needed = observed.power in (Power.RUNNING, Power.PAUSED) and observed.running_spec_hash not in (
            None,
            spec_hash,
        )
        restart_message = (
            "the spec changed in ways libvirt cannot apply to a running guest; restart the "
            "VM (annotation k3svirt.io/action-request: restart/<id>) to apply them"
        )
        if restart_needed and live_failure:
            restart_message = f"the live change was refused ({live_failure}); restart the VM to apply it"
        conds.append(
            condition(
                names.COND_RESTART_REQUIRED,
                restart_needed,
                ("LiveUpdateFailed" if live_failure else "SpecChanged") if restart_needed else "UpToDate",
                restart_message if restart_needed else "the running guest matches the spec",
            )
        )
        printable = printable_status(power=observed.power, stopping=state.stopping is not None)
        new_status = _status(
            status,
            base,
            printable,
            conds,
            resolvedTemplate=expanded.template,
            resolvedPresets=expanded.presets or None,
            consoleLog=str(storage.console_log_path(ns, name, self.settings.storage_root)),
            consoleEndpoint=self.settings.console_endpoint(ns, name),
            liveResources=_live_resources(observed),
            interfaces=_interfaces(uid, expanded.spec, observed.domain),
        )
        if new_status.get("liveResources") and observed.power not in (Power.RUNNING, Power.PAUSED):
            new_status["liveResources"] = None  # null in the merge patch: a stopped guest has none
        waiting_for_lease = observed.power == Power.RUNNING and any(
            "ipAddress" not in i and n.get("bridge") is None
            for i, n in zip(new_status["interfaces"], expanded.spec.get("networks") or [], strict=False)
        )
        if not waiting_for_lease:
            state.address_polls = 0
        elif requeue is None and state.address_polls < ADDRESS_POLLS:
            # DHCP leases raise no libvirt event: look again soon, for the first minute of a boot.
            state.address_polls += 1
            requeue = 3.0
        if new_status["printableStatus"] != status.get("printableStatus"):
            events.append(
                Event("Normal", new_status["printableStatus"], f"VM is {new_status['printableStatus'].lower()}")
            )
        laps("settle")
        return Result(new_status, events, requeue, claims, laps.seconds)

    # ------------------------------------------------------------------ steps
    def _apply_live(self, dom: libvirt.virDomain | None, built_xml: str, events: list[Event]) -> str | None:
        """Memory/vCPU changes the running guest can take now (live_update); the refusal, if any."""
        if dom is None:
            return None
        plan = live_update.live_plan(dom.XMLDesc(0), built_xml)
        if plan is None:
            return None
        try:
            done = live_update.apply(dom, plan)
        except live_update.LiveUpdateError as exc:
            events.append(Event("Warning", "LiveUpdateFailed", str(exc)))
            return str(exc)
        applied = ", ".join(done) or "metadata"
        events.append(Event("Normal", "LiveUpdated", f"applied to the running guest: {applied}"))
        return None

    def _expand(self, ns: str, spec: Mapping[str, Any], status: Mapping[str, Any]) -> templates.Expanded:
        try:
            return templates.expand(
                spec,
                lambda n: self.get_template(ns, n),
                resolved_template=status.get("resolvedTemplate"),
                resolved_presets=status.get("resolvedPresets") or (),
            )
        except templates.TemplateError as exc:
            raise SpecProblem(FAILED, names.COND_TEMPLATE_RESOLVED, "InvalidSpec", str(exc)) from exc

    def _provision(
        self,
        ns: str,
        name: str,
        uid: str,
        spec: Mapping[str, Any],
        adopt: str | None,
        passthroughs: Sequence[Mapping[str, Any]],
        claims: list[StatusPatch],
    ) -> DomainContext:
        root = self.settings.storage_root
        refused = hostpaths.violations(spec, self.settings.host_paths, ns)
        if refused:
            network_only = all(field.startswith("spec.networks") for field, _ in refused)
            raise SpecProblem(
                FAILED,
                names.COND_PROVISIONED,
                "HostNetworkNotAllowed" if network_only else "HostPathNotAllowed",
                "; ".join(f"{field}: {msg}" for field, msg in refused),
            )
        try:
            storage.ensure_vm_dir(ns, name, root, uid=uid, adopt=adopt)
            plans = storage.plan_disks(ns, name, spec.get("disks") or [], root)
            policy = self.settings.image_fetch
            results = storage.ensure_disks(
                plans,
                root,
                fetch_image=lambda url, sum_, at: image_cache.ensure_image(url, sum_, at, policy, wanted_by=uid),
                space=self.settings.space,
                owner=self.settings.qemu_owner,
            )
            seed = None
            if spec.get("cloudInit"):
                seed = str(cloudinit.build_seed(ns, name, uid, spec["cloudInit"], storage.seed_path(ns, name, root)))
        except (storage.StorageSpecError, cloudinit.CloudInitError) as exc:
            raise SpecProblem(ERROR_PROVISIONING, names.COND_PROVISIONED, "InvalidStorageSpec", str(exc)) from exc
        except storage.StorageOwnedByAnotherVM as exc:
            raise SpecProblem(FAILED, names.COND_PROVISIONED, "RetainedStorageExists", str(exc)) from exc
        except storage.InsufficientStorage as exc:
            raise SpecProblem(ERROR_PROVISIONING, names.COND_PROVISIONED, "InsufficientStorage", str(exc)) from exc
        except (storage.StorageError, image_cache.ImageError, cloudinit.SeedBuildError) as exc:
            raise SpecProblem(ERROR_PROVISIONING, names.COND_PROVISIONED, "ProvisioningFailed", str(exc)) from exc
        host_devices: dict[str, str] = {}
        if spec.get("hostDevices"):
            if self.claims is None:
                raise SpecProblem(
                    FAILED,
                    names.COND_HOST_DEVICES_READY,
                    "HostDevicesUnavailable",
                    "this node's operator has PCI passthrough disabled",
                )
            try:
                vm = {"namespace": ns, "name": name}
                assignment = self.claims.assign(passthroughs, self.settings.node_name, vm, spec)
            except ValueError as exc:
                raise SpecProblem(FAILED, names.COND_HOST_DEVICES_READY, "HostDevicesNotReady", str(exc)) from exc
            host_devices = assignment.devices
            claims.extend(assignment.patches)
        return DomainContext(
            domain_type=self.accel.domain_type,
            disks={r.name: r for r in results},
            seed_iso=seed,
            console_log=str(storage.console_log_path(ns, name, root)),
            host_devices=host_devices,
            uefi_nvram=str(storage.vm_dir(ns, name, root) / "nvram.fd"),
            libvirt_version=self._libvirt_version(),
            tcg_tb_cache_mib=self.settings.tcg_tb_cache_mib,
            shared_cpus=self.pool.cpuset() if self.pool is not None else None,
        )

    def _grow_disks(self, ctx: DomainContext, observed: domains.Observed, events: list[Event]) -> None:
        """spec.disks[].size raised: grow the disk, live through libvirt while the domain runs."""
        for result in ctx.disks.values():
            if result.grow_to is None:
                continue
            live = observed.domain is not None and observed.power in _UP
            try:
                if live:
                    domains.grow_disk(observed.domain, str(result.path), result.grow_to)
                else:
                    storage.grow_offline(result, result.grow_to, result.extra.get("preallocation", "off"))
            except (libvirt.libvirtError, storage.StorageError) as exc:
                message = f"spec.disks[{result.index}].size: growing the disk failed: {exc}"
                raise SpecProblem(ERROR_PROVISIONING, names.COND_PROVISIONED, "DiskGrowFailed", message) from exc
            how = "live (the running guest sees it now)" if live else "offline"
            events.append(Event("Normal", "DiskGrown", f"spec.disks[{result.index}] ({result.name}): grown to "
                                                       f"{result.grow_to} bytes {how}"))  # fmt: skip

    def _steer_irqs(self, spec: Mapping[str, Any], devices: Mapping[str, str]) -> dict[str, Any]:
        """Host IRQs of the running VM's passthrough devices onto the cores spec.cpu.irqAffinity picks;
        every pass, since the guest enables MSI-X vectors (new host IRQs) only once its driver runs."""
        cpu = spec.get("cpu") or {}
        policy = cpu.get("irqAffinity") or irq.POLICY_HOUSEKEEPING
        host = self.settings.pci
        try:
            dedicated = irq.parse_cpuset(cpu.get("dedicatedCpuSet") or "")
            emulator = irq.parse_cpuset(cpu.get("emulatorCpuSet") or "")
            steered = {}
            for address in devices.values():
                plan, _ = irq.steer_device(address, policy, dedicated=dedicated, emulator=emulator,
                                           sys_root=host.sys_root, proc_root=host.proc_root)  # fmt: skip
                steered[address] = (len(plan.irqs), plan.cpus)
        except (irq.AffinityError, OSError) as exc:
            return condition(names.COND_IRQ_AFFINITY, False, "NotApplied", f"spec.cpu.irqAffinity {policy}: {exc}")
        where = ", ".join(f"{a}: {n} IRQs on CPUs {c}" for a, (n, c) in steered.items())
        return condition(names.COND_IRQ_AFFINITY, True, "Applied", f"{policy}: {where}")

    def _libvirt_version(self) -> int | None:
        if self._libvirt_version_cache is None:  # fixed for the life of libvirtd; asked once
            try:
                self._libvirt_version_cache = self.conn.get().getLibVersion()
            except libvirt.libvirtError:
                return None
        return self._libvirt_version_cache

    def _build(self, ns: str, name: str, uid: str, generation: int, spec: Mapping[str, Any], ctx: DomainContext) -> Any:
        try:
            return build_domain(VMRef(ns, name, uid, generation), spec, ctx)
        except DomainBuildError as exc:
            raise SpecProblem(FAILED, names.COND_READY, "InvalidSpec", str(exc)) from exc

    def _observe(self, conn: libvirt.virConnect, ns: str, name: str, uid: str) -> domains.Observed:
        try:
            return domains.observe(conn, ns, name, uid)
        except domains.DomainConflict as exc:
            raise SpecProblem(FAILED, names.COND_READY, "DomainConflict", str(exc)) from exc

    # ------------------------------------------------------------------ reservation
    def _before_start(
        self, ns: str, name: str, uid: str, spec: Mapping[str, Any], state: VMState, held: dict[str, Any]
    ) -> None:
        """What must hold before a start: the node's free hugepages (its real counters), then the
        reservation in Kubernetes' books. Raises the condition that says what is missing."""
        huge = (spec.get("memory") or {}).get("hugepages")
        pools = hugepages.read_pools(self.settings.node_roots.sys_root) if huge else {}
        short = hugepages.shortage(spec, pools, self.settings.node_name)
        if short is not None:
            raise SpecProblem(PrintableStatus.ERROR_UNSCHEDULABLE, names.COND_READY, "InsufficientHugepages",
                              f"{short.field}: {short.message}", requeue=30.0)  # fmt: skip
        self._admit(ns, name, uid, spec, state, held)

    def _reserve_early(self, ns: str, name: str, uid: str, meta: Mapping[str, Any], status: Mapping[str, Any],
                       spec: Mapping[str, Any], expanded: Mapping[str, Any], state: VMState,
                       pod: Mapping[str, Any] | None,
                       devices: Mapping[str, int] | None = None) -> Future[Mapping | None] | None:  # fmt: skip
        """A pass that will start the domain asks for its reservation first: scheduling and admission
        then overlap provisioning instead of following it (docs/accounting.md). The create itself runs
        beside the pass too (one API round trip less on the way to the start); the pass takes its
        answer where it needs the pod (`_held_pod`). Only asks; the start still waits for `_admit`.
        None when nothing is asked."""
        if self.reservations is None or state.stopping is not None or pod is not None:
            return None  # one seen already (a running VM's, most passes) is for `_admit` to judge
        failure = state.start_failure
        if failure is not None and failure.generation == meta.get("generation") \
                and time.monotonic() < failure.not_before:  # fmt: skip
            return None  # no start before the back-off ends: no share to hold meanwhile
        early = self._observe(self.conn.get(), ns, name, uid)
        action, _ = _pending_action(meta, status)
        starts = decide(names.run_strategy(spec), early.power, early.reason, action).step == Step.START
        if not (starts or (state.pending_start and early.power not in _UP)):
            return None
        reservations = self.reservations

        def ask() -> Mapping[str, Any] | None:
            try:
                return reservations.prepare(ns, name, uid, expanded, pod, devices)
            except rsv.ReservationError:
                return pod  # an invalid size: `_admit` reports it

        return _EARLY.submit(ask)

    def _dedicated(self, ns: str, name: str, expanded: templates.Expanded,
                   held: dict[str, Any]) -> tuple[templates.Expanded, str, str | None]:  # fmt: skip
        """spec.cpu.dedicatedCores: the exclusive CPUs the kubelet gave the reservation become the
        spec's pinning (cpupin.py); the expanded spec to build, what was pinned where ("" if
        nothing) and, when the kubelet's pick spans more L2 clusters than cputopo's reference, why
        (cpupin.preference_note). Until the kubelet has assigned them, held["cpus"] says what the start waits for."""
        wanted = (expanded.spec.get("cpu") or {}).get("dedicatedCores")
        if not wanted:
            return expanded, "", None
        if self.reservations is None:
            raise SpecProblem(FAILED, RESERVED, "DedicatedCoresUnavailable",
                              "spec.cpu.dedicatedCores: the kubelet's CPU manager assigns the cores to the VM's "
                              "reservation, and this operator runs without reservations")  # fmt: skip
        pod = _held_pod(held)
        assignment = cpupin.read_assignment(pod) if pod else None
        if assignment is None:
            held["cpus"] = "waiting for the kubelet to run the reservation and assign its exclusive CPUs"
            return expanded, "", None
        try:
            cpus = cpupin.check(assignment, int(wanted))
        except cpupin.NotExclusive as exc:
            # Whole CPUs held for nothing: given back until the next try.
            with contextlib.suppress(ApiError):
                self.reservations.release(ns, name)
            raise SpecProblem(FAILED, RESERVED, "DedicatedCoresUnavailable", str(exc), requeue=60.0) from exc
        emulator = cpupin.emulator_cpus(assignment, self.settings.housekeeping_cpus)
        topology = cputopo.read()
        note = cpupin.preference_note(topology, assignment, self.settings.housekeeping_cpus)
        pinned = (f"vCPUs pinned to the exclusive host CPUs {','.join(map(str, cpus))} "
                  f"({cpupin.l2_layout(topology, cpus)}), emulator threads to {emulator}")  # fmt: skip
        spec = cpupin.with_pins(expanded.spec, cpus, emulator)
        return dataclasses.replace(expanded, spec=spec), pinned, note

    def _release_unstarted(self, ns: str, name: str, uid: str, pod: Mapping[str, Any] | None) -> None:
        """A pass that failed before its start (bad disks, a build error) gives back the reservation it
        may have asked for early, unless the domain runs: a failed VM holds no share of the node."""
        if self.reservations is None or pod is None:
            return
        with contextlib.suppress(ApiError, libvirt.libvirtError, SpecProblem):
            if self._observe(self.conn.get(), ns, name, uid).power not in _UP:
                self.reservations.release(ns, name)

    def _admit(
        self, ns: str, name: str, uid: str, spec: Mapping[str, Any], state: VMState, held: dict[str, Any]
    ) -> None:
        """Returns once the VM's reservation is admitted on this node; otherwise raises the condition
        that says what it waits for (the pod's watch events wake the loop when that changes)."""
        if self.reservations is None:
            return
        held["pod"] = newest_reservation(_held_pod(held), held["live"]() if held.get("live") else None)
        try:
            view, held["pod"] = self.reservations.admit_fresh(ns, name, uid, spec, held["pod"], held.get("devices"))
        except rsv.ReservationError as exc:
            raise SpecProblem(FAILED, RESERVED, "InvalidSpec", str(exc)) from exc
        except Refused as exc:
            state.reserve_failures += 1
            delay = min(5.0 * 2 ** (state.reserve_failures - 1), RESERVE_BACKOFF_MAX)
            message = f"the reservation pod {rsv.pod_name(name)} was refused (retried with back-off): {exc.message}"
            raise SpecProblem(FAILED, RESERVED, exc.reason, message, requeue=delay) from exc
        state.reserve_failures = 0
        if view.state == rsv.State.ADMITTED:
            if held.get("cpus"):  # dedicated cores not assigned yet: the pod's events wake the next pass
                raise SpecProblem(PrintableStatus.STARTING, RESERVED, "WaitingForCpus", held["cpus"], requeue=5.0,
                                  warning=False)  # fmt: skip
            return
        if view.state == rsv.State.UNSCHEDULABLE:
            message = f"no room on node {self.settings.node_name} for the VM's share: {view.message}"
            raise SpecProblem(PrintableStatus.ERROR_UNSCHEDULABLE, RESERVED, "Unschedulable", message, requeue=30.0)
        if view.state == rsv.State.FOREIGN:
            raise SpecProblem(FAILED, RESERVED, "ReservationConflict", view.message, requeue=30.0)
        raise SpecProblem(PrintableStatus.STARTING, RESERVED, "WaitingForReservation", view.message,
                          requeue=5.0, warning=False)  # fmt: skip

    def _settle(self, ns: str, name: str, uid: str, spec: Mapping[str, Any], pod: Mapping[str, Any] | None,
                power: Power, state: VMState, conds: list[dict[str, Any]],
                devices: Mapping[str, int] | None = None) -> None:  # fmt: skip
        """A running domain keeps its reservation (one lost is created again); a stopped one's goes."""
        if self.reservations is None:
            return
        running = power in (Power.RUNNING, Power.PAUSED, Power.STOPPING) or state.stopping is not None
        if state.pending_start and not running:
            return  # the restart's start is waiting for exactly this reservation
        try:
            view = self.reservations.settle(ns, name, uid, spec, pod, running=running, devices=devices)
        except (Refused, rsv.ReservationError) as exc:
            reason = exc.reason if isinstance(exc, Refused) else "InvalidSpec"
            conds.append(condition(RESERVED, False, reason, f"the running VM holds no reservation: {exc}"))
            return
        if not running:
            conds.append(condition(RESERVED, False, "Released", "a stopped VM holds no share of the node"))
        elif view.state == rsv.State.ADMITTED:
            conds.append(condition(RESERVED, True, "Held", f"pod {rsv.pod_name(name)} holds the VM's share"))
        else:
            conds.append(condition(RESERVED, False, view.state.value, view.message or "the reservation is missing"))

    # ------------------------------------------------------------------ power
    def _apply_power(
        self,
        run_strategy: str,
        observed: domains.Observed,
        action: str | None,
        events: list[Event],
        state: VMState,
        generation: int,
        grace: float,
        admit: Callable[[], None] = lambda: None,
        key: tuple[str, str] | None = None,
    ) -> float | None:
        dom = observed.domain
        assert dom is not None
        if state.stopping is not None:
            return self._continue_stop(dom, observed, events, state, admit)
        decision = decide(run_strategy, observed.power, observed.reason, action)
        if state.pending_start and decision.step == Step.NOTHING and observed.power not in _UP:
            if run_strategy == names.RunStrategy.HALTED:
                state.pending_start = False
            else:
                decision = Decision(Step.START, "restart: starting with its new reservation")
        if decision.warning:
            events.append(Event("Warning", "ActionRefused", decision.warning))
        if decision.step == Step.START:
            state.address_polls = 0
            failure = state.start_failure
            if failure is not None and time.monotonic() < failure.not_before:
                raise SpecProblem(FAILED, names.COND_READY, "StartFailed", failure.message)
            admit()  # never a start the node's books do not hold: raises while it waits
            self._take_start_slot(key)
            try:
                self._start(dom)
            except libvirt.libvirtError as exc:
                count = failure.count + 1 if failure else 1
                delay = min(10.0 * 2 ** (count - 1), START_BACKOFF_MAX)
                message = (
                    f"the domain failed to start (attempt {count}, next in {delay:g} s unless the spec "
                    f"changes): {exc.get_error_message()}"
                )
                state.start_failure = StartFailure(generation, count, time.monotonic() + delay, message)
                raise SpecProblem(FAILED, names.COND_READY, "StartFailed", message) from exc
            finally:
                if self.starts is not None and key is not None:
                    self.starts.release(key)
            state.start_failure = None
            state.pending_start = False
            events.append(Event("Normal", "Started", decision.reason))
        elif key is not None:
            self._leave_start_queue(*key)  # no start wanted (any more): out of the line
        if decision.step in (Step.STOP, Step.RESTART):
            state.stopping = Stopping(time.monotonic(), decision.step == Step.RESTART, grace)
            domains.request_shutdown(dom)
            events.append(Event("Normal", "Stopping", decision.reason))
            return 0.5
        return None

    def _start(self, dom: libvirt.virDomain) -> None:
        """Starts the domain on a connection of its own (LibvirtConnection.dedicated): a start under
        load takes seconds, and the shared connection's few concurrent calls are everybody's."""
        dedicated = getattr(self.conn, "dedicated", None)
        if dedicated is None:  # a bare virConnect (tests)
            domains.start(dom)
            return
        with dedicated() as side:
            domains.start(side.lookupByUUIDString(dom.UUIDString()))

    def _leave_start_queue(self, ns: str, name: str) -> None:
        if self.starts is not None:
            self.starts.leave((ns, name))

    def _take_start_slot(self, key: tuple[str, str] | None) -> None:
        """Returns holding a start slot; raises Queued (with the VM's place in line) while it waits."""
        if self.starts is None or key is None:
            return
        position = self.starts.try_acquire(key)
        if position:
            raise SpecProblem(PrintableStatus.STARTING, names.COND_READY, "Queued", self.starts.message(position),
                              requeue=QUEUE_RECHECK, warning=False, once=True)  # fmt: skip

    def _continue_stop(
        self,
        dom: libvirt.virDomain,
        observed: domains.Observed,
        events: list[Event],
        state: VMState,
        admit: Callable[[], None],
    ) -> float | None:
        pending = state.stopping
        assert pending is not None
        if observed.power in (Power.RUNNING, Power.PAUSED, Power.STOPPING):
            grace = pending.grace_seconds
            if time.monotonic() - pending.since < grace:
                return 0.5
            domains.destroy(dom)
            events.append(Event("Normal", "Destroyed", f"the guest did not shut down within {grace:g} s"))
        state.stopping = None
        events.append(Event("Normal", "Stopped", "the domain is shut off"))
        if pending.then_start:
            state.pending_start = True  # kept until the start happens (the reservation may be re-sized)
            admit()
            domains.start(dom)
            state.pending_start = False
            events.append(Event("Normal", "Started", "restarted"))
        return None

    # ------------------------------------------------------------------ delete
    def delete(self, body: Mapping[str, Any]) -> list[Event]:
        meta, spec = body["metadata"], body.get("spec") or {}
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        events: list[Event] = []
        conn = self.conn.get()
        with contextlib.suppress(domains.DomainConflict):
            dom = domains.find(conn, ns, name, uid)
            if dom is not None:
                # The guest gets its ACPI shutdown and its grace, as for a stop; then it is destroyed.
                # An operator stopping meanwhile keeps the finalizer: the next one finishes.
                grace = stop_grace_seconds(spec, self.settings.stop_grace_seconds)
                clean = domains.power_off(dom, grace, shutdown.stopping)
                shutdown.check(f"deleting {ns}/{name}")
                domains.undefine(dom)
                how = "after a clean shutdown" if clean else f"destroyed after {grace:g} s"
                events.append(Event("Normal", "Undefined", f"libvirt domain {dom.name()} removed ({how})"))
        if self.reservations is not None:
            self.reservations.release(ns, name)  # raises (kopf retries, the finalizer stays) when it cannot
        keep = spec.get("deletionPolicy") == "Retain"
        storage.remove_vm_storage(ns, name, self.settings.storage_root, keep=keep)
        events.append(
            Event(
                "Normal",
                "StorageRetained" if keep else "StorageRemoved",
                "disks and seed kept (deletionPolicy Retain)" if keep else "disks and seed removed",
            )
        )
        return events


def _hash_of(xml: str) -> str | None:
    return domains._spec_hash(xml)


def _ready_reason(status: Mapping[str, Any]) -> str | None:
    return next((c.get("reason") for c in status.get("conditions") or () if c.get("type") == names.COND_READY), None)


def _pending_action(meta: Mapping[str, Any], status: Mapping[str, Any]) -> tuple[str | None, str | None]:
    value = (meta.get("annotations") or {}).get(names.ANNOTATION_ACTION)
    if not value or value == status.get("lastActionRequest"):
        return None, None
    try:
        action, _ = names.parse_action_request(value)
    except ValueError as exc:
        raise SpecProblem(FAILED, names.COND_READY, "InvalidActionRequest", str(exc)) from exc
    return action, value


def _describe_resolution(expanded: templates.Expanded) -> str:
    parts = []
    if expanded.template:
        parts.append(f"template {expanded.template['name']}@{expanded.template['version']}")
    parts += [f"preset {p['name']}@{p['version']}" for p in expanded.presets]
    return "using " + ", ".join(parts) if parts else "no template"


def _interfaces(uid: str, spec: Mapping[str, Any], dom: libvirt.virDomain | None) -> list[dict[str, Any]]:
    # lease_addresses answers {} for a domain that is not running (or is being undefined right now);
    # asking isActive() first raced with a concurrent undefine and failed the pass.
    leases = domains.lease_addresses(dom) if dom is not None else {}
    out = []
    for net in spec.get("networks") or []:
        mac = (net.get("macAddress") or default_mac(uid, net["name"])).lower()
        entry: dict[str, Any] = {"name": net["name"], "macAddress": mac}
        if mac in leases:
            entry["ipAddress"] = leases[mac]
            entry["ipAddresses"] = [leases[mac]]
        out.append(entry)
    return out


def _live_resources(observed: domains.Observed) -> dict[str, Any] | None:
    if observed.domain is None or observed.power not in (Power.RUNNING, Power.PAUSED):
        return None
    try:
        return live_update.live_resources(observed.domain, observed.domain.XMLDesc(0))
    except libvirt.libvirtError:
        return None


def _status(
    old: Mapping[str, Any],
    base: Mapping[str, Any],
    printable: PrintableStatus,
    conds: list[dict[str, Any]],
    **fields: Any,
) -> dict[str, Any]:
    """The VM's new status: the old one with this pass's facts, conditions and printable status."""
    new = {
        **old,
        **base,
        "printableStatus": printable.value,
        "conditions": merge_conditions(old.get("conditions"), conds),
        **fields,
    }
    return {k: v for k, v in new.items() if v is not None}


def _dedupe(events: list[Event], old_status: Mapping[str, Any], new_printable: str) -> list[Event]:
    """A failure that persists is reported once, not on every resync."""
    if old_status.get("printableStatus") == new_printable:
        old = {(c.get("reason"), c.get("message")) for c in old_status.get("conditions") or []}
        return [e for e in events if (e.reason, e.message) not in old]
    return events


def newest_reservation(held: Mapping[str, Any] | None, live: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The reservation the start gate judges: what the watch shows now when it is the same pod as the
    one this pass holds (created early in the pass, typically admitted by the kubelet while the disks
    were made), so an admitted pod costs no fresh GET on the way to the start. A live pod of another
    uid is a predecessor whose deletion the watch has not shown yet: the held one stands."""
    if live is None:
        return held
    if held is None or (held.get("metadata") or {}).get("uid") == (live.get("metadata") or {}).get("uid"):
        return live
    return held


# Early reservation creates run here, beside their pass (a few at once: a burst's passes each ask one).
_EARLY = ThreadPoolExecutor(max_workers=4, thread_name_prefix="reserve-early")


def _held_pod(held: dict[str, Any]) -> Mapping[str, Any] | None:
    """The pass's reservation pod: the early create's answer once it is in (waited for here), else the
    one the pass started with."""
    early = held.pop("early", None)
    if early is not None:
        held["pod"] = early.result()
    return held["pod"]
