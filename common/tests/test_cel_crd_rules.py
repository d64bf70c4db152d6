"""Every x-kubernetes-validations rule of the CRDs, pinned against k3svirt_common.cel.

The gateway checks the CEL rules with our small interpreter before the API server sees a write; this
test fails when a CRD gains a rule that is not listed here with an object it accepts and one it
refuses, so the interpreter can never silently skip or misjudge a rule. Transition rules (oldSelf)
only the API server evaluates (they need the stored object): the interpreter must refuse them
outright rather than guess.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from k3svirt_common.cel import CelUnsupported, compile_rule

CRDS = Path(__file__).resolve().parents[2] / "crds"

# rule -> (an object the rule accepts, an object it refuses)
PINNED: dict[str, tuple[Any, Any]] = {
    "has(self.address) != has(self.selector)": ({"address": "0000:03:00.0"}, {}),
    "size(self.metadata.name) <= 56": ({"metadata": {"name": "uplink"}}, {"metadata": {"name": "a" * 57}}),
    "has(self.pciPassthrough) != has(self.resource)": (
        {"name": "wan", "resource": "k3svirt.io/pci-8086-10fb"},
        {"name": "wan", "pciPassthrough": "p0", "resource": "k3svirt.io/pci-8086-10fb"},
    ),
    "self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 63": (
        {"metadata": {"name": "vm-1"}},
        {"metadata": {"name": "a" * 64}},
    ),
    "has(self.template) || (has(self.memory) && has(self.memory.size))": (
        {"memory": {"size": "64Mi"}},
        {"memory": {}},
    ),
    "!has(self.disks) || self.disks.all(d, !has(d.iothread) || (has(self.iothreads) && d.iothread <= self.iothreads))": (  # noqa: E501 (the rule as the CRD has it)
        {"iothreads": 2, "disks": [{"iothread": 2}, {}]},
        {"iothreads": 1, "disks": [{"iothread": 2}]},
    ),
    "!has(self.qcow2) || !has(self.qcow2.compression) || (has(self.source) && has(self.source.image) && has(self.source.image.clone) && self.source.image.clone == 'copy')": (  # noqa: E501 (the rule as the CRD has it)
        {"qcow2": {"compression": "zstd"}, "source": {"image": {"url": "file:///i", "clone": "copy"}}},
        {"qcow2": {"compression": "zstd"}, "source": {"image": {"url": "file:///i"}}},
    ),
    "!has(self.qcow2) || !has(self.qcow2.compression) || ((!has(self.qcow2.preallocation) || self.qcow2.preallocation == 'off') && (!has(self.provisioning) || self.provisioning == 'thin'))": (  # noqa: E501 (the rule as the CRD has it)
        {"qcow2": {"compression": "zlib", "preallocation": "off"}},
        {"qcow2": {"compression": "zlib"}, "provisioning": "thick"},
    ),
    "!has(self.nodeName) || !has(self.nodeSelector)": ({"nodeName": "n"}, {"nodeName": "n", "nodeSelector": {}}),
    "(has(self.sockets) ? self.sockets : 1) * (has(self.cores) ? self.cores : 1) * (has(self.threads) ? self.threads : 1) <= 255": (  # noqa: E501 (the rule as the CRD has it)
        {"cores": 255},
        {"sockets": 2, "cores": 128},
    ),
    "!has(self.maxVcpus) || self.maxVcpus >= (has(self.sockets) ? self.sockets : 1) * (has(self.cores) ? self.cores : 1) * (has(self.threads) ? self.threads : 1)": (  # noqa: E501 (the rule as the CRD has it)
        {"sockets": 2, "maxVcpus": 4},
        {"sockets": 2, "cores": 2, "maxVcpus": 3},
    ),
    "!has(self.maxVcpus) || self.maxVcpus % ((has(self.cores) ? self.cores : 1) * (has(self.threads) ? self.threads : 1)) == 0": (  # noqa: E501 (the rule as the CRD has it)
        {"cores": 2, "maxVcpus": 4},
        {"cores": 2, "maxVcpus": 5},
    ),
    "!(has(self.dedicatedCpuSet) && has(self.dedicatedCores))": (
        {"dedicatedCores": 2},
        {"dedicatedCores": 2, "dedicatedCpuSet": "2-3"},
    ),
    "!has(self.dedicatedCores) || self.dedicatedCores >= (has(self.sockets) ? self.sockets : 1) * (has(self.cores) ? self.cores : 1) * (has(self.threads) ? self.threads : 1)": (  # noqa: E501 (the rule as the CRD has it)
        {"cores": 2, "dedicatedCores": 2},
        {"cores": 2, "threads": 2, "dedicatedCores": 2},
    ),
    "!has(self.dedicatedCores) || !has(self.request)": ({"dedicatedCores": 1}, {"dedicatedCores": 1, "request": "1"}),
    "!has(self.source) || !has(self.source.blank) || has(self.size)": (
        {"source": {"blank": {}}, "size": "1Gi"},
        {"source": {"blank": {}}},
    ),
    "!has(self.qcow2) || !has(self.format) || self.format == 'qcow2'": (
        {"qcow2": {}, "format": "qcow2"},
        {"qcow2": {}, "format": "raw"},
    ),
    "!has(self.iothread) || !has(self.bus) || self.bus == 'virtio'": (
        {"iothread": 1, "bus": "virtio"},
        {"iothread": 1, "bus": "sata"},
    ),
    "!has(self.io) || self.io != 'native' || (has(self.cache) && (self.cache == 'none' || self.cache == 'directsync'))": (  # noqa: E501 (the rule as the CRD has it)
        {"io": "native", "cache": "directsync"},
        {"io": "native", "cache": "writeback"},
    ),
    "!has(self.size) || !self.size.matches('^0*([.]0*)?[A-Za-z]*$')": ({"size": "0.5Gi"}, {"size": "0.0Gi"}),
    "!has(self.source) || !has(self.source.volume) || !has(self.size)": (
        {"source": {"volume": {"path": "/v"}}, "format": "raw"},
        {"source": {"volume": {"path": "/v"}}, "size": "1Gi"},
    ),
    "!has(self.source) || !has(self.source.image) || (has(self.source.image.clone) && self.source.image.clone == 'copy') || !has(self.format) || self.format == 'qcow2'": (  # noqa: E501 (the rule as the CRD has it)
        {"source": {"image": {"url": "http://h/i", "clone": "copy"}}, "format": "raw"},
        {"source": {"image": {"url": "http://h/i"}}, "format": "raw"},
    ),
    "has(self.template) || has(self.presets) || !has(self.disks) || self.disks.all(d, has(d.size) || (has(d.source) && !has(d.source.blank)))": (  # noqa: E501 (the rule as the CRD has it)
        {"disks": [{"name": "a", "size": "1Gi"}, {"name": "b", "source": {"image": {}}}]},
        {"disks": [{"name": "a"}]},
    ),
    "(has(self.blank) ? 1 : 0) + (has(self.image) ? 1 : 0) + (has(self.volume) ? 1 : 0) == 1": (
        {"image": {}},
        {"image": {}, "volume": {}},
    ),
    "(has(self.nat) ? 1 : 0) + (has(self.bridge) ? 1 : 0) == 1": ({"nat": {}}, {}),
    "!has(self.model) || self.model != 'tpm-crb' || !has(self.version) || self.version == '2.0'": (
        {"model": "tpm-crb", "version": "2.0"},
        {"model": "tpm-crb", "version": "1.2"},
    ),
    "!has(self.bus) || self.bus != 'ps2' || self.type != 'tablet'": (
        {"bus": "usb", "type": "tablet"},
        {"bus": "ps2", "type": "tablet"},
    ),
    "!has(self.dedicatedCpuSet) || self.dedicatedCpuSet.split(',').map(p, int(p.split('-')[p.contains('-') ? 1 : 0]) - int(p.split('-')[0]) + 1).sum() >= (has(self.sockets) ? self.sockets : 1) * (has(self.cores) ? self.cores : 1) * (has(self.threads) ? self.threads : 1)": (  # noqa: E501 (the rule as the CRD has it)
        {"sockets": 2, "cores": 2, "dedicatedCpuSet": "0,2-3,7"},
        {"cores": 2, "threads": 2, "dedicatedCpuSet": "4-6"},
    ),
    "self.split(',').all(p, int(p.split('-')[p.contains('-') ? 1 : 0]) <= 8191)": ("0-8191", "0-3,8192"),
    "self.split(',').all(p, !p.contains('-') || int(p.split('-')[0]) <= int(p.split('-')[1]))": (
        "2,4-4,5-9",
        "0-1,3-2",
    ),
    "self.split(',').map(p, [2 * int(p.split('-')[0]), 2 * int(p.split('-')[p.contains('-') ? 1 : 0]) + 1]).flatten().sort().all(i, e, e % 2 == i % 2)": (  # noqa: E501 (the rule as the CRD has it)
        "7,0-1,2,4-6",
        "0-3,3-5",
    ),
    "!isQuantity(self.size) || (quantity(self.size).isLessThan(quantity('8Ei')) && double(int(quantity(self.size).asApproximateFloat())) == quantity(self.size).asApproximateFloat())": (  # noqa: E501 (the rule as the CRD has it)
        {"size": "1.5Gi"},
        {"size": "16777216.5"},
    ),
    "!isQuantity(self.size) || quantity(self.size).compareTo(quantity('16Mi')) >= 0": (
        {"size": "16777216"},
        {"size": "16777215"},
    ),
    "!has(self.maxSize) || !isQuantity(self.size) || !isQuantity(self.maxSize) || quantity(self.maxSize).compareTo(quantity(self.size)) >= 0": (  # noqa: E501 (the rule as the CRD has it)
        {"size": "1Gi", "maxSize": "1024Mi"},
        {"size": "1Gi", "maxSize": "1023Mi"},
    ),
    "!has(self.hugepages) || !isQuantity(self.size) || !quantity(self.size).isLessThan(quantity('8Ei')) || double(int(quantity(self.size).asApproximateFloat() / quantity(self.hugepages.pageSize).asApproximateFloat())) == quantity(self.size).asApproximateFloat() / quantity(self.hugepages.pageSize).asApproximateFloat()": (  # noqa: E501 (the rule as the CRD has it)
        {"size": "2.5Gi", "hugepages": {"pageSize": "2Mi"}},
        {"size": "2049M", "hugepages": {"pageSize": "2Mi"}},
    ),
    "has(self.ksm) || has(self.transparentHugepages) || has(self.swappiness) || has(self.ioSchedulers)": (
        {"swappiness": 10},
        {"nodeSelector": {"role": "vm"}},
    ),
    "!isQuantity(self) || quantity(self).isGreaterThan(quantity('0'))": ("0.0001", "0m"),
    "!has(self.onPoweroff) || !has(self.onReboot) || self.onPoweroff != 'restart' || self.onReboot != 'destroy'": (
        {"onPoweroff": "restart", "onReboot": "restart"},
        {"onPoweroff": "restart", "onReboot": "destroy"},
    ),
}


def _rules(node: Any) -> list[str]:
    out: list[str] = []
    if isinstance(node, dict):
        out += [v["rule"] for v in node.get("x-kubernetes-validations") or []]
        for value in node.values():
            out += _rules(value)
    elif isinstance(node, list):
        for value in node:
            out += _rules(value)
    return out


ALL_RULES = sorted(
    {r for f in sorted(CRDS.glob("*.yaml")) for doc in yaml.safe_load_all(f.read_text()) for r in _rules(doc)}
)


def test_the_crds_have_rules():
    assert len(ALL_RULES) >= len(PINNED)


@pytest.mark.parametrize("rule", ALL_RULES)
def test_every_crd_rule_is_pinned(rule: str):
    if "oldSelf" in rule:
        with pytest.raises(CelUnsupported):
            compile_rule(rule)
        return
    assert rule in PINNED, f"new CRD rule: pin it here with an accepted and a refused object: {rule}"
    accepted, refused = PINNED[rule]
    check = compile_rule(rule)
    assert check(accepted) is True
    assert check(refused) is False
