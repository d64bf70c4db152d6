"""k3svirt's API contract as the gateway sees it: names from k3svirt_common.names, CRD schemas and
validation from k3svirt_common.schema (the one validation path; never re-declared here)."""

from __future__ import annotations

import copy
import functools
from typing import Any

from k3svirt_common import names as _names

GROUP: str = getattr(_names, "GROUP", "k3svirt.io")
VERSION: str = getattr(_names, "VERSION", "v1alpha1")
API_VERSION: str = getattr(_names, "API_VERSION", f"{GROUP}/{VERSION}")


VM_KIND: str = getattr(_names, "VM_KIND", "VirtualMachine")
TEMPLATE_KIND: str = getattr(_names, "VMTEMPLATE_KIND", "VMTemplate")
PCIP_KIND: str = getattr(_names, "PCIPASSTHROUGH_KIND", "PCIPassthrough")
INVENTORY_KIND: str = getattr(_names, "NODEPCIINVENTORY_KIND", "NodePCIInventory")
SNAPSHOT_KIND: str = _names.VMSNAPSHOT_KIND
RESTORE_KIND: str = _names.VMRESTORE_KIND

VM_PLURAL: str = getattr(_names, "VM_PLURAL", "virtualmachines")
TEMPLATE_PLURAL: str = getattr(_names, "VMTEMPLATE_PLURAL", "vmtemplates")
PCIP_PLURAL: str = getattr(_names, "PCIPASSTHROUGH_PLURAL", "pcipassthroughs")
INVENTORY_PLURAL: str = getattr(_names, "NODEPCIINVENTORY_PLURAL", "nodepciinventories")
SNAPSHOT_PLURAL: str = _names.VMSNAPSHOT_PLURAL
RESTORE_PLURAL: str = _names.VMRESTORE_PLURAL

ACTION_ANNOTATION: str = getattr(_names, "ANNOTATION_ACTION", f"{GROUP}/action-request")


def _schema_module() -> Any:
    from k3svirt_common import schema  # imported lazily: lands in parallel with the gateway

    return schema


@functools.cache
def crd_schema(kind: str) -> dict[str, Any]:
    """The CRD's openAPIV3Schema for `kind`, as loaded by k3svirt_common.schema."""
    mod = _schema_module()
    for fn_name in ("openapi_schema", "crd_schema", "load_schema", "schema_for", "get_schema"):
        fn = getattr(mod, fn_name, None)
        if callable(fn):
            return copy.deepcopy(fn(kind))
    raise RuntimeError("k3svirt_common.schema exposes no schema loader")


def validate_spec(kind: str, spec: Any) -> list[dict[str, str]]:
    """Validate a spec with the CRD schema; return [{field, message}] (empty when valid)."""
    out = []
    for err in _schema_module().validate_spec(kind, spec) or []:
        if isinstance(err, dict):
            field = str(err.get("field", err.get("path", "")))
            message = str(err.get("message", ""))
        elif isinstance(err, tuple | list) and len(err) == 2:
            field, message = str(err[0]), str(err[1])
        else:
            field = str(getattr(err, "field", getattr(err, "path", "")))
            message = str(getattr(err, "message", err))
        if field and not field.startswith("spec"):
            field = "spec." + field.lstrip(".")
        out.append({"field": field or "spec", "message": message})
    return out
