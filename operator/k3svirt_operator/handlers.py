"""kopf wiring: thin handlers that hand VMs, templates and PCI devices to the pure/executor modules.

Each VirtualMachine owned by this node gets a daemon: a loop that reconciles on libvirt lifecycle
events, on spec/annotation changes and on a slow resync, so drift is repaired within a second and
nothing polls libvirt per VM. Finalizers are per node (k3svirt.io/node-<node>), so operators of
other nodes never strip ours.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kopf
import libvirt
from k3svirt_common import console_ticket, names, templates, vmservice
from k3svirt_common import reservation as rsv
from k3svirt_common.kube import ApiError, Client, ConfigError, KubeConfig, load_config

from . import accel as accel_mod
from . import (
    context,
    cpupin,
    cpupool,
    cputopo,
    image_cache,
    nodelimits,
    pci,
    placement,
    shutdown,
    snapshots,
    stats,
    usage,
    vanished,
    vmservices,
    vmstate,
    vmstatus,
)
from .executor import RetiringThreadPool
from .libvirt_conn import LibvirtConnection
from .reservations import Reservations
from .runtime import Runtime
from .snapshot_worker import SnapshotWorker
from .startqueue import StartQueue, StartQueueMetrics
from .template_status import TemplateStatus
from .vm_reconciler import Event, Result, VMReconciler
from .vmfirewall import Firewall

# A plain registry: kopf's default one imports the `kubernetes` package (~28 MiB) just to offer a
# login through it; the operator logs in with k3svirt_common.kube's configuration (login() below).
kopf.set_default_registry(kopf.OperatorRegistry())
log = logging.getLogger(__name__)
SETTINGS = context.SETTINGS
KUBE_CONFIG: KubeConfig | None = None
RT: Runtime | None = None
RECONCILER: VMReconciler | None = None
SNAPSHOTS: SnapshotWorker | None = None
MONITOR: tuple[Any, Any] | None = None
STARTS: StartQueue | None = None
CONSOLE: Any = None  # console.ConsoleServer when K3SVIRT_CONSOLE_KEY_FILE is set
USAGE: usage.UsageRecorder | None = None
CLAIMER: placement.Claimer | None = None
TEMPLATES: TemplateStatus | None = None
SERVICE_SYNC = vmservices.ServiceSync()
PASSTHROUGHS: kopf.Index | None = None  # the passthroughs index, as the first PCIPassthrough event handed it over


_rt = context.rt
NODE_LABELS = context.NODE_LABELS  # the same dict and event tuning_handlers reads
LABELS_READ = context.LABELS_READ


def owned(spec: Mapping[str, Any], status: Mapping[str, Any], **_: Any) -> bool:
    """This node runs the VM: named by spec.nodeName, claimed in status.node, or matched by selector.

    A VM matched only by selector is claimed (status.node, with an optimistic-concurrency write)
    before anything is done with it, so two nodes never both run it.
    """
    if spec.get("nodeName"):
        return spec["nodeName"] == SETTINGS.node_name
    if (status or {}).get("node"):
        return status["node"] == SETTINGS.node_name
    return all(NODE_LABELS.get(k) == v for k, v in (spec.get("nodeSelector") or {}).items())


async def _trim_heap() -> None:
    """Hands freed heap pages back to the kernel: bursts of reconciles (100 VMs at start-up) leave
    glibc holding tens of MiB that RSS would otherwise show forever."""
    import ctypes

    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return
    while await shutdown.pause(30):
        await asyncio.to_thread(trim, 0)


async def _prune_image_cache() -> None:
    """Garbage-collects the image cache: images no overlay uses and nobody asked for lately."""
    while await shutdown.pause(SETTINGS.image_cache_gc_seconds):
        try:
            await asyncio.to_thread(image_cache.prune_unused, SETTINGS.storage_root, (),
                                    SETTINGS.image_cache_idle_seconds)  # fmt: skip
        except Exception as exc:  # retried at the next round; VM work must not suffer
            log.warning("pruning the image cache failed", extra={"error": str(exc)})


async def _keep_reservations(reservations: Reservations) -> None:
    """The reservations' PriorityClass exists, and reservations whose VM is gone are removed (at start,
    then every resync): what a crash between a VM's deletion and its reservation's left behind."""
    while True:
        try:
            await asyncio.to_thread(reservations.ensure_priority_class)
            removed = await asyncio.to_thread(reservations.sweep)
            if removed:
                log.info("orphaned reservations removed", extra={"count": removed})
        except ApiError as exc:
            log.warning("reservation upkeep failed", extra={"error": str(exc)})
        if not await shutdown.pause(SETTINGS.resync_seconds * 2):
            return


async def _release_vanished_nodes() -> None:
    """Every resync: VMs and templates being deleted that wait for a node that left the cluster lose
    its finalizer (vanished.py)."""
    rt = _rt()
    while await shutdown.pause(SETTINGS.resync_seconds):
        try:
            known: set[str] = set()
            vms = await asyncio.to_thread(rt.deleting_objects, names.VM_PLURAL, known)
            inventories = await asyncio.to_thread(rt.list_objects, names.NODEPCIINVENTORY_PLURAL)
            known |= {i["metadata"]["name"] for i in inventories}
            templates = await asyncio.to_thread(rt.deleting_objects, names.VMTEMPLATE_PLURAL)
            for plural, objs in ((names.VM_PLURAL, vms), (names.VMTEMPLATE_PLURAL, templates)):
                released = await asyncio.to_thread(vanished.release, objs, SETTINGS.node_name, rt.node_vanished,
                                                   functools.partial(rt.patch_object, plural), known)  # fmt: skip
                if released:
                    log.info("finalizers of vanished nodes released", extra={"kind": plural, "objects": released})
            for node in await asyncio.to_thread(rt.abandoned_inventories, inventories):
                await asyncio.to_thread(rt.delete_object, names.NODEPCIINVENTORY_PLURAL, None, node)
                log.info("inventory of a vanished node removed", extra={"node": node})
        except ApiError as exc:
            log.warning("looking for objects of vanished nodes failed", extra={"error": str(exc)})


async def _refresh_node_labels() -> None:
    while True:
        try:
            labels = await asyncio.to_thread(_rt().node_labels)
        except ApiError as exc:
            log.warning("node labels not refreshed", extra={"error": str(exc)})
        else:
            new = {**labels, **SETTINGS.node_labels}
            changed = new != NODE_LABELS
            NODE_LABELS.clear()
            NODE_LABELS.update(new)
            LABELS_READ.set()
            if changed and CLAIMER is not None:  # VMs waiting for a selector this node matches now
                await asyncio.to_thread(CLAIMER.relabeled)
        if not await shutdown.pause(60):
            return


def _post(body: Any, events: list[Event]) -> None:
    for e in events:
        kopf.event(body, type=e.type, reason=e.reason, message=e.message[:1000])


def _kube_config() -> KubeConfig:
    """One reading of the credentials for both clients: kopf's (watches, events) and ours."""
    global KUBE_CONFIG
    if KUBE_CONFIG is None:
        try:
            KUBE_CONFIG = load_config()
        except ConfigError as exc:
            raise kopf.PermanentError(f"no Kubernetes credentials: {exc.message}") from exc
    return KUBE_CONFIG


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    cfg = _kube_config()
    token = cfg.token
    if cfg.token_file:  # re-read at every login: kopf logs in again after a 401 (rotated token)
        with open(cfg.token_file, encoding="utf-8") as fh:
            token = fh.read().strip()
    return kopf.ConnectionInfo(
        server=cfg.server,
        ca_path=cfg.ca_file,
        ca_data=cfg.ca_data,
        insecure=cfg.insecure or None,
        certificate_path=cfg.cert_file,
        certificate_data=cfg.cert_data,
        private_key_path=cfg.key_file,
        private_key_data=cfg.key_data,
        token=token,
        username=cfg.username,
        password=cfg.password,
        default_namespace=cfg.namespace,
    )


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    global RT, RECONCILER, MONITOR, STARTS, SNAPSHOTS, CONSOLE, USAGE, CLAIMER, TEMPLATES
    settings.persistence.finalizer = names.finalizer_for(SETTINGS.node_name)
    # Only the VMs this node runs reach kopf (placement.py); the Claimer below brings them there.
    settings.watching.field_selectors[names.GROUP, names.VM_PLURAL] = placement.watch_selector(SETTINGS.node_name)
    # Keep kopf's bookkeeping out of the user's metadata (GitOps tools would see drift there).
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf")
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(field="status.kopfDiffBase")
    settings.posting.level = logging.WARNING  # our own Events are posted explicitly
    settings.watching.server_timeout = 300
    settings.peering.standalone = True
    shutdown.install_signal_handlers(asyncio.get_running_loop())
    # Every VM pass (libvirt calls, qemu-img) and every status write runs in the loop's default
    # executor. asyncio's default has cpu_count + 4 threads (6 on a 2-core node): 100 VMs created at
    # once had their domains running for minutes while their status writes queued behind the other
    # VMs' passes (tests/robustness/test_load.py). The threads mostly wait on I/O. Idle ones end
    # (a burst grew the pool to 32 threads for good: executor.py).
    asyncio.get_running_loop().set_default_executor(
        RetiringThreadPool(max_workers=SETTINGS.worker_threads, thread_name_prefix="k3svirt")
    )
    if SETTINGS.aio_max_nr:
        await asyncio.to_thread(nodelimits.raise_aio_max_nr, SETTINGS.aio_max_nr)
    # Before any bind: a previous operator killed mid-bind may have left a device on no driver.
    await asyncio.to_thread(pci.recover_interrupted, SETTINGS.pci.sys_root)
    conn = LibvirtConnection(SETTINGS.libvirt_uri)
    raw = await asyncio.to_thread(conn.wait_connected, 60.0)
    detect = functools.partial(accel_mod.detect, forced=SETTINGS.accel, kernel_path=SETTINGS.probe_kernel)
    acc = await asyncio.to_thread(detect, raw, SETTINGS.storage_root)
    log.info(
        "operator starting", extra={"node": SETTINGS.node_name, "acceleration": acc.domain_type, "reason": acc.reason}
    )
    # Dedicated cores get whole L2 clusters only with the housekeeping CPUs on top (cputopo.py).
    try:
        advice = cpupin.housekeeping_advice(await asyncio.to_thread(cputopo.read), SETTINGS.housekeeping_cpus)
    except OSError as exc:  # no CPU topology in this /sys: nothing to advise
        advice = None
        log.info("no CPU topology", extra={"error": str(exc)})
    if advice:
        log.warning("dedicated cores will split L2 clusters", extra={"advice": advice})
    api = Client(_kube_config(), timeout=30.0, user_agent=f"k3svirt-operator/{SETTINGS.node_name}")
    RT = context.RT = Runtime(SETTINGS, conn, acc, api, asyncio.get_running_loop())
    reservations = Reservations(api, SETTINGS.node_name, emulated=acc.domain_type != "kvm",
                                image=SETTINGS.reservation_image) if SETTINGS.reservations else None  # fmt: skip
    # A burst of creates starts at most max_parallel_starts domains at once; the rest wait in line and
    # say so in status (startqueue.py). A freed slot wakes the next VMs' loops.
    STARTS = StartQueue(SETTINGS.max_parallel_starts, wake=RT.loops.poke_threadsafe)
    pool = cpupool.SharedPool(SETTINGS.node_roots.sys_root, Path(SETTINGS.kubelet_root_dir) if SETTINGS.kubelet_root_dir
                              else None) if SETTINGS.shared_cpu_pool else None  # fmt: skip
    RECONCILER = VMReconciler(SETTINGS, conn, acc, _get_template, RT.claims, reservations, STARTS, pool)
    SNAPSHOTS = SnapshotWorker(SETTINGS, conn, _get_template, RT.patch_status, _get_vm, RT.create_vm)
    conn.add_lifecycle_listener(_on_domain_event)
    conn.add_reconnect_listener(lambda: RT.loops.poke_all_threadsafe() if RT else None)
    # The sampler has its own connection: its round must not wait behind the VM passes' calls (libvirtd
    # serves a few calls per connection at once), nor they behind a slow round.
    stats_conn = LibvirtConnection(SETTINGS.libvirt_uri, events=False)
    MONITOR = stats.start_monitoring(stats_conn.get, node_name=SETTINGS.node_name, interval=SETTINGS.stats_interval,
                                     port=SETTINGS.metrics_port, host=SETTINGS.metrics_addr,
                                     extra=[StartQueueMetrics(STARTS)],
                                     full_every=SETTINGS.stats_full_every)  # fmt: skip
    if SETTINGS.console_key_file:
        from .console import ConsoleServer  # websockets is imported only by nodes that serve consoles

        key = console_ticket.load_key(SETTINGS.console_key_file)
        CONSOLE = ConsoleServer(key, conn.get, host=SETTINGS.metrics_addr, port=SETTINGS.console_port)
        await asyncio.to_thread(CONSOLE.start)
    publisher = vmservices.Publisher(api, Firewall(SETTINGS.node_name, SETTINGS.service_firewall),
                                     vmservices.NodeLocal(conn.get, SETTINGS.host_paths.nat_networks))  # fmt: skip
    USAGE = usage.UsageRecorder(api, SETTINGS.node_name, bucket_seconds=SETTINGS.usage_bucket_seconds,
                                retention=SETTINGS.usage_retention_buckets,
                                checkpoint_seconds=SETTINGS.usage_checkpoint_seconds)  # fmt: skip
    MONITOR[1].register(usage.UsageMetricsCollector(USAGE))
    CLAIMER = placement.Claimer(api, SETTINGS.node_name, lambda: dict(NODE_LABELS), RT.claim_vm)
    CLAIMER.start()
    TEMPLATES = TemplateStatus(_get_template, functools.partial(RT.list_objects, names.VMTEMPLATE_PLURAL),
                               RT.template_usage, RT.patch_status)  # fmt: skip
    asyncio.get_running_loop().create_task(TEMPLATES.run())
    asyncio.get_running_loop().create_task(_meter_usage(USAGE))
    asyncio.get_running_loop().create_task(_sync_vm_services(publisher))
    asyncio.get_running_loop().create_task(_publish_pci_inventory())
    asyncio.get_running_loop().create_task(_refresh_node_labels())
    asyncio.get_running_loop().create_task(_release_vanished_nodes())
    asyncio.get_running_loop().create_task(_trim_heap())
    asyncio.get_running_loop().create_task(_prune_image_cache())
    if reservations is not None:
        asyncio.get_running_loop().create_task(_keep_reservations(reservations))
    if pool is not None:
        POOL_WAKE[0] = asyncio.Event()
        asyncio.get_running_loop().create_task(_keep_shared_pool(pool, conn, POOL_WAKE[0]))


POOL_WAKE: list[asyncio.Event | None] = [None]  # set when a domain starts or stops: the pool is recomputed


async def _keep_shared_pool(pool: cpupool.SharedPool, conn: LibvirtConnection, wake: asyncio.Event) -> None:
    """The shared CPU pool (cpupool.py), recomputed when a domain starts or stops and every
    cpu_pool_seconds (Guaranteed pods come and go without a libvirt event); running ordinary VMs are
    re-pinned live when it changes (the periodic pass also repairs whatever drifted), and a changed
    pool wakes every VM loop so that their definitions follow."""
    rt, repair = _rt(), True
    while True:
        wake.clear()
        try:
            changed, moved = await asyncio.to_thread(pool.sync, conn.get(), rt.loops.__contains__, repair)
            if moved:
                log.info("VMs moved to the shared CPU pool", extra={"pool": pool.cpuset() or "all", "domains": moved})
            if changed:
                rt.loops.poke_all_threadsafe()
        except (libvirt.libvirtError, OSError) as exc:
            log.warning("shared CPU pool not synced", extra={"error": str(exc)})
        if not await shutdown.wait_for_event(wake, SETTINGS.cpu_pool_seconds):
            return
        repair = not wake.is_set()  # the periodic pass also repairs drift; an event's only follows a change


async def _meter_usage(recorder: usage.UsageRecorder) -> None:
    """Usage metering: every stats round feeds the meters (docs/metering.md). The records are
    restored first, so a restarted operator continues its buckets instead of starting new ones."""
    while True:
        try:
            restored = await asyncio.to_thread(recorder.restore)
            log.info("usage records restored", extra={"vms": restored})
            break
        except ApiError as exc:
            log.warning("usage records not read yet", extra={"error": str(exc)})
            if not await shutdown.pause(5):
                return
    while await shutdown.pause(SETTINGS.stats_interval):
        if MONITOR is not None and RT is not None:
            snap = MONITOR[0].snapshot()
            try:
                await asyncio.to_thread(recorder.round, snap.vms, snap.monotonic, snap.wall, RT.loops.__contains__)
            except Exception:  # metering must not stop for a surprise; the next round tries again
                log.exception("usage metering round failed")


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    shutdown.request_stop()  # whatever stopped kopf, worker threads must not keep the process alive
    if CLAIMER is not None:
        CLAIMER.stop()
    if USAGE is not None:
        await asyncio.to_thread(USAGE.flush)  # the open buckets' baselines, as of now
    if MONITOR is not None:
        MONITOR[1].stop()
        MONITOR[0].stop()
    if CONSOLE is not None:
        await asyncio.to_thread(CONSOLE.stop)


_get_template = context.get_template


def _get_vm(namespace: str, name: str) -> Mapping[str, Any] | None:
    return _rt().get_object(names.VM_PLURAL, namespace, name)


def _on_domain_event(domain: str, event: int, _detail: int) -> None:
    wake = POOL_WAKE[0]
    if wake is not None and event in (libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_STOPPED) and RT:
        RT.loop.call_soon_threadsafe(wake.set)
    parsed = names.parse_domain_name(domain)
    if parsed is not None and RT is not None:
        RT.loops.poke_threadsafe(parsed)


def _user_status(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The status without kopf's bookkeeping: what our writes are compared with."""
    return {k: v for k, v in (obj.get("status") or {}).items() if not k.startswith("kopf")}


async def _write_claims(claims: list[pci.StatusPatch]) -> None:
    for pcip, status in claims:
        await asyncio.to_thread(_rt().patch_status, names.PCIPASSTHROUGH_PLURAL, None, pcip, status)


# ---------------------------------------------------------------------- indices
@kopf.index(names.GROUP, names.VERSION, names.PCIPASSTHROUGH_PLURAL)
def passthroughs(body: kopf.Body, name: str, **_: Any) -> dict[str, dict[str, Any]]:
    """Every PCIPassthrough by name: what a VM's hostDevices resolve against."""
    return {name: {k: copy.deepcopy(dict(body.get(k) or {})) for k in ("metadata", "spec", "status")}}


@kopf.index(names.GROUP, names.VERSION, names.PCIPASSTHROUGH_PLURAL)
def claimed_addresses(
    spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, name: str, **_: Any
) -> dict[str | None, tuple[str, str]]:
    """(address, PCIPassthrough) of the devices that live PCIPassthroughs hold, by node."""
    if status.get("address") and not meta.get("deletionTimestamp"):
        return {spec.get("nodeName"): (status["address"], name)}
    return {}


def _claimed_by_others(index: kopf.Index, name: str) -> dict[str, str]:
    return {addr: holder for addr, holder in index.get(SETTINGS.node_name, ()) if holder != name}


# ---------------------------------------------------------------------- VirtualMachine
@kopf.on.event(names.GROUP, names.VERSION, names.VM_PLURAL)
async def vm_changed(body: kopf.Body, namespace: str, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """Wakes the VM's loop when the user changed its spec or asked for an action."""
    if RT is None:
        return
    state = vmstate.of(memo)
    if (body.metadata.get("deletionTimestamp") or type == "DELETED") and body.metadata.get("uid"):
        image_cache.withdraw(body.metadata["uid"])  # at once: a download only this VM wanted stops now
    if state.changed((body.metadata.get("generation"), body.metadata.annotations.get(names.ANNOTATION_ACTION))) \
            or type == "DELETED":  # fmt: skip
        state.wake.set()
        if TEMPLATES is not None:
            for template in templates.referenced_names(body.spec):  # their status counts the VMs using them
                TEMPLATES.mark(namespace, template)


@kopf.index("", "v1", "pods", labels={rsv.LABEL_NODE: SETTINGS.node_name})
def reservation_pods(body: kopf.Body, namespace: str, name: str, labels: kopf.Labels,
                     **_: Any) -> dict[tuple[str, str], dict[str, Any]]:  # fmt: skip
    """This node's reservation pods by (namespace, VM): what each VM pass reads instead of a GET."""
    vm = labels.get(rsv.LABEL_VM)
    if not vm or name != rsv.pod_name(vm):
        return {}
    return {(namespace, vm): {k: copy.deepcopy(dict(body.get(k) or {})) for k in ("metadata", "spec", "status")}}


@kopf.on.event("", "v1", "pods", labels={rsv.LABEL_NODE: SETTINGS.node_name})
def reservation_changed(namespace: str, labels: kopf.Labels, **_: Any) -> None:
    """Placed, admitted, failed or gone: the VM's loop decides again (a VM waiting for room starts)."""
    vm = labels.get(rsv.LABEL_VM)
    if vm and RT is not None:
        RT.loops.poke_threadsafe((namespace, vm))


def _reservation_of(index: kopf.Index, namespace: str, name: str) -> dict[str, Any] | None:
    return next(iter(index.get((namespace, name), ())), None)


def _live_reservation(index: kopf.Index, namespace: str, name: str) -> dict[str, Any] | None:
    """The index read from the pass's worker thread while the event loop may update it: a read that
    meets a change in flight answers None (the gate then reads the pod from the API server)."""
    try:
        return _reservation_of(index, namespace, name)
    except RuntimeError:  # changed size during iteration
        return None


# ---------------------------------------------------------------------- snapshots and restores
def _kept(body: kopf.Body) -> dict[str, Any]:
    """What the VM's loop needs of a snapshot or restore (and kopf.event needs to post on it)."""
    keep = {k: copy.deepcopy(dict(body.get(k) or {})) for k in ("metadata", "spec", "status")}
    return {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"), **keep}


@kopf.index(names.GROUP, names.VERSION, names.VMSNAPSHOT_PLURAL)
def snapshots_by_vm(body: kopf.Body, namespace: str, spec: kopf.Spec, **_: Any) -> dict[tuple[str, str], Any]:
    """Every VirtualMachineSnapshot by (namespace, VM): the VM's loop takes them and sweeps deleted ones."""
    return {(namespace, spec.get("vmName")): _kept(body)}


@kopf.index(names.GROUP, names.VERSION, names.VMSNAPSHOT_PLURAL)
def snapshot_vms(namespace: str, name: str, spec: kopf.Spec, **_: Any) -> dict[tuple[str, str], str]:
    """The VM of each snapshot: which loop a restore wakes."""
    return {(namespace, name): spec.get("vmName")}


@kopf.index(names.GROUP, names.VERSION, names.VMRESTORE_PLURAL)
def restores_by_snapshot(body: kopf.Body, namespace: str, spec: kopf.Spec, **_: Any) -> dict[tuple[str, str], Any]:
    return {(namespace, spec.get("snapshotName")): _kept(body)}


@kopf.on.event(names.GROUP, names.VERSION, names.VMSNAPSHOT_PLURAL)
def snapshot_changed(namespace: str, spec: kopf.Spec, **_: Any) -> None:
    """Created (take it), deleted (return its space): the VM's loop does the work."""
    if RT is not None and spec.get("vmName"):
        RT.loops.poke_threadsafe((namespace, spec["vmName"]))


@kopf.on.event(names.GROUP, names.VERSION, names.VMRESTORE_PLURAL)
def restore_changed(namespace: str, spec: kopf.Spec, snapshot_vms: kopf.Index, **_: Any) -> None:
    vm = next(iter(snapshot_vms.get((namespace, spec.get("snapshotName")), ())), None)
    if RT is not None and vm:
        RT.loops.poke_threadsafe((namespace, vm))


async def _snapshot_work(snapshot: dict[str, Any], state: vmstate.VMState, snaps_index: kopf.Index,
                         restores_index: kopf.Index) -> None:  # fmt: skip
    """Snapshots and restores of this VM, done before its reconcile pass (never during one)."""
    worker = SNAPSHOTS
    if worker is None:
        return
    ns, name = snapshot["metadata"]["namespace"], snapshot["metadata"]["name"]
    snaps = list(snaps_index.get((ns, name), ()))
    restores = [r for s in snaps for r in restores_index.get((ns, s["metadata"]["name"]), ())]
    posted = await asyncio.to_thread(worker.process, snapshot, snaps, restores, state.stopping is not None)
    for p in posted:
        kopf.event(p.obj, type=p.event.type, reason=p.event.reason, message=p.event.message[:1000])


@kopf.daemon(names.GROUP, names.VERSION, names.VM_PLURAL, when=owned, cancellation_timeout=30)
async def vm_loop(body: kopf.Body, namespace: str, name: str, memo: kopf.Memo, passthroughs: kopf.Index,
                  reservation_pods: kopf.Index, snapshots_by_vm: kopf.Index, restores_by_snapshot: kopf.Index,
                  **_: Any) -> None:  # fmt: skip
    rt, reconciler, state = _rt(), RECONCILER, vmstate.of(memo)
    assert reconciler is not None
    began = time.monotonic()
    if not await _claimed(body, namespace, name):
        return  # another node's operator claimed it first
    claim: float | None = round(time.monotonic() - began, 4)  # the first pass's debug line says it
    state.last_summary = float("-inf")
    backoff = API_RETRY_MIN
    with rt.loops.running((namespace, name), state):
        try:
            while not body.metadata.get("deletionTimestamp"):
                state.wake.clear()  # before the pass: an event that arrives during it wakes the next one
                snapshot, devices = state.view(body), [o for store in passthroughs.values() for o in store]
                try:
                    await _snapshot_work(snapshot, state, snapshots_by_vm, restores_by_snapshot)
                    pod = _reservation_of(reservation_pods, namespace, name)
                    live = functools.partial(_live_reservation, reservation_pods, namespace, name)
                    began = time.monotonic()
                    result = await asyncio.to_thread(reconciler.reconcile, snapshot, state, devices, pod, live)
                    reconciled = time.monotonic()
                    await _write_claims(result.claims)
                    status = _with_monitoring(result.status, _user_status(snapshot), state, namespace, name)
                    if status != _user_status(snapshot):
                        await asyncio.to_thread(rt.patch_status, names.VM_PLURAL, namespace, name, status)
                        state.written = status
                    if log.isEnabledFor(logging.DEBUG):
                        log.debug("VM pass", extra={"vm": f"{namespace}/{name}", "laps": result.laps,
                                  "waited": round(reconciled - began - sum(result.laps.values()), 4),
                                  "write": round(time.monotonic() - reconciled, 4), "claim": claim})  # fmt: skip
                    claim = None
                except ApiError as exc:
                    if not api_unavailable(exc):
                        raise
                    # The API server is away (restart, outage): the pass is idempotent, so retry it soon
                    # rather than let kopf restart the daemon a minute later.
                    log.warning("API server unavailable; VM pass retried soon",
                                extra={"vm": f"{namespace}/{name}", "retryIn": backoff, "error": str(exc)})  # fmt: skip
                    await state.sleep(backoff)
                    backoff = min(backoff * 2, API_RETRY_MAX)
                    continue
                backoff = API_RETRY_MIN
                _post(body, result.events)
                await state.sleep(_next_pass(result))
        finally:  # deleted, cancelled or failed while waiting to start: out of the start queue
            if STARTS is not None:
                STARTS.leave((namespace, name))


API_RETRY_MIN, API_RETRY_MAX = 1.0, 10.0


def api_unavailable(exc: ApiError) -> bool:
    """The API server did not answer, or answered that it cannot serve now (restarting, overloaded)."""
    return not exc.answered or exc.status in (429, 500, 502, 503, 504)


async def _claimed(body: kopf.Body, namespace: str, name: str) -> bool:
    """A VM matched by nodeSelector only is claimed (status.node) before anything is done with it."""
    if body.spec.get("nodeName") or (body.status or {}).get("node"):
        return True
    owner = await asyncio.to_thread(_rt().claim_vm, namespace, name, body.metadata["resourceVersion"])
    return owner == SETTINGS.node_name


def _with_monitoring(status: dict[str, Any], previous: Mapping[str, Any], state: vmstate.VMState,
                     namespace: str, name: str) -> dict[str, Any]:  # fmt: skip
    """Adds status.monitoring. Fresh figures are looked at every status_summary_seconds and written
    when they say something new (stats.worth_writing: a material move, or the shown ones are
    status_summary_max_age_seconds old), or for free when the rest of the status is written anyway."""
    shown = previous.get("monitoring") or {}
    if MONITOR is not None:
        figures = MONITOR[0].get(namespace, name)
        if state.summary_due(SETTINGS.status_summary_seconds, bool(shown.get("updatedAt")), figures is not None):
            endpoint = MONITOR[1].stats_url(namespace, name, host=SETTINGS.node_ip)
            summary = {**(stats.summarize(figures) or {}), **MONITOR[0].pacing_status()}
            fresh = vmstatus.monitoring(shown, summary, endpoint)
            rest_changes = {k: v for k, v in status.items() if k != "monitoring"} != {
                k: v for k, v in previous.items() if k != "monitoring"
            }
            if rest_changes or stats.worth_writing(shown, fresh, time.time(), SETTINGS.status_summary_max_age_seconds):
                status["monitoring"] = fresh
                return status
    if "monitoring" in previous:
        status["monitoring"] = previous["monitoring"]
    return status


def _next_pass(result: Result) -> float:
    timeout = result.requeue if result.requeue is not None else SETTINGS.resync_seconds
    return min(timeout, SETTINGS.status_summary_seconds) if MONITOR is not None else timeout


@kopf.on.delete(names.GROUP, names.VERSION, names.VM_PLURAL, when=owned)
async def vm_deleted(body: kopf.Body, namespace: str, name: str, passthroughs: kopf.Index,
                     snapshots_by_vm: kopf.Index, **_: Any) -> None:  # fmt: skip
    reconciler = RECONCILER
    assert reconciler is not None
    events = await asyncio.to_thread(reconciler.delete, copy.deepcopy(dict(body)))
    # Names first: the index changes under the loop as the deletions' events arrive.
    for snap_name in snapshots.deleted_with_vm(body.spec, list(snapshots_by_vm.get((namespace, name), ()))):
        await asyncio.to_thread(_rt().delete_object, names.VMSNAPSHOT_PLURAL, namespace, snap_name)
    devices = [o for store in passthroughs.values() for o in store]
    await _write_claims(_rt().claims.release(devices, {"namespace": namespace, "name": name}))
    _post(body, events)


# ---------------------------------------------------------------------- VMTemplate
@kopf.on.event(names.GROUP, names.VERSION, names.VMTEMPLATE_PLURAL)
async def template_changed(body: kopf.Body, namespace: str, name: str, type: str | None, **_: Any) -> None:
    """Keeps status (latest version, users) current; every node computes the same answer."""
    if TEMPLATES is not None and type != "DELETED":
        TEMPLATES.mark(namespace, name, copy.deepcopy(dict(body)))


@kopf.on.delete(names.GROUP, names.VERSION, names.VMTEMPLATE_PLURAL)
def template_deleted(body: kopf.Body, namespace: str, **_: Any) -> None:
    """Holds the deletion (like PVC protection) while VMs still reference the template."""
    # A fresh list, not the index: a destructive decision must not rest on a watch that may lag
    # behind a VM created a moment ago.
    problem = templates.check_delete(dict(body), _rt().template_usage(namespace))
    if problem:
        kopf.event(body, type="Warning", reason="InUse", message=problem)
        raise kopf.TemporaryError(problem, delay=15)


# ---------------------------------------------------------------------- PCI passthrough
async def _publish_pci_inventory() -> None:
    """Keeps NodePCIInventory/<node> current so the gateway lists devices without touching nodes."""
    while True:
        try:
            host = SETTINGS.pci
            status = await asyncio.to_thread(pci.node_inventory_status, host.sys_root, host.proc_root, host.denylist,
                                             ids=pci.load_pci_ids(host.ids_file))  # fmt: skip
            await asyncio.to_thread(_rt().ensure_node_inventory, SETTINGS.node_name)
            await asyncio.to_thread(_rt().patch_status, names.NODEPCIINVENTORY_PLURAL, None, SETTINGS.node_name, status)
        except Exception as exc:  # keep publishing later; the VM work must not suffer
            log.warning("publishing the PCI inventory failed", extra={"error": str(exc)})
        try:
            # Again every round: a kubelet that re-registered may have zeroed the capacity. The devices
            # come from the passthroughs index (kept current by the watch); a list only until the first
            # PCIPassthrough event has handed the index over (none may exist: then the list is empty).
            if PASSTHROUGHS is not None:
                pcips = [obj for store in PASSTHROUGHS.values() for obj in store]
            else:
                pcips = await asyncio.to_thread(_rt().list_objects, names.PCIPASSTHROUGH_PLURAL)
            await asyncio.to_thread(_rt().publish_device_capacity, pcips)
        except Exception as exc:
            log.warning("publishing the device capacity failed", extra={"error": str(exc)})
        if not await shutdown.pause(SETTINGS.pci_inventory_seconds):
            return


@kopf.on.event(names.GROUP, names.VERSION, names.PCIPASSTHROUGH_PLURAL)
async def passthrough_seen(passthroughs: kopf.Index, **_: Any) -> None:
    """Bound, assigned, released, failed or gone: the Node's device capacity follows at once."""
    global PASSTHROUGHS
    PASSTHROUGHS = passthroughs  # for the periodic publication (_publish_pci_inventory)
    if RT is None:
        return
    pcips = [obj for store in passthroughs.values() for obj in store]
    try:
        await asyncio.to_thread(_rt().publish_device_capacity, pcips)
    except ApiError as exc:  # the periodic publication repairs it
        log.warning("publishing the device capacity failed", extra={"error": str(exc)})


def on_this_node(spec: Mapping[str, Any], **_: Any) -> bool:
    return spec.get("nodeName") == SETTINGS.node_name


def _reconcile_passthrough(body: Mapping[str, Any], claimed: dict[str, str]) -> dict[str, Any]:
    meta, host = body["metadata"], SETTINGS.pci
    return pci.reconcile_passthrough(body.get("spec") or {}, body.get("status") or {},
                                     generation=meta.get("generation"), claimed=claimed, sys_root=host.sys_root,
                                     proc_root=host.proc_root, denylist=host.denylist,
                                     ids=pci.load_pci_ids(host.ids_file))  # fmt: skip


@kopf.on.resume(names.GROUP, names.VERSION, names.PCIPASSTHROUGH_PLURAL, when=on_this_node)
@kopf.on.create(names.GROUP, names.VERSION, names.PCIPASSTHROUGH_PLURAL, when=on_this_node)
@kopf.on.update(names.GROUP, names.VERSION, names.PCIPASSTHROUGH_PLURAL, when=on_this_node, field="spec")
@kopf.timer(names.GROUP, names.VERSION, names.PCIPASSTHROUGH_PLURAL, when=on_this_node, interval=30, idle=10)
async def passthrough_changed(body: kopf.Body, name: str, claimed_addresses: kopf.Index, **_: Any) -> None:
    """Binds the device (and its IOMMU group) to vfio-pci, or says in status why it refuses."""
    claimed = _claimed_by_others(claimed_addresses, name)
    status = await asyncio.to_thread(_reconcile_passthrough, copy.deepcopy(dict(body)), claimed)
    await _write_phase_status(body, names.PCIPASSTHROUGH_PLURAL, name, status, ignore=("lastTransitionTime",))


async def _write_phase_status(body: kopf.Body, plural: str, name: str, status: dict[str, Any],
                              ignore: tuple[str, ...] = ()) -> None:  # fmt: skip
    """Writes a cluster-scoped object's status when it changed (`ignore`: keys that alone are no
    change), and one Event when its phase did (its Ready condition's reason and message; Warning for
    Failed)."""
    old = _user_status(body)
    if {k: v for k, v in status.items() if k not in ignore} == old:
        return
    await asyncio.to_thread(_rt().patch_status, plural, None, name, status)
    if status.get("phase") != old.get("phase"):
        ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
        kopf.event(body, type="Warning" if status.get("phase") == pci.PHASE_FAILED else "Normal",
                   reason=ready.get("reason") or str(status.get("phase")),
                   message=(ready.get("message") or "")[:1000])  # fmt: skip


@kopf.on.delete(names.GROUP, names.VERSION, names.PCIPASSTHROUGH_PLURAL, when=on_this_node)
async def passthrough_deleted(body: kopf.Body, name: str, claimed_addresses: kopf.Index, **_: Any) -> None:
    """Gives the device back to its host driver; waits while a VM still uses it."""
    try:
        await asyncio.to_thread(
            pci.release_passthrough,
            body.get("status") or {},
            spec=body.get("spec") or {},
            sys_root=SETTINGS.pci.sys_root,
            claimed=_claimed_by_others(claimed_addresses, name),
        )
    except pci.BindError as exc:
        kopf.event(body, type="Warning", reason=exc.reason, message=str(exc)[:1000])
        if exc.reason == "StillAssigned":
            raise kopf.TemporaryError(str(exc), delay=10) from exc
        raise kopf.PermanentError(str(exc)) from exc


# ---------------------------------------------------------------------- SR-IOV virtual functions
def _vf_children(index: kopf.Index, policy: str) -> list[dict[str, Any]]:
    label = f"{names.GROUP}/vf-policy"
    return [o for store in index.values() for o in store if (o["metadata"].get("labels") or {}).get(label) == policy]


def _held(children: list[dict[str, Any]]) -> list[str]:
    return [o["metadata"]["name"] for o in children if (o.get("status") or {}).get("assignedTo")]


def _reconcile_vf_policy(body: Mapping[str, Any], children: list[dict[str, Any]]) -> dict[str, Any]:
    """Gives the PF the VFs the policy asks for and offers each through its own PCIPassthrough."""
    meta, spec, host = body["metadata"], body.get("spec") or {}, SETTINGS.pci
    address = spec.get("physicalFunction", "")
    pf = pci.read_device(host.sys_root, address)
    result = pci.sriov.plan(spec, pf, held=_held(children))
    if not isinstance(result, pci.sriov.Refusal):
        result = pci.sriov.apply(host.sys_root, address, result)
    if not isinstance(result, pci.sriov.Refusal):
        wanted = {k["metadata"]["name"]: k for k in pci.sriov.children(body, result)}
        for child in wanted.values():
            _rt().create_object(names.PCIPASSTHROUGH_PLURAL, None, child)
        for child in children:
            if child["metadata"]["name"] not in wanted:  # VFs that no longer exist
                _rt().delete_object(names.PCIPASSTHROUGH_PLURAL, None, child["metadata"]["name"])
        pf = pci.read_device(host.sys_root, address)
    return pci.sriov.status(body.get("status") or {}, meta.get("generation"), pf, result, meta["name"])


@kopf.on.resume(names.GROUP, names.VERSION, names.PCIVF_POLICY_PLURAL, when=on_this_node)
@kopf.on.create(names.GROUP, names.VERSION, names.PCIVF_POLICY_PLURAL, when=on_this_node)
@kopf.on.update(names.GROUP, names.VERSION, names.PCIVF_POLICY_PLURAL, when=on_this_node, field="spec")
@kopf.timer(names.GROUP, names.VERSION, names.PCIVF_POLICY_PLURAL, when=on_this_node, interval=60, idle=10)
async def vf_policy_changed(body: kopf.Body, name: str, passthroughs: kopf.Index, **_: Any) -> None:
    children = _vf_children(passthroughs, name)
    status = await asyncio.to_thread(_reconcile_vf_policy, copy.deepcopy(dict(body)), children)
    await _write_phase_status(body, names.PCIVF_POLICY_PLURAL, name, status)


@kopf.on.delete(names.GROUP, names.VERSION, names.PCIVF_POLICY_PLURAL, when=on_this_node)
async def vf_policy_deleted(body: kopf.Body, name: str, passthroughs: kopf.Index, **_: Any) -> None:
    """VFs go back only once no VM holds one: their PCIPassthroughs are deleted (each gives its VF
    back to the host driver), then the PF's sriov_numvfs is set to 0."""
    children = _vf_children(passthroughs, name)
    held = _held(children)
    if held:
        raise kopf.TemporaryError(f"VMs hold {', '.join(held)}: stop them or remove the devices first", delay=10)
    for child in children:
        await asyncio.to_thread(_rt().delete_object, names.PCIPASSTHROUGH_PLURAL, None, child["metadata"]["name"])
    if children:
        raise kopf.TemporaryError("waiting for the VFs' PCIPassthroughs to give them back", delay=2)
    address = (body.get("spec") or {}).get("physicalFunction", "")
    result = await asyncio.to_thread(pci.sriov.apply, SETTINGS.pci.sys_root, address, pci.sriov.VFPlan([0]))
    if isinstance(result, pci.sriov.Refusal):  # said, not retried forever: the policy's VFs are offered no more
        kopf.event(body, type="Warning", reason=result.reason, message=result.message[:1000])


# ---------------------------------------------------------------------- Services that select VMs
# docs/services.md. Events of Services, VMs and our slices mark their namespace; one loop
# (_sync_vm_services) publishes this node's EndpointSlice per Service with the k3svirt.io/vm-selector
# annotation from these indexes (k3svirt_common.vmservice.plan decides).
OUR_SLICES = {vmservice.LABEL_MANAGED_BY: vmservice.MANAGED_BY, vmservice.LABEL_NODE: SETTINGS.node_name}


@kopf.index("", "v1", "services", annotations={vmservice.ANNOTATION_VM_SELECTOR: kopf.PRESENT})
def vm_services(body: kopf.Body, namespace: str, name: str, **_: Any) -> dict[str, Any]:
    """Services that select VMs, by namespace: (what plan needs, what an Event needs)."""
    view = vmservice.service_view(body)
    return {namespace: (view, vmservices.service_ref(body))} if view else {}


@kopf.index(names.GROUP, names.VERSION, names.VM_PLURAL)
def vm_endpoints(body: kopf.Body, namespace: str, **_: Any) -> dict[str, vmservice.VMView]:
    """What Services need of each VM (labels, node, address, readiness), by namespace."""
    return {namespace: vmservice.vm_view(body)}


@kopf.index("discovery.k8s.io", "v1", "endpointslices", labels=OUR_SLICES)
def vm_slices(body: kopf.Body, namespace: str, labels: kopf.Labels, **_: Any) -> dict[str, dict]:
    """This node's published slices, by namespace."""
    return {namespace: copy.deepcopy(dict(body))} if labels.get(vmservice.LABEL_SERVICE_NAME) else {}


@kopf.index("", "v1", "nodes")
def node_names(name: str, **_: Any) -> dict[None, str]:
    return {None: name}


@kopf.on.event(names.GROUP, names.VERSION, names.VM_PLURAL)
@kopf.on.event("", "v1", "services")
@kopf.on.event("discovery.k8s.io", "v1", "endpointslices", labels=OUR_SLICES)
async def vm_service_inputs_changed(namespace: str, vm_services: kopf.Index, vm_endpoints: kopf.Index,
                                    vm_slices: kopf.Index, node_names: kopf.Index, **_: Any) -> None:  # fmt: skip
    """async: runs in the event loop, where the sync loop's asyncio.Event may be set (kopf runs a
    plain def in a worker thread)."""
    SERVICE_SYNC.attach(vm_services, vm_endpoints, vm_slices, node_names)
    SERVICE_SYNC.mark(namespace)


async def _sync_vm_services(publisher: vmservices.Publisher) -> None:
    last_full = float("-inf")
    while not shutdown.KOPF_STOP.is_set():
        if asyncio.get_running_loop().time() - last_full >= SETTINGS.resync_seconds:
            SERVICE_SYNC.resync()
            last_full = asyncio.get_running_loop().time()
        namespaces, indexes = SERVICE_SYNC.take()
        if indexes is not None:
            try:
                await _sync_namespaces(publisher, namespaces, *indexes)
            except ApiError as exc:  # a conflict or an outage: everything again soon
                log.warning("VM service endpoints not written", extra={"error": str(exc)})
                SERVICE_SYNC.resync()
                await shutdown.pause(2.0)
                continue
            except Exception:  # a surprise must not end Service publishing for the whole node
                log.exception("VM service sync failed")
                SERVICE_SYNC.resync()
                await shutdown.pause(5.0)
                continue
        if not await shutdown.wait_for_event(SERVICE_SYNC.wake, SETTINGS.resync_seconds):
            return  # the operator stops: kopf waits 5 s for loops that do not end by themselves


async def _sync_namespaces(publisher: vmservices.Publisher, namespaces: set[str] | None, services: kopf.Index,
                           vms: kopf.Index, slices: kopf.Index, nodes: kopf.Index) -> None:  # fmt: skip
    single = not ({n for store in nodes.values() for n in store} - {SETTINGS.node_name})
    for ns in sorted(set(services) | set(slices) if namespaces is None else namespaces):
        current = {s["metadata"]["labels"][vmservice.LABEL_SERVICE_NAME]: s for s in slices.get(ns, ())}
        wanted = {view.name: (view, ref) for view, ref in services.get(ns, ())}
        for name, (view, ref) in wanted.items():
            result = await asyncio.to_thread(publisher.plan, view, list(vms.get(ns, ())), SETTINGS.node_name, single)
            await asyncio.to_thread(publisher.publish, (ns, name), result, current.get(name))
            for reason, message in SERVICE_SYNC.new_warnings((ns, name), result.warnings):
                SERVICE_SYNC.post(kopf.event, ref, type="Warning", reason=reason, message=message[:1000])
        for name in set(current) - set(wanted):  # the annotation was removed (or the Service deleted)
            await asyncio.to_thread(publisher.withdraw, (ns, name), current[name])


# Registers the NodeTuning handlers (after the registry above is set); it shares context, not this module.
from . import tuning_handlers  # noqa: E402,F401
