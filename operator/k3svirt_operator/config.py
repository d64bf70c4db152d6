"""Operator settings, read once from the environment (the chart sets them; defaults suit one node).

The one place of the operator that reads os.environ: every module gets its settings passed in
(``Settings`` fields, or the policy objects built here), so a setting has one name, one default and
one parser, and a test sets what it needs without touching the process environment.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .hostpaths import DEFAULT_IMAGE_DIRS, DEFAULT_KERNEL_DIRS, DEFAULT_VOLUME_DIRS, HostPaths
from .image_fetch import FetchPolicy
from .pci.safety import load_denylist
from .storage import DEFAULT_STORAGE_ROOT, QemuOwner, SpaceRules

log = logging.getLogger(__name__)
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")  # a namespace name


@dataclass(frozen=True)
class PciHost:
    """Where the PCI code reads the host (the DaemonSet mounts the host's trees) and what it refuses."""

    sys_root: Path = Path("/sys")  # K3SVIRT_SYSFS_ROOT
    proc_root: Path = Path("/proc")  # K3SVIRT_PROC_ROOT
    ids_file: str | None = None  # K3SVIRT_PCI_IDS, looked up before the distribution's pci.ids
    denylist: tuple[str, ...] = ()  # K3SVIRT_PCI_DENYLIST + the file K3SVIRT_PCI_DENYLIST_FILE


@dataclass(frozen=True)
class NodeRoots:
    """Where the node's own counters and tunables are read and written: free hugepages before a start
    (hugepages.py), NodeTuning's KSM/THP/swappiness/IO-scheduler settings (tuning/). Fixture trees in
    tests; apart from PciHost's roots, which tests point at PCI fixtures."""

    sys_root: Path = Path("/sys")  # K3SVIRT_NODE_SYSFS_ROOT
    proc_root: Path = Path("/proc")  # K3SVIRT_NODE_PROC_ROOT


@dataclass(frozen=True)
class Settings:
    node_name: str
    node_ip: str
    node_labels: dict[str, str]
    libvirt_uri: str
    storage_root: Path
    metrics_port: int
    metrics_addr: str
    stop_grace_seconds: float
    resync_seconds: float
    status_summary_seconds: float
    pci_inventory_seconds: float
    abandoned_after_seconds: float
    image_fetch: FetchPolicy = FetchPolicy()
    space: SpaceRules = SpaceRules()
    host_paths: HostPaths = HostPaths()
    qemu_owner: QemuOwner = QemuOwner()
    pci: PciHost = PciHost()
    node_roots: NodeRoots = NodeRoots()
    # status.monitoring is rewritten unchanged once it is this old (else only on a material move):
    # readers see figures at most this stale, and the API server is spared a write per VM per check.
    status_summary_max_age_seconds: float = 300.0
    image_cache_gc_seconds: float = 3600.0
    image_cache_idle_seconds: float = 86400.0
    stats_interval: float = 2.0
    # K3SVIRT_STATS_FULL_EVERY: every how many stats rounds memory, disks and vCPUs are read too (they
    # cost QEMU a QMP exchange per VM; the rounds between read state, CPU and network only):
    # 5 = every 10 s at the default 2 s interval (docs/monitoring.md). 1 = every round.
    stats_full_every: int = 5
    accel: str = "auto"  # K3SVIRT_ACCEL: auto (probe), kvm or qemu (forced)
    probe_kernel: str = ""  # K3SVIRT_PROBE_KERNEL: a kernel to probe KVM with, before the host's own
    log_level: str = "INFO"
    liveness_endpoint: str | None = None
    # K3SVIRT_HOUSEKEEPING_CPUS: the node's housekeeping CPUs (the kubelet's reservedSystemCPUs), where
    # the emulator threads of VMs with dedicated cores run; "" = the CPUs their reservation does not own.
    housekeeping_cpus: str = ""
    # The shared CPU pool (cpupool.py): VMs without dedicated cores run on the CPUs nobody holds
    # exclusively. K3SVIRT_KUBELET_ROOT_DIR: the kubelet's --root-dir, whose cpu_manager_state names the
    # Guaranteed pods' exclusive CPUs ("" = not read); K3SVIRT_SHARED_CPU_POOL=off leaves VMs unconfined.
    shared_cpu_pool: bool = True
    kubelet_root_dir: str = "/var/lib/kubelet"
    cpu_pool_seconds: float = 10.0  # how often the pool is recomputed besides on domain starts and stops
    # Reservation pods hold each VM's CPU and memory in kube-scheduler's and the kubelet's books
    # (docs/accounting.md). Off only for operators on machines without a kubelet (development).
    reservations: bool = True
    # The reservation's one container: a pause image the node has (pulled never), e.g. its sandbox image.
    reservation_image: str = "localhost/k3svirt/pause:3.10"
    worker_threads: int = 32
    aio_max_nr: int = 1 << 20
    # Domain starts at once (startqueue.py); the others wait in line with their position in status.
    # Starts overlap well (they wait on libvirtd and QEMU's start-up): on 2 cores 10 at once finished
    # in 14.5 s, 4 at a time in 35 s (bench/README.md), so the line is for bursts, not for the CPUs.
    # 20 = libvirtd's own max_workers (Debian default): the line never holds back what the daemon
    # would serve, as 20 bare `virsh create` at once get 20 workers.
    max_parallel_starts: int = 20
    # Under emulation, QEMU's translation cache per guest (MiB); 0 = QEMU's default (1 GiB, mostly resident).
    tcg_tb_cache_mib: int = 32
    # Serial consoles over WebSocket (console.py), on metrics_addr: off unless the key file is set.
    console_key_file: str | None = None
    console_port: int = 9471
    # Services that select VMs (vmservices.py): admit Service traffic into the VM networks with an
    # iptables chain of this node's own (off only where another firewall does it).
    service_firewall: bool = True
    # Usage metering (metering.py, usage.py; docs/metering.md): bucket length, completed buckets kept
    # per VM (35 days of hours), and how often the open bucket is checkpointed.
    usage_bucket_seconds: int = 3600
    usage_retention_buckets: int = 840
    usage_checkpoint_seconds: float = 60.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        source = os.environ if environ is None else environ
        env = source.get
        storage_root = env("K3SVIRT_STORAGE_ROOT") or DEFAULT_STORAGE_ROOT
        host_paths = _host_paths(source, storage_root)
        labels = dict(item.split("=", 1) for item in env("K3SVIRT_NODE_LABELS", "").split(",") if "=" in item)
        return cls(
            node_name=env("K3SVIRT_NODE_NAME") or socket.gethostname(),
            node_ip=env("K3SVIRT_NODE_IP", "127.0.0.1"),
            node_labels=labels,
            libvirt_uri=env("LIBVIRT_DEFAULT_URI", "qemu:///system"),
            storage_root=Path(storage_root),
            metrics_port=int(env("K3SVIRT_METRICS_PORT", "9470")),
            # The node endpoint (stats, /metrics) answers on the node's own address only, not on
            # every interface (it has no authentication; the gateway reaches it at node_ip).
            metrics_addr=env("K3SVIRT_METRICS_ADDR") or env("K3SVIRT_NODE_IP", "127.0.0.1"),
            # How long a guest gets to shut down on ACPI power-off before it is destroyed.
            stop_grace_seconds=float(env("K3SVIRT_STOP_GRACE_SECONDS", "30")),
            # Safety-net re-check of every VM; lifecycle events make repairs immediate.
            resync_seconds=float(env("K3SVIRT_RESYNC_SECONDS", "30")),
            status_summary_seconds=float(env("K3SVIRT_STATUS_SUMMARY_SECONDS", "30")),
            status_summary_max_age_seconds=float(env("K3SVIRT_STATUS_SUMMARY_MAX_AGE_SECONDS", "300")),
            pci_inventory_seconds=float(env("K3SVIRT_PCI_INVENTORY_SECONDS", "60")),
            # A node without a Node object whose operator has not refreshed its inventory this long
            # has left the cluster (vanished.py): its finalizers and inventory are released.
            abandoned_after_seconds=float(env("K3SVIRT_ABANDONED_AFTER_SECONDS", "3600")),
            # Limits and address rules for image downloads (image_fetch.py).
            image_fetch=_fetch_policy(source, host_paths.image_dirs),
            space=_space_rules(source),
            host_paths=host_paths,
            qemu_owner=QemuOwner(env("K3SVIRT_QEMU_USER", "libvirt-qemu"), env("K3SVIRT_QEMU_GROUP", "kvm")),
            pci=_pci_host(source),
            node_roots=NodeRoots(
                sys_root=Path(env("K3SVIRT_NODE_SYSFS_ROOT", "") or "/sys"),
                proc_root=Path(env("K3SVIRT_NODE_PROC_ROOT", "") or "/proc"),
            ),
            # Cached base images that no overlay uses and nobody asked for in a day are removed.
            image_cache_gc_seconds=float(env("K3SVIRT_IMAGE_CACHE_GC_SECONDS", "3600")),
            image_cache_idle_seconds=float(env("K3SVIRT_IMAGE_CACHE_IDLE_SECONDS", "86400")),
            stats_interval=_positive_float(source, "K3SVIRT_STATS_INTERVAL", 2.0),
            stats_full_every=_positive_int(source, "K3SVIRT_STATS_FULL_EVERY", 5),
            accel=env("K3SVIRT_ACCEL", "auto"),
            probe_kernel=env("K3SVIRT_PROBE_KERNEL", ""),
            log_level=env("K3SVIRT_LOG_LEVEL", "INFO").upper(),
            liveness_endpoint=env("K3SVIRT_LIVENESS") or None,
            housekeeping_cpus=_cpuset(source, "K3SVIRT_HOUSEKEEPING_CPUS"),
            shared_cpu_pool=env("K3SVIRT_SHARED_CPU_POOL", "on").strip().lower() not in ("off", "false", "0", "no"),
            kubelet_root_dir=env("K3SVIRT_KUBELET_ROOT_DIR", "/var/lib/kubelet"),
            cpu_pool_seconds=_positive_float(source, "K3SVIRT_CPU_POOL_SECONDS", 10.0),
            reservations=env("K3SVIRT_RESERVATIONS", "on").strip().lower() not in ("off", "false", "0", "no"),
            reservation_image=env("K3SVIRT_RESERVATION_IMAGE") or "localhost/k3svirt/pause:3.10",
            # Threads for VM passes and Kubernetes writes (they mostly wait on libvirt and the API server).
            worker_threads=int(env("K3SVIRT_WORKER_THREADS", "32")),
            # fs.aio-max-nr the node is raised to (nodelimits.py); 0 leaves it alone.
            aio_max_nr=int(env("K3SVIRT_AIO_MAX_NR", str(1 << 20))),
            max_parallel_starts=_positive_int(source, "K3SVIRT_MAX_PARALLEL_STARTS", 20),
            tcg_tb_cache_mib=int(env("K3SVIRT_TCG_TB_CACHE_MIB", "32")),
            # The console ticket key shared with the gateway (the mounted Secret k3svirt-console-key).
            console_key_file=env("K3SVIRT_CONSOLE_KEY_FILE") or None,
            console_port=int(env("K3SVIRT_CONSOLE_PORT", "9471")),
            service_firewall=env("K3SVIRT_SERVICE_FIREWALL", "on").strip().lower() not in ("off", "false", "0", "no"),
            usage_bucket_seconds=int(_positive_float(source, "K3SVIRT_USAGE_BUCKET_SECONDS", 3600.0)),
            usage_retention_buckets=int(_positive_float(source, "K3SVIRT_USAGE_RETENTION_BUCKETS", 840.0)),
            usage_checkpoint_seconds=_positive_float(source, "K3SVIRT_USAGE_CHECKPOINT_SECONDS", 60.0),
        )

    def console_endpoint(self, namespace: str, name: str) -> str | None:
        """The VM's console URL on this node (status.consoleEndpoint), None with consoles off."""
        if not self.console_key_file:
            return None
        host = f"[{self.node_ip}]" if ":" in self.node_ip else self.node_ip
        return f"ws://{host}:{self.console_port}/console/{namespace}/{name}"


def _positive_float(env: Mapping[str, str], name: str, default: float) -> float:
    """A tuning knob: a bad value is logged and the default kept (the operator still starts)."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        log.warning("ignoring invalid %s", name, extra={"value": raw})
        return default
    return value if value > 0 else default


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    return max(1, int(_positive_float(env, name, float(default))))


def _cpuset(env: Mapping[str, str], name: str) -> str:
    """A host cpuset ("6-7", "0,2-3"); a malformed one is logged and left out ("": the operator's
    fallback), so a typo never reaches libvirt or the topology checks."""
    raw = (env.get(name) or "").strip()
    parts = raw.split(",") if raw else []
    for part in parts:
        lo, sep, hi = part.partition("-")
        if not (lo.isdigit() and (hi.isdigit() or not sep) and len(lo) <= 4 and len(hi) <= 4
                and int(lo) <= int(hi or lo) <= 8191):  # fmt: skip
            log.warning("ignoring invalid %s", name, extra={"value": raw})
            return ""
    return raw


def _colon_list(env: Mapping[str, str], name: str, default: str) -> tuple[str, ...]:
    return tuple(item for item in env.get(name, default).split(":") if item)


def _volume_grants(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """K3SVIRT_VOLUME_DIRS entries NS=PATH: PATH (resolved) for namespace NS only."""
    out = []
    for item in _colon_list(env, "K3SVIRT_VOLUME_DIRS", DEFAULT_VOLUME_DIRS):
        ns, sep, path = item.partition("=")
        if not sep:
            continue
        if not _LABEL.match(ns) or not path.startswith("/"):
            log.warning("ignoring invalid K3SVIRT_VOLUME_DIRS entry", extra={"value": item})
            continue
        out.append((ns, os.path.realpath(path)))
    return tuple(out)


def _host_paths(env: Mapping[str, str], storage_root: str) -> HostPaths:
    def dirs(name: str, default: str) -> tuple[str, ...]:
        # The defaults follow the storage root, so a node with K3SVIRT_STORAGE_ROOT elsewhere keeps
        # its own guest kernels allowed (and only those).
        default = default.replace(DEFAULT_STORAGE_ROOT + "/", storage_root.rstrip("/") + "/")
        return tuple(os.path.realpath(d) for d in _colon_list(env, name, default) if "=" not in d)

    return HostPaths(
        kernel_dirs=dirs("K3SVIRT_KERNEL_DIRS", DEFAULT_KERNEL_DIRS),
        volume_dirs=dirs("K3SVIRT_VOLUME_DIRS", DEFAULT_VOLUME_DIRS),
        volume_grants=_volume_grants(env),
        image_dirs=dirs("K3SVIRT_IMAGE_DIRS", DEFAULT_IMAGE_DIRS),
        bridges=_colon_list(env, "K3SVIRT_BRIDGES", ""),
        nat_networks=_colon_list(env, "K3SVIRT_NAT_NETWORKS", "default"),
    )


def _fetch_policy(env: Mapping[str, str], image_dirs: tuple[str, ...]) -> FetchPolicy:
    d = FetchPolicy()
    return FetchPolicy(
        max_bytes=int(env.get("K3SVIRT_IMAGE_MAX_BYTES") or d.max_bytes),
        deadline_seconds=float(env.get("K3SVIRT_IMAGE_DEADLINE_SECONDS") or d.deadline_seconds),
        allow_loopback=(env.get("K3SVIRT_IMAGE_ALLOW_LOOPBACK") or "").lower() in ("1", "true", "yes"),
        image_dirs=image_dirs,
        reserve_bytes=_space_rules(env).reserve_bytes,  # one reserve for disks and downloads
    )


def _space_rules(env: Mapping[str, str]) -> SpaceRules:
    d = SpaceRules()
    return SpaceRules(
        max_disk_bytes=int(env.get("K3SVIRT_DISK_MAX_BYTES") or d.max_disk_bytes),
        reserve_bytes=int(env.get("K3SVIRT_STORAGE_RESERVE_BYTES") or d.reserve_bytes),
    )


def _pci_host(env: Mapping[str, str]) -> PciHost:
    return PciHost(
        sys_root=Path(env.get("K3SVIRT_SYSFS_ROOT") or "/sys"),
        proc_root=Path(env.get("K3SVIRT_PROC_ROOT") or "/proc"),
        ids_file=env.get("K3SVIRT_PCI_IDS") or None,
        denylist=load_denylist(env),
    )
