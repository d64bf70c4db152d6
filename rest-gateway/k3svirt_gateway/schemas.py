"""JSON schemas of the gateway's own request/response shapes, declared once and used both to
validate request bodies and to build /openapi.json. Nothing the CRDs declare is declared here: the VM
and template specs and the template/preset references of a VM are the CRDs' openAPIV3Schema parts
(crd_parts), loaded at runtime through k3svirt_common.schema."""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator
from k3svirt_common.names import API_VERSION

from . import contract as c
from .conventions import LIST_PAGE_PROPERTIES
from .errors import PROBLEM_TYPE_BASE, PROBLEM_TYPES, Problem, validation_problem

NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"  # DNS-1123 label
SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
PCI_ADDRESS_PATTERN = r"^([0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$"

PORT_NAME = {"type": "string", "pattern": r"^(?=.*[a-z])[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 15}
NAME = {"type": "string", "pattern": NAME_PATTERN, "minLength": 1, "maxLength": 63}
SUBDOMAIN = {"type": "string", "pattern": SUBDOMAIN_PATTERN, "minLength": 1, "maxLength": 253}
LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
OBJ = {"type": "object"}  # free-form object
ENV_NAME = {"type": "string", "pattern": r"^[-._a-zA-Z][-._a-zA-Z0-9]*$", "maxLength": 256}


QUANTITY = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$", "maxLength": 32}
RESOURCE_AMOUNTS = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"cpu": QUANTITY, "memory": QUANTITY},
}
RESOURCES = {
    "type": "object",
    "additionalProperties": False,
    "description": "container requests/limits (cpu: cores or millicores like 250m; memory: 128Mi)",
    "properties": {"requests": RESOURCE_AMOUNTS, "limits": RESOURCE_AMOUNTS},
}
PULL_POLICY = {
    "type": "string",
    "enum": ["IfNotPresent", "Never", "Always"],
    "description": "default IfNotPresent: images are imported on the node, no registry is reachable",
}
ENV_MAP = {
    "type": "object",
    "additionalProperties": {"type": "string"},
    "propertyNames": ENV_NAME,
    "maxProperties": 128,
}
STRINGS = {"type": "array", "items": {"type": "string", "maxLength": 4096}, "maxItems": 256}
NUM = {"type": "number", "nullable": True}
INT = {"type": "integer", "nullable": True}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def list_of(name: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["items"],
        "properties": {"items": {"type": "array", "items": ref(name)}, **LIST_PAGE_PROPERTIES},
    }


def crd_parts() -> dict[str, dict[str, Any]]:
    """The schemas taken from the CRDs (components of the document, and what bodies are checked with)."""
    vm = c.crd_schema(c.VM_KIND)["properties"]
    return {
        "VirtualMachineSpec": vm["spec"],
        "VirtualMachineStatus": vm.get("status", {"type": "object"}),
        "VMTemplateSpec": c.crd_schema(c.TEMPLATE_KIND)["properties"]["spec"],
        "VMTemplateReference": vm["spec"]["properties"]["template"],
        "VMPresetReference": vm["spec"]["properties"]["presets"]["items"],
        "VirtualMachineSnapshotStatus": c.crd_schema(c.SNAPSHOT_KIND)["properties"]["status"],
        "VirtualMachineRestoreSpec": c.crd_schema(c.RESTORE_KIND)["properties"]["spec"],
        "VirtualMachineRestoreStatus": c.crd_schema(c.RESTORE_KIND)["properties"]["status"],
    }


PORT = {
    "type": "object",
    "required": ["port"],
    "additionalProperties": False,
    "properties": {
        "name": PORT_NAME,
        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
        "protocol": {"type": "string", "enum": ["TCP", "UDP", "SCTP"]},
    },
}

COMPONENTS: dict[str, dict[str, Any]] = {
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details (application/problem+json)",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {
                "type": "string",
                "description": f"a stable URI naming the kind of failure: {PROBLEM_TYPE_BASE}<slug>, one of "
                + ", ".join(f"`{slug}` ({status})" for slug, (status, _, _) in PROBLEM_TYPES.items())
                + " (components.examples describe each)",
            },
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "instance": {"type": "string"},
            "reason": {"type": "string"},
            "podStatus": {"type": "string", "description": "409 on pod logs/stats: the pod's status"},
            "statusMessage": {"type": "string"},
            "containers": {"type": "array", "items": OBJ},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["field", "message"],
                    "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                },
            },
        },
    },
    "ObjectMeta": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "namespace": {"type": "string"},
            "uid": {"type": "string"},
            "resourceVersion": {"type": "string"},
            "generation": {"type": "integer"},
            "creationTimestamp": {"type": "string"},
            "deletionTimestamp": {"type": "string"},
            "labels": LABELS,
            "annotations": LABELS,
            "finalizers": {"type": "array", "items": {"type": "string"}},
        },
    },
    # ------------------------------------------------------------------ VMs
    "VMCreateFromTemplate": {
        "type": "object",
        "required": ["name", "template"],
        "additionalProperties": False,
        "properties": {
            "name": NAME,
            "template": ref("VMTemplateReference"),
            "presets": {
                "type": "array",
                "description": "tuning presets (VMTemplates of kind Preset), by name or {name, version}",
                "items": {"anyOf": [{"type": "string", "description": "a preset's name"}, ref("VMPresetReference")]},
            },
            "overrides": {
                **OBJ,
                "description": "VirtualMachine spec fields laid over the template (deep merge)",
            },
            "labels": LABELS,
        },
    },
    "VMCreateFromSpec": {
        "type": "object",
        "required": ["name", "spec"],
        "additionalProperties": False,
        "properties": {"name": NAME, "spec": ref("VirtualMachineSpec"), "labels": LABELS},
    },
    "VMCreate": {"oneOf": [ref("VMCreateFromTemplate"), ref("VMCreateFromSpec")]},
    "VMSpecPatch": {
        "type": "object",
        "required": ["spec"],
        "additionalProperties": False,
        "description": "a JSON merge patch (RFC 7386) of the VM's spec: members replace, `null` removes; the "
        "merged spec is validated like a created one",
        "properties": {"spec": {**OBJ, "description": "merged into the VM's spec"}},
    },
    "VMSpecReplace": {
        "type": "object",
        "required": ["spec"],
        "additionalProperties": False,
        "description": "the VM's new spec, replacing the whole old one",
        "properties": {"spec": ref("VirtualMachineSpec")},
    },
    "VirtualMachine": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": ref("ObjectMeta"),
            "spec": ref("VirtualMachineSpec"),
            "status": ref("VirtualMachineStatus"),
        },
    },
    "VMSummary": {
        "type": "object",
        "required": ["name", "namespace"],
        "properties": {
            "name": {"type": "string"},
            "namespace": {"type": "string"},
            "runStrategy": {"type": "string"},
            "printableStatus": {"type": "string"},
            "ready": {"type": "boolean"},
            "node": {"type": "string"},
            "template": {"type": "string"},
            "templateVersion": {"type": "string"},
            "ipAddress": {"type": "string", "description": "the first interface's IPv4 (status.interfaces)"},
            "interfaces": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "macAddress": {"type": "string"},
                        "ipAddress": {"type": "string"},
                    },
                },
            },
            "created": {"type": "string"},
            "deleting": {"type": "boolean"},
        },
    },
    "VMList": list_of("VMSummary"),
    "SnapshotCreate": {
        "type": "object",
        "additionalProperties": False,
        "description": "A snapshot of the VM's disks (docs/snapshots.md); name defaults to <vm>-<UTC time>",
        "properties": {"name": NAME},
    },
    "VirtualMachineSnapshot": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": ref("ObjectMeta"),
            "spec": {"type": "object", "properties": {"vmName": {"type": "string"}}},
            "status": ref("VirtualMachineSnapshotStatus"),
        },
    },
    "SnapshotSummary": {
        "type": "object",
        "required": ["name", "namespace", "vm", "phase"],
        "properties": {
            "name": {"type": "string"},
            "namespace": {"type": "string"},
            "vm": {"type": "string"},
            "phase": {"type": "string", "enum": ["Pending", "InProgress", "Ready", "Failed"]},
            "consistency": {"type": "string"},
            "sizeBytes": {"type": "integer"},
            "size": {"type": "string"},
            "creationTime": {"type": "string"},
            "reason": {"type": "string", "description": "the Ready condition's reason"},
            "message": {"type": "string"},
            "deleting": {"type": "boolean"},
        },
    },
    "SnapshotList": list_of("SnapshotSummary"),
    "RestoreRequest": {
        "type": "object",
        "additionalProperties": False,
        "description": "Restore the snapshot into its VM (no target; the VM is stopped for it and comes back as it "
        "was) or into a new VM (target: a name no VM has; a clone is created)",
        "properties": {"name": NAME, "target": NAME},
    },
    "VirtualMachineRestore": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": ref("ObjectMeta"),
            "spec": ref("VirtualMachineRestoreSpec"),
            "status": ref("VirtualMachineRestoreStatus"),
        },
    },
    "VMAction": {
        "type": "object",
        "required": ["name", "namespace", "action"],
        "properties": {
            "name": {"type": "string"},
            "namespace": {"type": "string"},
            "action": {"type": "string", "enum": ["start", "stop", "restart"]},
            "runStrategy": {"type": "string"},
            "requestId": {"type": "string"},
        },
    },
    "VMStats": {
        "type": "object",
        "description": "JSON served by the node operator at status.monitoring.endpoint",
    },
    "Accepted": {
        "type": "object",
        "required": ["kind", "name", "message"],
        "properties": {
            "kind": {"type": "string"},
            "name": {"type": "string"},
            "namespace": {"type": "string"},
            "message": {"type": "string"},
        },
    },
    # ------------------------------------------------------------ templates
    "VMTemplate": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": ref("ObjectMeta"),
            "spec": ref("VMTemplateSpec"),
            "status": OBJ,
            "versions": {"type": "array", "items": {"type": "string"}},
            "latest": {"type": "string"},
        },
    },
    "VMTemplateSummary": {
        "type": "object",
        "required": ["name", "namespace"],
        "properties": {
            "name": {"type": "string"},
            "namespace": {"type": "string"},
            "kind": {"type": "string", "enum": ["Template", "Preset"]},
            "versions": {"type": "array", "items": {"type": "string"}},
            "latest": {"type": "string"},
            "displayName": {"type": "string"},
            "description": {"type": "string"},
            "created": {"type": "string"},
        },
    },
    "VMTemplateList": list_of("VMTemplateSummary"),
    "VMTemplateImport": {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {
            "apiVersion": {"type": "string", "enum": [API_VERSION]},
            "kind": {"type": "string", "enum": ["VMTemplate"]},
            "metadata": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": SUBDOMAIN, "namespace": NAME, "labels": LABELS, "annotations": LABELS},
            },
            "spec": ref("VMTemplateSpec"),
        },
    },
    # ------------------------------------------------------------------ PCI
    "PCIDevice": {
        "type": "object",
        "required": ["node", "address"],
        "properties": {
            "node": {"type": "string"},
            "address": {"type": "string"},
            "device": OBJ,
            "passthrough": {
                "type": "object",
                "description": "the PCIPassthrough for node+address, if any",
                "properties": {
                    "name": {"type": "string"},
                    "phase": {"type": "string"},
                    "spec": OBJ,
                    "status": OBJ,
                },
            },
            "assignedTo": {
                "type": "object",
                "description": "the VM holding the device, else the VM it is reserved for (spec.assignTo)",
                "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}},
            },
            "heldBy": {
                "type": "object",
                "description": "the VM that holds the device now (the PCIPassthrough's status.assignedTo)",
                "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}},
            },
            "resourceName": {
                "type": "string",
                "description": "the extended resource the device counts toward on its node once Bound "
                "(k3svirt.io/pci-<vendor>-<device>): what the scheduler and ResourceQuota count",
            },
        },
    },
    "PCIDeviceList": list_of("PCIDevice"),
    "PCIAssign": {
        "type": "object",
        "required": ["vm", "node"],
        "additionalProperties": False,
        "properties": {"vm": NAME, "namespace": NAME, "node": SUBDOMAIN},
    },
    "PCIUnassign": {
        "type": "object",
        "required": ["node"],
        "additionalProperties": False,
        "properties": {"node": SUBDOMAIN, "vm": NAME, "namespace": NAME},
    },
    "PCIAssignment": {
        "type": "object",
        "required": ["address", "node"],
        "properties": {
            "address": {"type": "string"},
            "node": {"type": "string"},
            "passthrough": {"type": "string"},
            "vm": {"type": "string"},
            "namespace": {"type": "string"},
        },
    },
    # ------------------------------------------------------------ workloads
    "DeploymentCreate": {
        "type": "object",
        "required": ["name", "image"],
        "additionalProperties": False,
        "properties": {
            "name": NAME,
            "image": {"type": "string", "minLength": 1, "maxLength": 512, "pattern": r"^\S+$"},
            "replicas": {"type": "integer", "minimum": 0, "maximum": 100},
            "ports": {"type": "array", "items": PORT, "maxItems": 32},
            "env": ENV_MAP,
            "command": STRINGS,
            "args": STRINGS,
            "resources": RESOURCES,
            "imagePullPolicy": PULL_POLICY,
            "labels": LABELS,
        },
    },
    "DeploymentUpdate": {
        "type": "object",
        "minProperties": 1,
        "additionalProperties": False,
        "description": "changes to the first container and the replica count; env, command, args and "
        "resources replace the current value (empty clears it)",
        "properties": {
            "image": {"type": "string", "minLength": 1, "maxLength": 512, "pattern": r"^\S+$"},
            "imagePullPolicy": PULL_POLICY,
            "replicas": {"type": "integer", "minimum": 0, "maximum": 100},
            "env": ENV_MAP,
            "command": STRINGS,
            "args": STRINGS,
            "resources": RESOURCES,
        },
    },
    "Scale": {
        "type": "object",
        "required": ["replicas"],
        "additionalProperties": False,
        "properties": {"replicas": {"type": "integer", "minimum": 0, "maximum": 100}},
    },
    "Deployment": {
        "type": "object",
        "required": ["name", "namespace"],
        "properties": {
            "name": {"type": "string"},
            "namespace": {"type": "string"},
            "image": {"type": "string"},
            "replicas": {"type": "integer"},
            "readyReplicas": {"type": "integer"},
            "availableReplicas": {"type": "integer"},
            "updatedReplicas": {"type": "integer"},
            "unavailableReplicas": {"type": "integer"},
            "generation": {"type": "integer"},
            "observedGeneration": {"type": "integer"},
            "rollout": {
                "type": "string",
                "enum": ["Complete", "Progressing", "Failed", "Deleting"],
                "description": "like `kubectl rollout status`: Complete when every wanted replica runs the "
                "current template, is available, and no old replica is left",
            },
            "deleting": {"type": "boolean"},
            "imagePullPolicy": {"type": "string"},
            "ports": {"type": "array", "items": OBJ},
            "env": {"type": "object", "additionalProperties": {"type": "string"}},
            "command": {"type": "array", "items": {"type": "string"}},
            "args": {"type": "array", "items": {"type": "string"}},
            "resources": OBJ,
            "labels": LABELS,
            "conditions": {"type": "array", "items": OBJ},
            "created": {"type": "string"},
        },
    },
    "DeploymentList": list_of("Deployment"),
    "ServiceCreate": {
        "type": "object",
        "required": ["name", "ports"],
        "additionalProperties": False,
        "properties": {
            "name": NAME,
            "selector": {**LABELS, "description": "pod labels; default {app: <deployment or name>}"},
            "deployment": {**NAME, "description": "expose this deployment (selector app=<deployment>)"},
            "vm": {
                **NAME,
                "description": "expose this VirtualMachine (annotation k3svirt.io/vm-selector: "
                "k3svirt.io/vm-name=<vm>; docs/services.md)",
            },
            "vmSelector": {
                "type": "string",
                "minLength": 1,
                "maxLength": 1024,
                "description": "expose the VMs whose labels match this equality-based selector (k=v,k!=v,k,!k)",
            },
            "type": {"type": "string", "enum": ["ClusterIP", "NodePort"]},
            "ports": {
                "type": "array",
                "minItems": 1,
                "maxItems": 32,
                "items": {
                    "type": "object",
                    "required": ["port"],
                    "additionalProperties": False,
                    "properties": {
                        "name": PORT_NAME,
                        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                        "targetPort": {"type": "integer", "minimum": 1, "maximum": 65535},
                        "protocol": {"type": "string", "enum": ["TCP", "UDP", "SCTP"]},
                        "nodePort": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": 65535,
                            "description": "a fixed host port (type NodePort; in the API server's node port range)",
                        },
                    },
                },
            },
        },
    },
    "Service": {
        "type": "object",
        "required": ["name", "namespace"],
        "properties": {
            "name": {"type": "string"},
            "namespace": {"type": "string"},
            "type": {"type": "string"},
            "clusterIP": {"type": "string"},
            "selector": LABELS,
            "vmSelector": {"type": "string", "description": "the VMs this Service fronts (k3svirt.io/vm-selector)"},
            "ports": {"type": "array", "items": OBJ},
            "created": {"type": "string"},
        },
    },
    "ServiceList": list_of("Service"),
    "UsageFigures": {
        "type": "object",
        "properties": {
            k: {"type": "number"}
            for k in (
                "cpuSeconds",
                "memoryAllocatedGiBHours",
                "memoryUsedGiBHours",
                "diskGBHours",
                "networkRxBytes",
                "networkTxBytes",
            )  # fmt: skip
        },
    },
    "UsageBucket": {"allOf": [ref("UsageFigures"), {"type": "object", "properties": {"start": {"type": "string"}}}]},
    "Usage": {
        "type": "object",
        "required": ["namespace", "from", "to", "granularity", "vms", "total"],
        "properties": {
            "namespace": {"type": "string"},
            "from": {"type": "string"},
            "to": {"type": "string"},
            "granularity": {"type": "string", "enum": ["hour", "day"]},
            "bucketSeconds": {"type": "array", "items": {"type": "integer"}},
            "vms": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "uid": {"type": "string"},
                        "node": {"type": "string"},
                        "buckets": {"type": "array", "items": ref("UsageBucket")},
                        "total": ref("UsageFigures"),
                    },
                },
            },
            "total": {
                "type": "object",
                "properties": {
                    "buckets": {"type": "array", "items": ref("UsageBucket")},
                    "total": ref("UsageFigures"),
                },
            },
        },
    },
    "ContainerState": {
        "type": "object",
        "required": ["name", "image", "state", "ready", "restarts"],
        "properties": {
            "name": {"type": "string"},
            "image": {"type": "string"},
            "state": {"type": "string", "enum": ["waiting", "running", "terminated"]},
            "reason": {
                "type": "string",
                "description": "waiting: ContainerCreating, ImagePullBackOff, ErrImagePull, CrashLoopBackOff, ...; "
                "terminated: Completed, Error, OOMKilled, ...",
            },
            "message": {"type": "string", "description": "the kubelet's message"},
            "hint": {"type": "string", "description": "what the reason means on a k3svirt node"},
            "startedAt": {"type": "string"},
            "finishedAt": {"type": "string"},
            "exitCode": {"type": "integer"},
            "signal": {"type": "integer"},
            "ready": {"type": "boolean"},
            "restarts": {"type": "integer"},
            "lastState": {"type": "object", "description": "the previous (terminated) instance, if any"},
        },
    },
    "Pod": {
        "type": "object",
        "required": ["name", "namespace", "phase", "status", "containers"],
        "properties": {
            "name": {"type": "string"},
            "namespace": {"type": "string"},
            "phase": {"type": "string"},
            "status": {
                "type": "string",
                "description": "one word like kubectl's STATUS column: Running, ContainerCreating, "
                "ImagePullBackOff, CrashLoopBackOff, Completed, Init:0/1, Terminating, Pending (only when no "
                "container reports a reason) ...",
            },
            "statusMessage": {"type": "string", "description": "why, in one sentence (empty when nothing to say)"},
            "node": {"type": "string"},
            "podIP": {"type": "string"},
            "hostIP": {"type": "string"},
            "startTime": {"type": "string"},
            "qosClass": {"type": "string"},
            "ready": {"type": "boolean", "description": "every container is ready"},
            "readyContainers": {"type": "string", "description": "ready/total, e.g. 1/1"},
            "restarts": {"type": "integer"},
            "deleting": {"type": "boolean"},
            "containers": {"type": "array", "items": ref("ContainerState")},
            "initContainers": {"type": "array", "items": ref("ContainerState")},
            "labels": LABELS,
            "conditions": {"type": "array", "items": OBJ},
            "created": {"type": "string"},
        },
    },
    "PodList": list_of("Pod"),
    "PodStats": {
        "type": "object",
        "required": ["name", "namespace", "available"],
        "description": "figures of the kubelet Summary API; null where the kubelet gave none",
        "properties": {
            "name": {"type": "string"},
            "namespace": {"type": "string"},
            "node": {"type": "string"},
            "status": {"type": "string"},
            "available": {"type": "boolean", "description": "false: no figures (see reason)"},
            "reason": {"type": "string"},
            "source": {"type": "string"},
            "cpu": {
                "type": "object",
                "properties": {
                    "time": {"type": "string"},
                    "usageCores": {**NUM, "description": "usageNanoCores / 1e9 (a rate computed by the kubelet)"},
                    "usageCoreSeconds": NUM,
                    "nodeCores": NUM,
                    "percentOfNode": NUM,
                    "limitCores": {**NUM, "description": "null when a container has no CPU limit"},
                    "percentOfLimit": NUM,
                },
            },
            "memory": {
                "type": "object",
                "properties": {
                    "time": {"type": "string"},
                    "workingSetBytes": INT,
                    "usageBytes": INT,
                    "rssBytes": INT,
                    "nodeBytes": INT,
                    "percentOfNode": NUM,
                    "limitBytes": INT,
                    "percentOfLimit": NUM,
                },
            },
            "network": {
                "type": "object",
                "properties": {
                    "time": {"type": "string"},
                    "rxBytes": {**INT, "description": "cumulative since the pod sandbox started"},
                    "txBytes": INT,
                    "rxErrors": INT,
                    "txErrors": INT,
                    "rxBytesPerSecond": {
                        **NUM,
                        "description": "from two kubelet samples seen by this gateway process; null until then",
                    },
                    "txBytesPerSecond": NUM,
                    "rateWindowSeconds": NUM,
                    "rateNote": {"type": "string"},
                    "interfaces": {"type": "array", "items": {"type": "string"}},
                },
            },
            "filesystem": {
                "type": "object",
                "properties": {
                    "usedBytes": {**INT, "description": "container rootfs + logs"},
                    "rootfsUsedBytes": INT,
                    "logsUsedBytes": INT,
                    "ephemeralStorageUsedBytes": INT,
                    "volumesUsedBytes": INT,
                },
            },
            "processes": INT,
            "containers": {"type": "array", "items": OBJ},
        },
    },
    "PodStatsList": {
        "type": "object",
        "required": ["namespace", "items", "totals"],
        "properties": {
            "namespace": {"type": "string"},
            "items": {"type": "array", "items": ref("PodStats")},
            "source": {"type": "string"},
            "totals": {
                "type": "object",
                "properties": {
                    "pods": {"type": "integer"},
                    "podsWithStats": {"type": "integer"},
                    "cpuUsageCores": NUM,
                    "memoryWorkingSetBytes": NUM,
                    "networkRxBytes": NUM,
                    "networkTxBytes": NUM,
                    "networkRxBytesPerSecond": NUM,
                    "networkTxBytesPerSecond": NUM,
                    "filesystemUsedBytes": NUM,
                },
            },
        },
    },
    "NodeResources": {
        "type": "object",
        "properties": {
            "cpuCores": NUM,
            "memoryBytes": INT,
            "pods": INT,
            "ephemeralStorageBytes": INT,
            "quantities": LABELS,
        },
    },
    "Node": {
        "type": "object",
        "required": ["name", "status", "ready"],
        "properties": {
            "name": {"type": "string"},
            "status": {"type": "string", "enum": ["Ready", "NotReady", "Unknown"]},
            "ready": {"type": "boolean"},
            "unschedulable": {"type": "boolean"},
            "created": {"type": "string"},
            "labels": LABELS,
            "taints": {"type": "array", "items": OBJ},
            "addresses": {"type": "array", "items": OBJ},
            "kubeletVersion": {"type": "string"},
            "containerRuntimeVersion": {"type": "string"},
            "osImage": {"type": "string"},
            "kernelVersion": {"type": "string"},
            "architecture": {"type": "string"},
            "capacity": ref("NodeResources"),
            "allocatable": ref("NodeResources"),
            "conditions": {"type": "array", "items": OBJ},
            "usage": {
                "type": "object",
                "description": "vms: vCPUs/RAM of VMs with status.node = this node that hold a domain "
                "(Running, Paused, Starting, Stopping); pods: requests of its non-terminated pods",
                "properties": {"vms": OBJ, "pods": OBJ, "total": OBJ},
            },
        },
    },
    "NodeList": list_of("Node"),
    "NamespaceCreate": {
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": {"name": NAME, "labels": LABELS},
    },
    "Namespace": {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string"},
            "phase": {"type": "string"},
            "labels": LABELS,
            "created": {"type": "string"},
        },
    },
    "NamespaceList": list_of("Namespace"),
    "APIIndex": {
        "type": "object",
        "required": ["apiVersion", "resources", "features"],
        "properties": {
            "apiVersion": {"type": "string"},
            "gatewayVersion": {"type": "string"},
            "openapi": {"type": "string", "description": "path of this API's OpenAPI document"},
            "resources": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "path", "methods"],
                    "properties": {
                        "name": {"type": "string"},
                        "path": {"type": "string"},
                        "methods": {"type": "array", "items": {"type": "string"}},
                    },
                },
            },
            "features": {
                "type": "array",
                "items": {"type": "string"},
                "description": "optional features this gateway serves (feature detection, like Incus's "
                "api_extensions): etag, if-match, pagination, problem-types, template-yaml, vm-stats, pod-stats, "
                "pci-passthrough, list-cache (when enabled)",
            },
        },
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string"}, "detail": {"type": "string"}},
    },
}

# For validation the VM/template specs are checked by k3svirt_common.schema (the CRD schema, with the
# merge of template and presets), so the envelope check only needs "it is an object"; the references
# are checked with the CRD's schema for them, closed (the API server would silently drop extra fields).
_validators: dict[str, Draft202012Validator] = {}


def _validation_parts() -> dict[str, Any]:
    parts = crd_parts()
    return {
        "VirtualMachineSpec": OBJ,
        "VirtualMachineStatus": OBJ,
        "VMTemplateSpec": OBJ,
        "VMTemplateReference": {**parts["VMTemplateReference"], "additionalProperties": False},
        "VMPresetReference": {**parts["VMPresetReference"], "additionalProperties": False},
        "VirtualMachineSnapshotStatus": OBJ,
        "VirtualMachineRestoreSpec": OBJ,
        "VirtualMachineRestoreStatus": OBJ,
    }


def _validator(name: str) -> Draft202012Validator:
    v = _validators.get(name)
    if v is None:
        root = {
            "$ref": f"#/components/schemas/{name}",
            "components": {"schemas": {**COMPONENTS, **_validation_parts()}},
        }
        v = _validators[name] = Draft202012Validator(root)
    return v


def _field(path: Any, prefix: str = "") -> str:
    out = prefix
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def format_error(err: Any, prefix: str = "") -> dict[str, str]:
    field = _field(err.absolute_path, prefix)
    if err.validator == "required":
        missing = err.message.split("'")[1] if "'" in err.message else ""
        field = f"{field}.{missing}" if field else missing
    elif err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        if extra:
            field = f"{field}.{extra[0]}" if field else extra[0]
    return {"field": field, "message": err.message}


def _best(err: Any) -> Any:
    # Descend into oneOf/anyOf to the most specific failure.
    while err.context:
        err = min(err.context, key=lambda e: (-len(e.absolute_path), e.validator == "required"))
    return err


def errors_for(name: str, body: Any) -> list[dict[str, str]]:
    errs = sorted(_validator(name).iter_errors(body), key=lambda e: list(map(str, e.absolute_path)))
    return [format_error(_best(e)) for e in errs]


def validate(name: str, body: Any) -> dict[str, Any]:
    """Validate `body` against COMPONENTS[name]; raise a 422 Problem naming the failing fields."""
    errs = errors_for(name, body)
    if errs:
        raise validation_problem(errs)
    return body


def require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise Problem(
            422,
            "request body must be a JSON object",
            title="Validation failed",
            errors=[{"field": "", "message": "expected an object"}],
        )
    return body
