"""Validation of merged specs and of templates against the VirtualMachine CRD schema, with
errors that name the layer that set the offending value."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from k3svirt_common.names import API_VERSION, VM_KIND, VMTEMPLATE_KIND

from .errors import FieldError, TemplateError
from .merge import _REF_FIELDS, MERGE_ONLY, Layer, merge_layers
from .semver import parse_semver
from .versions import KIND_PRESET, KIND_TEMPLATE, template_kind


def _schema_errors(kind: str, spec: Mapping[str, Any]) -> list[tuple[list[str | int], str]]:
    """k3svirt_common.schema.validate_spec's errors as (path tokens below spec, message)."""
    from k3svirt_common import schema  # the one validation path; imported late (loads the CRDs)

    return [(_tokens(err.path), err.message) for err in schema.validate_spec(kind, dict(spec))]


def _tokens(path: Any) -> list[str | int]:
    if isinstance(path, list | tuple):
        toks = list(path)
    else:
        toks = []
        for part in re.findall(r"[^.\[\]]+|\[[^\]]*\]", str(path or "")):
            if part.startswith("["):
                inner = part[1:-1]
                toks.append(int(inner) if inner.isdigit() else inner)
            else:
                toks.append(part)
    if toks[:1] == ["spec"]:
        toks = toks[1:]
    return toks


def _named_path(spec: Mapping[str, Any], toks: Sequence[str | int]) -> list[str | tuple[str]]:
    """Replace list indexes of named lists by ``(name,)`` so paths survive re-ordering."""
    out: list[str | tuple[str]] = []
    node: Any = spec
    for tok in toks:
        if isinstance(tok, int) and isinstance(node, list) and tok < len(node):
            item = node[tok]
            out.append((item["name"],) if isinstance(item, Mapping) and "name" in item else (str(tok),))
            node = item
        else:
            out.append(tok if isinstance(tok, str) else (str(tok),))
            node = node.get(tok) if isinstance(node, Mapping) and isinstance(tok, str) else None
    return out


def _lookup(fragment: Any, npath: Sequence[str | tuple[str]]) -> tuple[bool, bool]:
    """(found, from_defaults): does the fragment set the value at this named path?"""
    node = fragment
    from_defaults = False
    for tok in npath:
        if isinstance(tok, tuple):
            if not isinstance(node, list):
                return False, False
            match = [i for i in node if isinstance(i, Mapping) and str(i.get("name")) == tok[0]]
            if not match:
                if tok[0].isdigit() and int(tok[0]) < len(node):
                    node = node[int(tok[0])]
                    continue
                return False, False
            node = match[0]
            from_defaults = from_defaults or bool(node.get("__defaults__"))
        else:
            if not isinstance(node, Mapping) or tok not in node:
                return False, False
            node = node[tok]
    return True, from_defaults


def _render(npath: Sequence[str | tuple[str]], defaults: bool = False) -> str:
    s = ""
    for n, tok in enumerate(npath):
        if isinstance(tok, tuple):
            if defaults and n == 1 and npath[0] in ("disks", "networks"):
                s = "diskDefaults" if npath[0] == "disks" else "networkDefaults"
            else:
                s += f"[{tok[0]}]"
        else:
            s += f".{tok}" if s else tok
    return s


def validate_merged(
    spec: Mapping[str, Any],
    effective: Sequence[tuple[str, Mapping[str, Any]]] = (),
    *,
    default_label: str = "spec",
) -> list[FieldError]:
    """Validate a merged spec with the VirtualMachine CRD schema; attribute each error to the
    highest-precedence layer that set the value (``default_label`` when none did).

    The spec is validated without its template/presets references: once merged, they only record
    what was applied, so a rule such as "memory.size is required unless spec.template supplies it"
    holds the merged result to what the template did supply. No rule of its own: the CRD's only.
    """
    errors = []
    resolved = {k: v for k, v in spec.items() if k not in _REF_FIELDS}
    for toks, message in _schema_errors(VM_KIND, resolved):
        npath = _named_path(spec, toks)
        label, defaults = default_label, False
        for probe in range(len(npath), 0, -1):  # the most specific path some layer sets
            hits = [(lbl, d) for lbl, frag in effective for found, d in [_lookup(frag, npath[:probe])] if found]
            if hits:
                label, defaults = hits[-1]  # the highest-precedence layer that set it
                break
        rendered = _render(npath, defaults)
        errors.append(FieldError(f"{label}.{rendered}" if rendered else label, message))
    return errors


#: a small complete VM used to check presets (which are not complete VMs on their own)
PRESET_PROBE: dict[str, Any] = {
    "cpu": {"cores": 1},
    "memory": {"size": "128Mi"},
    "disks": [{"name": "root", "size": "1Gi", "source": {"blank": {}}}],
    "networks": [{"name": "default", "nat": {}}],
}


def validate_template(obj: Mapping[str, Any]) -> list[FieldError]:
    """All problems of a VMTemplate object: its CRD schema, then every revision's fragment.

    A Template revision must merge into a valid VM on its own; a Preset revision is merged over
    PRESET_PROBE (a one-disk, one-NIC VM) so its diskDefaults/networkDefaults are exercised.
    Parameter paths must name a field the revision sets unless the parameter is ``required``.
    """
    errors: list[FieldError] = []
    if (obj or {}).get("apiVersion") != API_VERSION:
        errors.append(FieldError("apiVersion", f"must be {API_VERSION}"))
    if (obj or {}).get("kind") != VMTEMPLATE_KIND:
        errors.append(FieldError("kind", f"must be {VMTEMPLATE_KIND}"))
    spec = (obj or {}).get("spec")
    if not isinstance(spec, Mapping):
        return [*errors, FieldError("spec", "is required")]
    for toks, message in _schema_errors(VMTEMPLATE_KIND, spec):
        errors.append(FieldError(_render(["spec", *[t if isinstance(t, str) else (str(t),) for t in toks]]), message))
    seen: set[str] = set()
    for i, entry in enumerate(spec.get("versions") or []):
        if not isinstance(entry, Mapping):
            continue
        ver = entry.get("version")
        if ver in seen:
            errors.append(FieldError(f"spec.versions[{i}].version", f"duplicate version {ver!r}"))
        seen.add(ver)
        errors += validate_version(entry, template_kind(obj), prefix=f"spec.versions[{i}]")
    return errors


def validate_version(
    entry: Mapping[str, Any], kind: str = KIND_TEMPLATE, *, prefix: str = "version"
) -> list[FieldError]:
    """Problems of one revision ``{version, vm, parameters, ...}`` (fields prefixed by ``prefix``)."""
    errors: list[FieldError] = []
    try:
        parse_semver(entry.get("version"), field_name=f"{prefix}.version")
    except TemplateError as e:
        errors += e.errors
    for j, param in enumerate(entry.get("parameters") or []):
        path = param.get("path", "")
        if not vm_field_exists(path):
            errors.append(FieldError(f"{prefix}.parameters[{j}].path", f"{path!r} is not a VirtualMachine spec field"))
    fragment = entry.get("vm")
    if not isinstance(fragment, Mapping):
        return [*errors, FieldError(f"{prefix}.vm", "must be a VM spec fragment (a map)")]
    refs = [k for k in _REF_FIELDS if k in fragment]
    if refs:
        errors.append(FieldError(f"{prefix}.vm.{refs[0]}", "a template cannot reference other templates"))
    for section in MERGE_ONLY:
        if section in fragment and not isinstance(fragment[section], Mapping):
            errors.append(FieldError(f"{prefix}.vm.{section}", "must be a map"))
    if errors:
        return errors
    label = f"{prefix}.vm"
    layers = [Layer(fragment, label)]
    if kind == KIND_PRESET:
        layers.insert(0, Layer(PRESET_PROBE, "probe"))
    merged, effective = merge_layers(layers)
    for err in validate_merged(merged, effective, default_label=label):
        if err.field.startswith("probe"):  # a preset breaks the probe VM in a way we cannot pin
            errors.append(FieldError(label, f"makes a minimal VM invalid: {err.field[6:]}: {err.message}"))
        else:
            errors.append(err)
    return errors


def vm_field_exists(path: str) -> bool:
    """Is ``path`` (``cpu.cores``, ``disks[root].source.image.url``) a field of the VM spec schema?"""
    from k3svirt_common import schema

    node: Mapping[str, Any] = schema.openapi_schema(VM_KIND)["properties"]["spec"]
    toks = _param_tokens(path)
    if not toks:
        return False
    for tok in toks:
        if isinstance(tok, tuple):
            if node.get("type") != "array":
                return False
            node = node.get("items") or {}
        else:
            props = node.get("properties") or {}
            if tok not in props:
                return False
            node = props[tok]
    return True


def has_path(spec: Mapping[str, Any], path: str) -> bool:
    """Does ``spec`` set ``path`` (``cpu.cores``, ``disks[root].source.image.url``)?"""
    found, _ = _lookup(spec, _param_tokens(path))
    return found


def _param_tokens(path: str) -> list[str | tuple[str]]:
    out: list[str | tuple[str]] = []
    for part in re.findall(r"[^.\[\]]+|\[[^\]]*\]", path or ""):
        out.append((part[1:-1],) if part.startswith("[") else part)
    return out
