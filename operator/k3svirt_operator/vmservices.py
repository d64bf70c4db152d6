"""Carries out k3svirt_common.vmservice's plans: this node's EndpointSlice per Service that selects
VMs, and the firewall openings its ready endpoints need (vmfirewall.py)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ipaddress
import logging
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from typing import Any

import libvirt
from k3svirt_common import vmservice
from k3svirt_common.kube import Client
from k3svirt_common.kube import endpointslices as slices

from .vmfirewall import Firewall

log = logging.getLogger(__name__)


def nat_subnets(network_xml: str) -> list[ipaddress.IPv4Network]:
    """The IPv4 subnets of a libvirt network whose forward mode is nat (node-local addresses)."""
    root = ET.fromstring(network_xml)
    forward = root.find("forward")
    if forward is None or forward.get("mode", "nat") != "nat":
        return []
    out = []
    for ip in root.findall("ip"):
        if ip.get("family", "ipv4") != "ipv4" or not ip.get("address"):
            continue
        prefix = ip.get("prefix") or ip.get("netmask") or "24"
        with contextlib.suppress(ValueError):
            out.append(ipaddress.IPv4Network(f"{ip.get('address')}/{prefix}", strict=False))
    return out


class NodeLocal:
    """Is an address reachable only from this node? True for libvirt NAT networks VMs may join
    (their subnets, read from libvirt at most once a minute)."""

    def __init__(self, get_conn: Callable[[], libvirt.virConnect], networks: tuple[str, ...]) -> None:
        self._get_conn, self._networks = get_conn, networks
        self._subnets: list[ipaddress.IPv4Network] = []
        self._read_at = float("-inf")

    def refresh(self) -> None:
        if time.monotonic() - self._read_at < 60:
            return
        subnets = []
        for name in self._networks:
            try:
                subnets += nat_subnets(self._get_conn().networkLookupByName(name).XMLDesc(0))
            except (libvirt.libvirtError, ET.ParseError) as exc:
                log.warning("network not read", extra={"network": name, "error": str(exc)})
        self._subnets, self._read_at = subnets, time.monotonic()

    def __call__(self, ip: str) -> bool:
        addr = ipaddress.ip_address(ip)
        return any(addr in net for net in self._subnets)


class ServiceSync:
    """One loop for every Service that selects VMs (a kopf daemon per Service would put a finalizer
    of ours on each tenant's Service). Event handlers mark namespaces dirty; the loop plans and
    publishes them from kopf's indexes, and everything every resync (a Service whose annotation was
    removed has left the index: its slice is withdrawn)."""

    def __init__(self) -> None:
        self.indexes: tuple[Any, Any, Any, Any] | None = None  # services, VMs, slices, node names
        self.context = contextvars.copy_context()
        self.dirty: set[str] = set()
        self.everything = True
        self.wake = asyncio.Event()
        self.warned: dict[tuple[str, str], set[tuple[str, str]]] = {}

    def attach(self, services: Any, vms: Any, slices: Any, nodes: Any) -> None:
        """kopf hands its indexes to handlers only: the first event gives them to the loop (they are
        live views, kept current by kopf), and its context, without which kopf.event cannot post
        (kopf keeps its event queue in context variables of the handlers)."""
        if self.indexes is None:
            self.indexes = (services, vms, slices, nodes)
            self.context = contextvars.copy_context()
        self.wake.set()

    def post(self, poster: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        """Runs kopf.event (the `poster`) in the handlers' context."""
        self.context.run(poster, *args, **kwargs)

    def mark(self, namespace: str) -> None:
        self.dirty.add(namespace)
        self.wake.set()

    def take(self) -> tuple[set[str] | None, Any]:
        """The namespaces to sync now (None: all) and the indexes."""
        everything, dirty = self.everything, self.dirty
        self.everything, self.dirty = False, set()
        self.wake.clear()
        return (None if everything else dirty), self.indexes

    def resync(self) -> None:
        self.everything = True

    def new_warnings(self, key: tuple[str, str], warnings: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Each warning once while it lasts (not on every resync)."""
        old = self.warned.get(key, set())
        self.warned[key] = set(warnings)
        return [w for w in warnings if w not in old]


def service_ref(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the index keeps of a Service to post Events on it."""
    md = body.get("metadata") or {}
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {k: md.get(k) for k in ("name", "namespace", "uid")}}  # fmt: skip


class Publisher:
    """Writes a plan: the slice created, replaced or deleted, and the firewall told what to admit."""

    def __init__(self, api: Client, firewall: Firewall, node_local: NodeLocal) -> None:
        self.api, self.firewall, self.node_local = api, firewall, node_local

    def plan(self, svc: vmservice.ServiceView, vms: list[vmservice.VMView], node: str,
             single_node: bool) -> vmservice.Plan:  # fmt: skip
        self.node_local.refresh()
        return vmservice.plan(svc, vms, node=node, node_local=self.node_local, single_node=single_node)

    def publish(self, key: tuple[str, str], result: vmservice.Plan, current: Mapping[str, Any] | None) -> None:
        if result.slice is None:
            self.firewall.forget(key)
            if current is not None:
                slices.delete(self.api, key[0], current["metadata"]["name"])
                log.info("VM service endpoints removed", extra={"service": "/".join(key)})
            return
        if vmservice.differs(result.slice, current):
            slices.put(self.api, result.slice, current)
            log.info("VM service endpoints published", extra={"service": "/".join(key),
                     "endpoints": [e["addresses"][0] for e in result.slice["endpoints"]]})  # fmt: skip
        self.firewall.want(key, result.open_ports)

    def withdraw(self, key: tuple[str, str], current: Mapping[str, Any] | None) -> None:
        """The Service no longer selects VMs (annotation removed): its slice of ours goes."""
        self.firewall.forget(key)
        if current is not None:
            slices.delete(self.api, key[0], current["metadata"]["name"])
