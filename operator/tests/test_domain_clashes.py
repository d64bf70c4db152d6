"""Shared host resources between VMs, checked against real libvirt before a define: a MAC address
already answered for by another domain, a volume another domain opens read-write."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from k3svirt_operator import domains


def domain_xml(name: str, uid: str, mac: str, disk: Path, readonly: bool = False) -> str:
    ro = "<readonly/>" if readonly else ""
    return f"""<domain type='qemu'><name>{name}</name><uuid>{uid}</uuid><memory unit='MiB'>64</memory>
<os><type arch='x86_64'>hvm</type></os><devices>
<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{disk}'/>
<target dev='vda' bus='virtio'/>{ro}</disk>
<interface type='network'><mac address='{mac}'/><source network='default'/><model type='virtio'/></interface>
</devices></domain>"""


@pytest.fixture
def other_domain(libvirt_conn, tmp_path: Path):
    disk = tmp_path / "shared.raw"
    disk.write_bytes(b"\0" * 1024 * 1024)
    uid = str(uuid.uuid4())
    dom = libvirt_conn.defineXML(domain_xml(f"clash-a-{uid[:6]}", uid, "52:54:00:aa:bb:01", disk))
    yield disk, dom
    dom.undefine()


def test_a_mac_or_a_writable_volume_held_by_another_domain_is_reported(libvirt_conn, other_domain):
    disk, dom = other_domain
    me = str(uuid.uuid4())
    both = domains.clashes(libvirt_conn, me, domain_xml("clash-b", me, "52:54:00:AA:BB:01", disk))
    assert both == [f"MAC address 52:54:00:aa:bb:01 is used by domain {dom.name()}",
                    f"{disk} is opened read-write by domain {dom.name()}"]  # fmt: skip
    readonly = domains.clashes(libvirt_conn, me, domain_xml("clash-b", me, "52:54:00:aa:bb:02", disk, True))
    assert readonly == []  # a read-only attachment of the same file is fine
    # the domain itself (same uid) never clashes with its own earlier definition
    assert domains.clashes(libvirt_conn, dom.UUIDString(), dom.XMLDesc(0)) == []


def test_two_vms_defined_at_once_cannot_both_take_one_mac(libvirt_conn, tmp_path: Path):
    """kopf reconciles VMs in parallel threads: check and define happen under one lock, or both VMs
    pass the check before either is defined (the hostile batch of tests/robustness saw it)."""
    import threading

    mac = "52:54:00:" + uuid.uuid4().bytes[:3].hex(":")
    uids = [str(uuid.uuid4()) for _ in range(6)]
    results: dict[str, object] = {}

    def define(uid: str) -> None:
        disk = tmp_path / f"{uid}.raw"
        disk.write_bytes(b"\0" * 4096)
        results[uid] = domains.define_unless_clashing(libvirt_conn, uid, domain_xml(f"race-{uid[:8]}", uid, mac, disk))

    threads = [threading.Thread(target=define, args=(u,)) for u in uids]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        defined = [dom for dom, _ in results.values() if dom is not None]
        assert len(defined) == 1, f"{len(defined)} domains took MAC {mac}"
        assert all(any(mac in s for s in shared) for dom, shared in results.values() if dom is None)
    finally:
        for dom, _ in results.values():
            if dom is not None:
                dom.undefine()
