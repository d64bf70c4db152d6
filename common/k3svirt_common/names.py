"""API names shared by the operator, the gateway and the tests (the contract in crds/*.yaml)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

GROUP = "k3svirt.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# kind -> plural; the CRD file for a kind is crds/<plural>.yaml
VM_KIND, VM_PLURAL = "VirtualMachine", "virtualmachines"
VMTEMPLATE_KIND, VMTEMPLATE_PLURAL = "VMTemplate", "vmtemplates"
PCIPASSTHROUGH_KIND, PCIPASSTHROUGH_PLURAL = "PCIPassthrough", "pcipassthroughs"
NODEPCIINVENTORY_KIND, NODEPCIINVENTORY_PLURAL = "NodePCIInventory", "nodepciinventories"
PCIVF_POLICY_KIND, PCIVF_POLICY_PLURAL = "PCIVirtualFunctionPolicy", "pcivirtualfunctionpolicies"
NODETUNING_KIND, NODETUNING_PLURAL = "NodeTuning", "nodetunings"
VMSNAPSHOT_KIND, VMSNAPSHOT_PLURAL = "VirtualMachineSnapshot", "virtualmachinesnapshots"
VMRESTORE_KIND, VMRESTORE_PLURAL = "VirtualMachineRestore", "virtualmachinerestores"
VMUSAGE_KIND, VMUSAGE_PLURAL = "VMUsage", "vmusages"  # usage records (docs/metering.md)

PLURALS: dict[str, str] = {
    VM_KIND: VM_PLURAL,
    VMTEMPLATE_KIND: VMTEMPLATE_PLURAL,
    PCIPASSTHROUGH_KIND: PCIPASSTHROUGH_PLURAL,
    NODEPCIINVENTORY_KIND: NODEPCIINVENTORY_PLURAL,
    PCIVF_POLICY_KIND: PCIVF_POLICY_PLURAL,
    NODETUNING_KIND: NODETUNING_PLURAL,
    VMSNAPSHOT_KIND: VMSNAPSHOT_PLURAL,
    VMRESTORE_KIND: VMRESTORE_PLURAL,
}
NAMESPACED: dict[str, bool] = {
    VM_KIND: True,
    VMTEMPLATE_KIND: True,
    PCIPASSTHROUGH_KIND: False,
    NODEPCIINVENTORY_KIND: False,
    PCIVF_POLICY_KIND: False,
    NODETUNING_KIND: False,
    VMSNAPSHOT_KIND: True,
    VMRESTORE_KIND: True,
}

# "<start|stop|restart>/<unique id>": performed once; the value is copied to status.lastActionRequest.
ANNOTATION_ACTION = f"{GROUP}/action-request"
# Set to the uid of an earlier VM of the same name whose disks were retained, to take them over.
ANNOTATION_ADOPT_STORAGE = f"{GROUP}/adopt-retained-storage"
ACTIONS = ("start", "stop", "restart")
# On a VM created by a restore (a clone): "<snapshot namespace>/<snapshot name>" it was made from.
ANNOTATION_RESTORED_FROM = f"{GROUP}/restored-from"
# On snapshots and restores: the VM they belong to (snapshot: spec.vmName), for label selectors.
LABEL_VM = f"{GROUP}/vm"

# XML namespace of the <k3svirt:vm .../> element in a domain's <metadata>.
XML_NAMESPACE = "https://k3svirt.io/xmlns/domain/v1"
XML_PREFIX = "k3svirt"


class RunStrategy(StrEnum):
    """spec.runStrategy (after KubeVirt's); operator/k3svirt_operator/lifecycle.py has the rules."""

    ALWAYS = "Always"
    HALTED = "Halted"
    MANUAL = "Manual"
    RERUN_ON_FAILURE = "RerunOnFailure"


DEFAULT_RUN_STRATEGY = RunStrategy.ALWAYS


def run_strategy(spec: Mapping[str, Any]) -> str:
    """The VM's runStrategy, defaulted as the CRD documents."""
    return spec.get("runStrategy") or DEFAULT_RUN_STRATEGY


class PrintableStatus(StrEnum):
    """status.printableStatus, in precedence order (the first that applies wins)."""

    TERMINATING = "Terminating"
    ERROR_UNSCHEDULABLE = "ErrorUnschedulable"
    ERROR_PROVISIONING = "ErrorProvisioning"
    FAILED = "Failed"
    PROVISIONING = "Provisioning"
    STOPPING = "Stopping"
    STARTING = "Starting"
    PAUSED = "Paused"
    RUNNING = "Running"
    STOPPED = "Stopped"
    PENDING = "Pending"
    UNKNOWN = "Unknown"


PRINTABLE_STATUSES = tuple(s.value for s in PrintableStatus)


class ConditionType(StrEnum):
    """status.conditions[].type of a VirtualMachine."""

    READY = "Ready"
    PROVISIONED = "Provisioned"
    RESTART_REQUIRED = "RestartRequired"
    TEMPLATE_RESOLVED = "TemplateResolved"
    HOST_DEVICES_READY = "HostDevicesReady"
    RESOURCES_RESERVED = "ResourcesReserved"  # the VM's reservation pod holds its share of the node
    IRQ_AFFINITY = "IRQAffinity"  # where the host IRQs of the VM's passthrough devices go (pci/irq.py)


COND_READY = ConditionType.READY
COND_PROVISIONED = ConditionType.PROVISIONED
COND_RESTART_REQUIRED = ConditionType.RESTART_REQUIRED
COND_TEMPLATE_RESOLVED = ConditionType.TEMPLATE_RESOLVED
COND_HOST_DEVICES_READY = ConditionType.HOST_DEVICES_READY
COND_RESOURCES_RESERVED = ConditionType.RESOURCES_RESERVED
COND_IRQ_AFFINITY = ConditionType.IRQ_AFFINITY

FINALIZER_PREFIX = f"{GROUP}/node-"
_QUALIFIED_NAME_PART = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


def finalizer_for(node: str) -> str:
    """The operator's finalizer for VMs on `node`: "k3svirt.io/node-<node>".

    The part after "/" must be a qualified-name part (<= 63 characters, alphanumeric at both
    ends). Node names may be DNS subdomains of up to 253 characters, so a long name is cut and
    suffixed with a hash of the full name; the result is deterministic for a node.
    """
    if not node:
        raise ValueError("node name must not be empty")
    part = f"node-{node}"
    if len(part) > 63 or not _QUALIFIED_NAME_PART.match(part):
        digest = hashlib.sha256(node.encode()).hexdigest()[:10]
        head = re.sub(r"[^-A-Za-z0-9_.]", "-", part)[: 63 - 11].rstrip("-_.")
        part = f"{head}-{digest}"
    return f"{GROUP}/{part}"


def domain_name(namespace: str, name: str) -> str:
    """libvirt domain name of a VM: "<namespace>_<name>" ('_' cannot occur in either part)."""
    return f"{namespace}_{name}"


def parse_domain_name(domain: str) -> tuple[str, str] | None:
    """Inverse of domain_name(); None for domains k3svirt does not name."""
    namespace, sep, name = domain.partition("_")
    if not sep or not namespace or not name or "_" in name:
        return None
    return namespace, name


def parse_action_request(value: str) -> tuple[str, str]:
    """Split an action-request annotation value "<action>/<id>"; ValueError when malformed."""
    action, sep, ident = (value or "").partition("/")
    if not sep or action not in ACTIONS or not ident:
        raise ValueError(f"{ANNOTATION_ACTION} must be '<{'|'.join(ACTIONS)}>/<unique id>', got {value!r}")
    return action, ident


# The quantities of a VMUsage bucket (crds/vmusages.yaml): what the operator meters and the gateway sums.
USAGE_FIELDS = (
    "cpuSeconds",
    "memoryAllocatedGiBHours",
    "memoryUsedGiBHours",
    "diskGBHours",
    "networkRxBytes",
    "networkTxBytes",
)
