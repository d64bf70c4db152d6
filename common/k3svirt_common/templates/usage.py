"""Which VMs use a template: the template's status (latest version, users) and the deletion guard."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from .semver import sort_versions
from .validation import validate_template
from .versions import KIND_PRESET, _name, _published, latest_version, template_kind, versions_of


def references(template: Mapping[str, Any], vms: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """VMs (same namespace) whose spec references this VMTemplate, with the version each uses
    (status.resolved* when known, else the pinned one, else empty)."""
    name = _name(template)
    ns = ((template or {}).get("metadata") or {}).get("namespace")
    preset = template_kind(template) == KIND_PRESET
    out = []
    for vm in vms:
        meta = vm.get("metadata") or {}
        if ns and meta.get("namespace") not in (None, ns):
            continue
        spec, status = vm.get("spec") or {}, vm.get("status") or {}
        if preset:
            idx = [i for i, p in enumerate(spec.get("presets") or []) if p.get("name") == name]
            if not idx:
                continue
            resolved = status.get("resolvedPresets") or []
            pinned = (spec["presets"][idx[0]] or {}).get("version")
            used = next((r.get("version") for r in resolved if r.get("name") == name), None)
        else:
            ref = spec.get("template") or {}
            if ref.get("name") != name:
                continue
            pinned = ref.get("version")
            used = (status.get("resolvedTemplate") or {}).get("version")
        out.append({"name": meta.get("name", ""), "version": used or pinned or ""})
    return sorted(out, key=lambda r: r["name"])


def referenced_names(vm_spec: Mapping[str, Any]) -> list[str]:
    """Names of the VMTemplates (template and presets) a VM spec refers to."""
    refs = [vm_spec.get("template") or {}, *(vm_spec.get("presets") or [])]
    return [r["name"] for r in refs if r.get("name")]


def usage_of(vm: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a VM that :func:`references` reads (kept per VM in the operator's index)."""
    meta, spec, status = vm.get("metadata") or {}, vm.get("spec") or {}, vm.get("status") or {}
    keep = {
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace")},
        "spec": {"template": spec.get("template"), "presets": spec.get("presets")},
        "status": {k: status.get(k) for k in ("resolvedTemplate", "resolvedPresets")},
    }
    return copy.deepcopy(keep)


def check_delete(template: Mapping[str, Any], vms_using: Iterable[Mapping[str, Any] | str]) -> str | None:
    """Refusal message when VMs still use the template (None = safe to delete).

    ``vms_using``: VM objects (filtered with :func:`references`) or VM names.
    """
    items = list(vms_using)
    names = [i for i in items if isinstance(i, str)]
    objs = [i for i in items if not isinstance(i, str)]
    names += [r["name"] for r in references(template, objs)]
    if not names:
        return None
    shown = ", ".join(sorted(names)[:10]) + (", ..." if len(names) > 10 else "")
    return (
        f"VMTemplate {_name(template)} is used by {len(names)} VirtualMachine(s): {shown}; "
        "delete them or point them at another template first"
    )


def compute_status(template: Mapping[str, Any], vms: Iterable[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The status the operator writes: latest/sorted/deprecated versions, usedBy, Valid condition
    (conditions without lastTransitionTime; the writer stamps it when the status changes)."""
    published = sort_versions(_published(template))
    used = references(template, vms)
    errors = validate_template(template)
    status: dict[str, Any] = {
        "latestVersion": latest_version(template) or "",
        "versions": published,
        "deprecatedVersions": sort_versions(v["version"] for v in versions_of(template) if v.get("deprecated")),
        "usedBy": {"count": len(used), "vms": used[:256]},
        "conditions": [
            {
                "type": "Valid",
                "status": "False" if errors else "True",
                "reason": "InvalidVersions" if errors else "AllVersionsValid",
                "message": "; ".join(str(e) for e in errors)[:4000]
                if errors
                else "every version merges into a valid VM",
            }
        ],
    }
    generation = ((template or {}).get("metadata") or {}).get("generation")
    if generation is not None:
        status["observedGeneration"] = generation
    return status
