"""The operator's libvirt connections: a dedicated one per domain start, a quiet one for the sampler."""

from __future__ import annotations

import uuid
from pathlib import Path

import libvirt
import pytest
from guest import domain_xml, find_kernel
from k3svirt_operator.libvirt_conn import LibvirtConnection


def test_a_dedicated_connection_sees_the_domain_and_is_closed_after(libvirt_uri: str, tmp_path: Path) -> None:
    shared = LibvirtConnection(libvirt_uri)
    kernel, _ = find_kernel()
    name = f"k3svirt-unittest-dedicated-{uuid.uuid4().hex[:8]}"
    dom = shared.get().defineXML(domain_xml(name, kernel, kernel, network=None))  # defined, never started
    try:
        with shared.dedicated() as side:
            assert side is not shared.get()
            assert side.lookupByUUIDString(dom.UUIDString()).name() == name
        with pytest.raises(libvirt.libvirtError):
            side.lookupByUUIDString(dom.UUIDString())  # closed when the block ends
        quiet = LibvirtConnection(libvirt_uri, events=False)
        assert quiet.get().lookupByName(name).UUIDString() == dom.UUIDString()
        quiet.close()
    finally:
        dom.undefine()
        shared.close()
