"""A VM's spec with its template and presets applied (what the operator builds the domain from)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import FieldError, TemplateError
from .merge import _REF_FIELDS, Layer, merge_layers
from .validation import has_path, validate_merged
from .versions import KIND_PRESET, KIND_TEMPLATE, get_version, resolve, template_kind

EXPAND_LABELS = ("spec.template", "spec.presets", "spec")  # how a VM's layers are named in errors


@dataclass
class Expanded:
    """A VM spec with its template and presets applied."""

    spec: dict[str, Any]
    template: dict[str, str] | None  # {"name", "version"} actually used (status.resolvedTemplate)
    presets: list[dict[str, str]]  # status.resolvedPresets


def expand(
    vm_spec: Mapping[str, Any],
    get_template: Callable[[str], Mapping[str, Any] | None],
    *,
    resolved_template: Mapping[str, Any] | None = None,
    resolved_presets: Sequence[Mapping[str, Any]] = (),
    validate: bool = True,
) -> Expanded:
    """Resolve a VM's spec.template and spec.presets and merge them under the VM's own fields.

    ``get_template(name)`` returns the VMTemplate object of that name in the VM's namespace (or
    None). Unpinned references (no ``version``) resolve to the latest non-deprecated version, unless
    ``resolved_template``/``resolved_presets`` (the VM's status.resolvedTemplate/resolvedPresets) name
    the same object: then the version already in use is kept, so a new template version never
    changes a running VM behind its back. Errors name ``spec.template...``, ``spec.presets[i]...`` and
    the VM's own fields as ``spec.<field>``.
    """
    errors: list[FieldError] = []
    template_fragment: Mapping[str, Any] | None = None
    preset_fragments: list[Mapping[str, Any]] = []
    sources: dict[str, str] = {}  # layer label -> what set it, for the error messages
    used_template = None
    ref = vm_spec.get("template")
    if ref:
        obj = get_template(ref.get("name"))
        pinned = ref.get("version") or _sticky(ref.get("name"), [resolved_template] if resolved_template else [])
        if obj is None:
            errors.append(FieldError("spec.template.name", f"VMTemplate {ref.get('name')!r} not found"))
        elif template_kind(obj) != KIND_TEMPLATE:
            errors.append(FieldError("spec.template.name", f"{ref.get('name')!r} is a Preset, not a Template"))
        else:
            try:
                version, template_fragment = resolve(obj, pinned, field_name="spec.template.version")
                used_template = {"name": ref["name"], "version": version}
                sources["spec.template"] = f"VMTemplate {ref['name']} version {version}"
            except TemplateError as e:
                errors += e.errors
    used_presets = []
    for i, pref in enumerate(vm_spec.get("presets") or []):
        obj = get_template(pref.get("name"))
        pinned = pref.get("version") or _sticky(pref.get("name"), resolved_presets, index=i)
        if obj is None:
            errors.append(FieldError(f"spec.presets[{i}].name", f"preset {pref.get('name')!r} not found"))
        elif template_kind(obj) != KIND_PRESET:
            errors.append(FieldError(f"spec.presets[{i}].name", f"{pref.get('name')!r} is a Template, not a Preset"))
        else:
            try:
                version, frag = resolve(obj, pinned, field_name=f"spec.presets[{i}].version")
                used_presets.append({"name": pref["name"], "version": version})
                preset_fragments.append(frag)
                sources[f"spec.presets[{i}]"] = f"preset {pref['name']} version {version}"
            except TemplateError as e:
                errors += e.errors
    if errors:
        raise TemplateError(errors)
    overrides = {k: v for k, v in vm_spec.items() if k not in _REF_FIELDS}
    if used_template:  # required parameters: the template's value is a placeholder
        entry = get_version(get_template(used_template["name"]) or {}, used_template["version"]) or {}
        for param in entry.get("parameters") or []:
            if param.get("required") and not has_path(overrides, param.get("path", "")):
                errors.append(
                    FieldError(
                        f"spec.{param.get('path')}",
                        f"Required value: parameter {param.get('name')!r} of VMTemplate "
                        f"{used_template['name']} version {used_template['version']} must be set by the VM",
                    )
                )
    if errors:
        raise TemplateError(errors)
    if used_template:  # the references name the versions used
        overrides["template"] = dict(used_template)
    if used_presets:
        overrides["presets"] = [dict(p) for p in used_presets]
    try:
        spec = merge(template_fragment, preset_fragments, overrides, validate=validate, labels=EXPAND_LABELS)
    except TemplateError as e:
        raise TemplateError([_with_source(err, sources) for err in e.errors]) from None
    return Expanded(spec, used_template, used_presets)


def _sticky(name: str | None, resolved: Sequence[Mapping[str, Any]], index: int | None = None) -> str | None:
    candidates = list(resolved)
    if index is not None:
        candidates = candidates[index : index + 1]
    for r in candidates:
        if r and r.get("name") == name and r.get("version"):
            return r["version"]
    return None


def _with_source(err: FieldError, sources: Mapping[str, str]) -> FieldError:
    for label, src in sources.items():
        if err.field.startswith(label + ".") or err.field.startswith(label + "[") or err.field == label:
            return FieldError(err.field, f"{err.message} (set by {src})")
    return err


def merge(
    template_fragment: Mapping[str, Any] | None,
    presets_fragments: Sequence[Mapping[str, Any]] = (),
    overrides: Mapping[str, Any] | None = None,
    *,
    validate: bool = True,
    labels: tuple[str, str, str] = ("template", "presets", "overrides"),
) -> dict[str, Any]:
    """Merge a template fragment, preset fragments (in order) and overrides into a VM spec.

    With ``validate`` the result is checked against the VirtualMachine CRD schema and TemplateError
    lists the offending fields, prefixed by the layer that set them (``labels``: template label,
    preset label (indexed ``presets[i]``), overrides label). ``template``/``presets`` references in
    ``overrides`` are kept as is; merge-only sections are consumed.
    """
    layers = [Layer(template_fragment or {}, labels[0])]
    layers += [Layer(p or {}, f"{labels[1]}[{i}]") for i, p in enumerate(presets_fragments)]
    refs = {k: v for k, v in (overrides or {}).items() if k in _REF_FIELDS}
    layers.append(Layer({k: v for k, v in (overrides or {}).items() if k not in _REF_FIELDS}, labels[2]))
    spec, effective = merge_layers(layers)
    spec.update(copy.deepcopy(refs))
    if validate:
        errors = validate_merged(spec, effective)
        if errors:
            raise TemplateError(errors)
    return spec
