"""Spec changes a running guest takes without a restart: memory through the virtio balloon (up to
spec.memory.maxSize) and vCPU hot-plug (up to spec.cpu.maxVcpus).

    plan = live_plan(running_xml, built_xml)     # pure: None unless only live-capable fields changed
    apply(dom, plan)                             # libvirt: balloon target, vCPU count, live metadata

A plan exists only when the running domain's live shape (domain_xml.live_shape_hash: every domain
field except memory.size and cpu.sockets under their maxima) equals the new definition's. Anything
else stays a RestartRequired change. After the libvirt calls, the running domain's metadata carries
the new specHash, so RestartRequired clears; a call the guest or QEMU refuses raises LiveUpdateError
and the change waits for the next restart (the condition says why).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

import libvirt
from k3svirt_common import names

_VM = f"metadata/{{{names.XML_NAMESPACE}}}vm"


class LiveUpdateError(RuntimeError):
    """libvirt refused a live change; the message names it."""


@dataclass(frozen=True)
class LivePlan:
    memory_kib: int | None  # new balloon target, None: unchanged
    vcpus: int | None  # new vCPU count, None: unchanged
    metadata: dict[str, str]  # the attributes of the new definition's <k3svirt:vm> element


def _vm_meta(root: ET.Element) -> ET.Element | None:
    return root.find(_VM)


def _int(root: ET.Element, path: str, attr: str | None = None) -> int | None:
    el = root.find(path)
    if el is None:
        return None
    raw = el.get(attr) if attr else el.text
    return int(raw) if raw and raw.strip().isdigit() else None


def live_plan(running_xml: str, built_xml: str) -> LivePlan | None:
    running, built = ET.fromstring(running_xml), ET.fromstring(built_xml)
    old, new = _vm_meta(running), _vm_meta(built)
    if old is None or new is None or not old.get("liveShape") or old.get("liveShape") != new.get("liveShape"):
        return None
    if old.get("specHash") == new.get("specHash"):
        return None
    memory = _int(built, "currentMemory")
    vcpus = _int(built, "vcpu", "current") or _int(built, "vcpu")
    now_memory = _int(running, "currentMemory")
    now_vcpus = _int(running, "vcpu", "current") or _int(running, "vcpu")
    return LivePlan(
        memory if memory is not None and memory != now_memory else None,
        vcpus if vcpus is not None and vcpus != now_vcpus else None,
        dict(new.attrib),
    )


def _metadata_element(attrs: dict[str, str]) -> str:
    """The element as libvirt's setMetadata wants it: unprefixed (libvirt adds prefix and namespace)."""
    el = ET.Element("vm", attrs)
    return ET.tostring(el, encoding="unicode")


def apply(dom: libvirt.virDomain, plan: LivePlan) -> list[str]:
    """Carry the plan out on the running domain; returns what was changed (for the Event)."""
    done: list[str] = []
    live = libvirt.VIR_DOMAIN_AFFECT_LIVE
    try:
        if plan.vcpus is not None:
            dom.setVcpusFlags(plan.vcpus, live)
            done.append(f"vCPUs {plan.vcpus}")
        if plan.memory_kib is not None:
            dom.setMemoryFlags(plan.memory_kib, live)
            done.append(f"memory {plan.memory_kib}Ki (balloon target)")
        dom.setMetadata(
            libvirt.VIR_DOMAIN_METADATA_ELEMENT, _metadata_element(plan.metadata), names.XML_PREFIX,
            names.XML_NAMESPACE, live,
        )  # fmt: skip
    except libvirt.libvirtError as exc:
        raise LiveUpdateError(f"{', '.join(done) + ' applied; ' if done else ''}{exc.get_error_message()}") from exc
    return done


def live_resources(dom: libvirt.virDomain, running_xml: str) -> dict[str, Any] | None:
    """status.liveResources: what the running guest has now and its maxima."""
    try:
        _state, max_kib, kib, vcpus, _cpu_time = dom.info()
    except libvirt.libvirtError:
        return None
    root = ET.fromstring(running_xml)
    return {
        "memory": f"{kib}Ki",
        "maxMemory": f"{max_kib}Ki",
        "vcpus": int(vcpus),
        "maxVcpus": _int(root, "vcpu") or int(vcpus),
    }
