"""libvirt side of a VM: observe a domain's power state and define/start/stop/undefine it."""

from __future__ import annotations

import contextlib
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass

import libvirt
from k3svirt_common import names

from . import cpupool
from .lifecycle import Power, ShutoffReason

_STATE = {
    libvirt.VIR_DOMAIN_RUNNING: Power.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: Power.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: Power.PAUSED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: Power.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: Power.STOPPING,
    libvirt.VIR_DOMAIN_SHUTOFF: Power.SHUTOFF,
    libvirt.VIR_DOMAIN_CRASHED: Power.CRASHED,
}
_SHUTOFF_REASON = {
    libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN: ShutoffReason.SHUTDOWN,
    libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED: ShutoffReason.DESTROYED,
    libvirt.VIR_DOMAIN_SHUTOFF_CRASHED: ShutoffReason.CRASHED,
    libvirt.VIR_DOMAIN_SHUTOFF_FAILED: ShutoffReason.FAILED,
    libvirt.VIR_DOMAIN_SHUTOFF_UNKNOWN: ShutoffReason.NONE,
}


class DomainConflict(RuntimeError):
    """A domain with the VM's name exists but belongs to something else."""


@dataclass(frozen=True)
class Observed:
    domain: libvirt.virDomain | None
    power: Power
    reason: ShutoffReason
    running_spec_hash: str | None  # what the running guest was started with
    defined_spec_hash: str | None  # what the next start will use
    defined_cpuset: frozenset[int] | None = None  # its <vcpu cpuset> (the shared CPU pool, cpupool.py)


def _spec_hash(xml: str) -> str | None:
    el = ET.fromstring(xml).find(f"metadata/{{{names.XML_NAMESPACE}}}vm")
    return None if el is None else el.get("specHash")


def find(conn: libvirt.virConnect, namespace: str, name: str, uid: str) -> libvirt.virDomain | None:
    """The VM's domain, found by UUID (= the VM's uid), so a restarted operator adopts it."""
    try:
        return conn.lookupByUUIDString(uid)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
            raise
    with contextlib.suppress(libvirt.libvirtError):
        other = conn.lookupByName(names.domain_name(namespace, name))
        raise DomainConflict(
            f"a libvirt domain named {other.name()} already exists with UUID "
            f"{other.UUIDString()}, not this VM's uid {uid}: remove it or rename the VM"
        )
    return None


def observe(conn: libvirt.virConnect, namespace: str, name: str, uid: str) -> Observed:
    dom = find(conn, namespace, name, uid)
    if dom is None:
        return Observed(None, Power.ABSENT, ShutoffReason.NONE, None, None)
    state, reason = dom.state()
    power = _STATE.get(state, Power.SHUTOFF)
    shutoff = _SHUTOFF_REASON.get(reason, ShutoffReason.OTHER) if power == Power.SHUTOFF else ShutoffReason.NONE
    running_hash = _spec_hash(dom.XMLDesc(0)) if power != Power.SHUTOFF else None
    defined = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    return Observed(dom, power, shutoff, running_hash, _spec_hash(defined), cpupool.vcpu_cpuset(defined))


def _claims(xml: str) -> tuple[set[str], set[str]]:
    """(MAC addresses, disk sources opened read-write) of a domain definition."""
    root = ET.fromstring(xml)
    macs = {m.get("address", "").lower() for m in root.findall("devices/interface/mac") if m.get("address")}
    writable = set()
    for disk in root.findall("devices/disk"):
        if disk.get("device") == "cdrom" or disk.find("readonly") is not None or disk.find("shareable") is not None:
            continue
        src = disk.find("source")
        path = None if src is None else (src.get("file") or src.get("dev"))
        if path:
            writable.add(path)
    return macs, writable


def clashes(conn: libvirt.virConnect, uid: str, xml: str) -> list[str]:
    """What the new definition would share with another domain on this node: a MAC address (two guests
    answering for one address) or a disk opened read-write by both (corruption). Checked at define."""
    macs, writable = _claims(xml)
    if not macs and not writable:
        return []
    out = []
    for other in conn.listAllDomains(0):
        if other.UUIDString() == uid:
            continue
        try:
            their_macs, their_disks = _claims(other.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        except (libvirt.libvirtError, ET.ParseError):
            continue
        out += [f"MAC address {m} is used by domain {other.name()}" for m in sorted(macs & their_macs)]
        out += [f"{d} is opened read-write by domain {other.name()}" for d in sorted(writable & their_disks)]
    return out


def define(conn: libvirt.virConnect, xml: str) -> libvirt.virDomain:
    return conn.defineXML(xml)


# kopf reconciles VMs in parallel threads: without one lock around check and define, two VMs naming
# the same MAC or read-write volume both passed clashes() before either was defined, and both were.
_DEFINE_LOCK = threading.Lock()


def define_unless_clashing(conn: libvirt.virConnect, uid: str, xml: str) -> tuple[libvirt.virDomain | None, list[str]]:
    """(domain, []) once defined, or (None, clashes) when the definition would share a host resource."""
    with _DEFINE_LOCK:
        shared = clashes(conn, uid, xml)
        if shared:
            return None, shared
        return define(conn, xml), []


def start(dom: libvirt.virDomain) -> None:
    dom.create()


def request_shutdown(dom: libvirt.virDomain) -> None:
    """ACPI power button; a guest without ACPI support ignores it (destroy follows after the grace)."""
    with contextlib.suppress(libvirt.libvirtError):
        dom.shutdown()


def power_off(dom: libvirt.virDomain, grace_seconds: float, should_stop: Callable[[], bool]) -> bool:
    """ACPI shutdown, waiting up to ``grace_seconds`` for the guest to power off, then destroy.
    True when the guest shut down by itself. Blocks the calling (worker) thread while it waits;
    ``should_stop`` ends the wait early (the operator is stopping: the caller decides what then)."""
    with contextlib.suppress(libvirt.libvirtError):
        if not dom.isActive():
            return True
    request_shutdown(dom)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline and not should_stop():
        try:
            if not dom.isActive():
                return True
        except libvirt.libvirtError:
            return True  # gone already
        time.sleep(0.25)
    destroy(dom)
    return False


def grow_disk(dom: libvirt.virDomain, path: str, size: int) -> None:
    """Grows a running domain's disk (the one whose source is `path`) to `size` bytes: QEMU resizes
    the image and the guest's virtio disk sees the new capacity at once."""
    root = ET.fromstring(dom.XMLDesc(0))
    for disk in root.iterfind("devices/disk"):
        source, target = disk.find("source"), disk.find("target")
        if source is not None and target is not None and source.get("file") == path:
            dom.blockResize(target.get("dev"), size, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
            return
    raise libvirt.libvirtError(f"no disk of the running domain has the source {path}")


def destroy(dom: libvirt.virDomain) -> None:
    try:
        dom.destroy()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:  # already off
            raise


def undefine(dom: libvirt.virDomain) -> None:
    flags = libvirt.VIR_DOMAIN_UNDEFINE_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    flags |= getattr(libvirt, "VIR_DOMAIN_UNDEFINE_TPM", 0)
    with contextlib.suppress(libvirt.libvirtError):
        dom.undefineFlags(flags)


def lease_addresses(dom: libvirt.virDomain) -> dict[str, str]:
    """MAC -> IPv4 from the DHCP leases of libvirt's networks, else (bridged interfaces, whose DHCP
    server libvirt does not run) from the host's ARP table: what the guest itself answered from.
    Empty when unknown."""
    out: dict[str, str] = {}
    for source in (libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE, libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP):
        try:
            ifaces = dom.interfaceAddresses(source, 0) or {}
        except libvirt.libvirtError:
            continue
        for info in ifaces.values():
            for addr in info.get("addrs") or []:
                if addr.get("type") == libvirt.VIR_IP_ADDR_TYPE_IPV4:
                    out.setdefault((info.get("hwaddr") or "").lower(), addr["addr"])
    return out
