"""Operator settings, read once from the environment (the chart sets them; defaults suit one node)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from .image_fetch import FetchPolicy
from .storage import SpaceRules


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
    image_fetch: FetchPolicy = FetchPolicy()
    space: SpaceRules = SpaceRules()
    image_cache_gc_seconds: float = 3600.0
    image_cache_idle_seconds: float = 86400.0
    worker_threads: int = 32
    aio_max_nr: int = 1 << 20

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ.get
        labels = dict(item.split("=", 1) for item in env("K3SVIRT_NODE_LABELS", "").split(",") if "=" in item)
        return cls(
            node_name=env("K3SVIRT_NODE_NAME") or socket.gethostname(),
            node_ip=env("K3SVIRT_NODE_IP", "127.0.0.1"),
            node_labels=labels,
            libvirt_uri=env("LIBVIRT_DEFAULT_URI", "qemu:///system"),
            storage_root=Path(env("K3SVIRT_STORAGE_ROOT", "/var/lib/k3svirt")),
            metrics_port=int(env("K3SVIRT_METRICS_PORT", "9470")),
            # The node endpoint (stats, /metrics) answers on the node's own address only, not on
            # every interface (it has no authentication; the gateway reaches it at node_ip).
            metrics_addr=env("K3SVIRT_METRICS_ADDR") or env("K3SVIRT_NODE_IP", "127.0.0.1"),
            # How long a guest gets to shut down on ACPI power-off before it is destroyed.
            stop_grace_seconds=float(env("K3SVIRT_STOP_GRACE_SECONDS", "30")),
            # Safety-net re-check of every VM; lifecycle events make repairs immediate.
            resync_seconds=float(env("K3SVIRT_RESYNC_SECONDS", "30")),
            status_summary_seconds=float(env("K3SVIRT_STATUS_SUMMARY_SECONDS", "30")),
            pci_inventory_seconds=float(env("K3SVIRT_PCI_INVENTORY_SECONDS", "60")),
            # Limits and address rules for image downloads (image_fetch.py).
            image_fetch=FetchPolicy.from_env(os.environ),
            space=SpaceRules.from_env(os.environ),
            # Cached base images that no overlay uses and nobody asked for in a day are removed.
            image_cache_gc_seconds=float(env("K3SVIRT_IMAGE_CACHE_GC_SECONDS", "3600")),
            image_cache_idle_seconds=float(env("K3SVIRT_IMAGE_CACHE_IDLE_SECONDS", "86400")),
            # Threads for VM passes and Kubernetes writes (they mostly wait on libvirt and the API server).
            worker_threads=int(env("K3SVIRT_WORKER_THREADS", "32")),
            # fs.aio-max-nr the node is raised to (nodelimits.py); 0 leaves it alone.
            aio_max_nr=int(env("K3SVIRT_AIO_MAX_NR", str(1 << 20))),
        )
