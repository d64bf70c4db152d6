"""VMTemplate logic: semver, version resolution, the template/preset/override merge, canonical
import/export and the version-management rules. Pure functions (no API calls, no libvirt), shared by
the operator (resolve + merge before building the domain) and the gateway (validate, import/export,
new version, deprecate, delete checks). Behaviour is documented in docs/templates.md.

Layering (lowest precedence first)::

    template.vm  ->  presets[0].vm  ->  presets[1].vm ...  ->  overrides (the VM's own spec fields)

* maps merge key by key; scalars and unnamed lists (inputs, sshAuthorizedKeys, ...) are replaced;
* the named lists ``disks``, ``networks`` and ``hostDevices`` merge item by item on ``name`` (new
  names are appended in order);
* one-of groups are replaced, not merged: a layer that sets ``disks[].source.volume`` drops the
  ``image``/``blank`` inherited from below, ``networks[].bridge`` drops ``nat`` and vice versa;
  a layer that sets ``format: raw`` drops inherited ``qcow2`` options, one that sets a ``cache`` other
  than none/directsync drops an inherited ``io: native`` (which requires them);
* ``None`` deletes a key (for Python callers; the API server prunes nulls);
* merge-only sections ``diskDefaults`` / ``networkDefaults`` of a layer apply to every disk / network
  of the final VM at that layer's precedence (``qcow2`` keys only to qcow2 disks, ``iothread`` only to
  virtio disks; ``iothread: auto`` spreads virtio disks round-robin over ``iothreads``). They never
  reach the merged spec.

The merged spec is validated with the VirtualMachine CRD schema
(:func:`k3svirt_common.schema.validate_spec`); errors name the layer that set the offending value,
e.g. ``overrides.cpu.cores`` or ``presets[0].disks[root].cache`` (``spec.`` when no layer set it, e.g.
a missing required field).
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from k3svirt_common import safeyaml
from k3svirt_common.names import API_VERSION, VM_KIND, VMTEMPLATE_KIND

KIND_TEMPLATE = "Template"
KIND_PRESET = "Preset"

#: top-level VM spec lists whose items are identified (and merged) by ``name``
NAMED_LISTS = ("disks", "networks", "hostDevices")
#: merge-only fragment sections, consumed by merge() and never part of the VM spec
MERGE_ONLY = ("diskDefaults", "networkDefaults")
#: mutually exclusive keys: setting one in a layer drops the others inherited from lower layers
_ONE_OF_DISK_SOURCE = ("blank", "image", "volume")
_ONE_OF_NETWORK = ("nat", "bridge")
#: VM fields that reference templates; not overridable content
_REF_FIELDS = ("template", "presets")

# semver 2.0.0, https://semver.org (no leading "v"); kept identical to crds/vmtemplates.yaml
SEMVER_PATTERN = (
    r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(?:-((?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
_SEMVER_RE = re.compile(SEMVER_PATTERN)

# metadata written by the API server (or kubectl) that an export must not carry
_SERVER_METADATA = (
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
    "ownerReferences",
    "finalizers",
    "namespace",
    "generateName",
)
_SERVER_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)


# --------------------------------------------------------------------------------------------- errors
@dataclass(frozen=True)
class FieldError:
    """One problem, with the dotted path of the field it concerns (``overrides.cpu.cores``)."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class TemplateError(ValueError):
    """A template operation was refused; ``errors`` lists every offending field."""

    def __init__(self, errors: Sequence[FieldError] | FieldError | str, field_name: str = "spec"):
        if isinstance(errors, str):
            errors = [FieldError(field_name, errors)]
        elif isinstance(errors, FieldError):
            errors = [errors]
        self.errors: list[FieldError] = list(errors)
        super().__init__("; ".join(str(e) for e in self.errors))


# --------------------------------------------------------------------------------------------- semver
@functools.total_ordering
@dataclass(frozen=True)
class SemVer:
    """A parsed semantic version, ordered by semver precedence (build metadata ignored)."""

    major: int
    minor: int
    patch: int
    prerelease: tuple[int | str, ...] = ()
    build: str = ""
    text: str = field(default="", compare=False)

    def _key(self) -> tuple:
        # a release sorts after its pre-releases; numeric identifiers sort before alphanumeric ones
        pre = tuple((0, p, "") if isinstance(p, int) else (1, 0, p) for p in self.prerelease)
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, pre)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SemVer) and self._key() == other._key()

    def __lt__(self, other: SemVer) -> bool:
        return self._key() < other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __str__(self) -> str:
        return self.text


def parse_semver(text: str, *, field_name: str = "version") -> SemVer:
    """Parse ``MAJOR.MINOR.PATCH[-pre][+build]``; TemplateError naming ``field_name`` otherwise."""
    m = _SEMVER_RE.match(text) if isinstance(text, str) else None
    if not m:
        raise TemplateError(
            FieldError(field_name, f"{text!r} is not a semantic version (MAJOR.MINOR.PATCH, e.g. 1.0.0)")
        )
    pre = tuple(int(p) if p.isdigit() else p for p in m.group(4).split(".")) if m.group(4) else ()
    return SemVer(int(m.group(1)), int(m.group(2)), int(m.group(3)), pre, m.group(5) or "", text)


def is_semver(text: str) -> bool:
    return isinstance(text, str) and bool(_SEMVER_RE.match(text))


def sort_versions(versions: Iterable[str]) -> list[str]:
    """Versions in ascending semver order."""
    return sorted(versions, key=parse_semver)


# ---------------------------------------------------------------------------------- version handling
def versions_of(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``spec.versions`` of a VMTemplate object (empty list when absent)."""
    return list(((obj or {}).get("spec") or {}).get("versions") or [])


def template_kind(obj: Mapping[str, Any]) -> str:
    return ((obj or {}).get("spec") or {}).get("kind") or KIND_TEMPLATE


def _name(obj: Mapping[str, Any]) -> str:
    return ((obj or {}).get("metadata") or {}).get("name") or "<unnamed>"


def latest_version(obj: Mapping[str, Any], *, include_deprecated: bool = False) -> str | None:
    """Highest published version; deprecated versions are skipped unless ``include_deprecated``."""
    candidates = [
        v["version"]
        for v in versions_of(obj)
        if is_semver(v.get("version")) and (include_deprecated or not v.get("deprecated"))
    ]
    return max(candidates, key=parse_semver) if candidates else None


def get_version(obj: Mapping[str, Any], version: str) -> dict[str, Any] | None:
    for v in versions_of(obj):
        if v.get("version") == version:
            return v
    return None


def resolve(
    template_obj: Mapping[str, Any], version: str | None = None, *, field_name: str = "template.version"
) -> tuple[str, dict[str, Any]]:
    """Pick a revision of a VMTemplate: ``(version, deep copy of its vm fragment)``.

    ``version`` given: exactly that revision, even if deprecated (a pinned VM keeps working).
    ``version`` None: the highest non-deprecated revision by semver precedence; an object whose
    every revision is deprecated cannot be used unpinned. Unknown versions raise TemplateError
    naming ``field_name``.
    """
    name = _name(template_obj)
    if version is None:
        version = latest_version(template_obj)
        if version is None:
            raise TemplateError(
                FieldError(
                    field_name,
                    f"VMTemplate {name} has no non-deprecated version; pin one explicitly "
                    f"(published: {', '.join(sort_versions(_published(template_obj))) or 'none'})",
                )
            )
    entry = get_version(template_obj, version)
    if entry is None:
        raise TemplateError(
            FieldError(
                field_name,
                f"VMTemplate {name} has no version {version!r} "
                f"(published: {', '.join(sort_versions(_published(template_obj))) or 'none'})",
            )
        )
    return version, copy.deepcopy(entry.get("vm") or {})


def _published(obj: Mapping[str, Any]) -> list[str]:
    return [v["version"] for v in versions_of(obj) if is_semver(v.get("version"))]


# ------------------------------------------------------------------------------------------ merging
@dataclass(frozen=True)
class Layer:
    """A fragment and the label its fields are reported under (``template``, ``presets[0]``, ...)."""

    fragment: Mapping[str, Any]
    label: str
    source: str = ""  # human description: "VMTemplate minimal-linux version 1.0.0"


def _merge_map(base: dict[str, Any], overlay: Mapping[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overlay.items():
        if value is None:
            out.pop(key, None)
            continue
        here = (*path, key)
        if path == () and key in NAMED_LISTS and isinstance(value, list):
            out[key] = _merge_named(out.get(key) or [], value, here)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            if here[-1] == "source" and path[:1] == ("disks",):
                inherited = dict(out[key])
                if any(k in value for k in _ONE_OF_DISK_SOURCE):
                    for k in _ONE_OF_DISK_SOURCE:
                        inherited.pop(k, None)
                out[key] = _merge_map(inherited, value, here)
            else:
                out[key] = _merge_map(dict(out[key]), value, here)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _merge_named(base: list[Any], overlay: list[Any], path: tuple[str, ...]) -> list[Any]:
    out = [copy.deepcopy(i) for i in base]
    index = {i.get("name"): n for n, i in enumerate(out) if isinstance(i, Mapping)}
    for item in overlay:
        if not isinstance(item, Mapping) or "name" not in item:
            out.append(copy.deepcopy(item))  # let the schema report the missing name
            continue
        if item["name"] not in index:
            index[item["name"]] = len(out)
            out.append(_merge_map({}, item, path))
            continue
        inherited = dict(out[index[item["name"]]])
        if path == ("networks",) and any(k in item for k in _ONE_OF_NETWORK):
            for k in _ONE_OF_NETWORK:
                inherited.pop(k, None)
        if path == ("disks",) and item.get("format") == "raw":
            inherited.pop("qcow2", None)
        # io native needs cache none/directsync: a layer choosing another cache resets an inherited io
        fast_cache = item.get("cache", "none") in ("none", "directsync")
        if path == ("disks",) and not fast_cache and "io" not in item and inherited.get("io") == "native":
            inherited.pop("io")
        out[index[item["name"]]] = _merge_map(inherited, item, path)
    return out


def _split(fragment: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    body = {k: v for k, v in (fragment or {}).items() if k not in MERGE_ONLY}
    return (
        body,
        dict((fragment or {}).get("diskDefaults") or {}),
        dict((fragment or {}).get("networkDefaults") or {}),
    )


def _defaults_layer(
    prelim: Mapping[str, Any], disk_defaults: Mapping[str, Any], net_defaults: Mapping[str, Any]
) -> dict[str, Any]:
    """Expand diskDefaults/networkDefaults into an ordinary layer naming every disk/network."""
    layer: dict[str, Any] = {}
    if disk_defaults:
        disks = []
        virtio = [d for d in prelim.get("disks") or [] if (d.get("bus") or "virtio") == "virtio"]
        threads = int(prelim.get("iothreads") or 0)
        for disk in prelim.get("disks") or []:
            entry = {k: copy.deepcopy(v) for k, v in disk_defaults.items() if k not in ("qcow2", "iothread")}
            if "qcow2" in disk_defaults and (disk.get("format") or "qcow2") == "qcow2":
                entry["qcow2"] = copy.deepcopy(disk_defaults["qcow2"])
            if "iothread" in disk_defaults and disk in virtio:
                want = disk_defaults["iothread"]
                if want == "auto":
                    if threads > 0:
                        entry["iothread"] = virtio.index(disk) % threads + 1
                else:
                    entry["iothread"] = want
            disks.append({"name": disk.get("name"), **entry})
        layer["disks"] = disks
    if net_defaults:
        layer["networks"] = [
            {"name": n.get("name"), **copy.deepcopy(net_defaults)} for n in prelim.get("networks") or []
        ]
    return layer


def merge_layers(layers: Sequence[Layer]) -> tuple[dict[str, Any], list[tuple[str, Mapping[str, Any]]]]:
    """Merge layers (lowest precedence first). Returns the spec and the effective (label, fragment)
    layers after defaults expansion, used to attribute validation errors."""
    bodies = [_split(layer.fragment) for layer in layers]
    prelim: dict[str, Any] = {}
    for body, _, _ in bodies:
        prelim = _merge_map(prelim, body, ())
    spec: dict[str, Any] = {}
    effective: list[tuple[str, Mapping[str, Any]]] = []
    for layer, (body, disk_defaults, net_defaults) in zip(layers, bodies, strict=True):
        expanded = _defaults_layer(prelim, disk_defaults, net_defaults)
        if expanded:
            spec = _merge_map(spec, expanded, ())
            effective.append((layer.label, _relabel_defaults(expanded)))
        spec = _merge_map(spec, body, ())
        effective.append((layer.label, body))
    return spec, effective


def _relabel_defaults(expanded: Mapping[str, Any]) -> dict[str, Any]:
    # errors in values coming from diskDefaults should name diskDefaults; mark the expanded items
    return {k: [{**i, "__defaults__": True} for i in v] for k, v in expanded.items()}


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


# --------------------------------------------------------------------------------------- validation
def _schema_errors(kind: str, spec: Mapping[str, Any]) -> list[tuple[list[str | int], str]]:
    """Run k3svirt_common.schema.validate_spec and normalise its errors to (path tokens, message)."""
    from k3svirt_common import schema  # the one validation path; imported late (loads the CRDs)

    out = []
    kwargs = {"resolved": True} if kind == VM_KIND else {}
    for err in schema.validate_spec(kind, dict(spec), **kwargs) or []:
        path: Any
        if isinstance(err, str):
            path, _, message = err.partition(": ")
        elif isinstance(err, Mapping):
            path, message = err.get("field") or err.get("path") or "", err.get("message", "")
        elif isinstance(err, tuple):
            path, message = err[0], err[1]
        else:
            path = getattr(err, "field", None) or getattr(err, "path", "")
            message = getattr(err, "message", str(err))
        out.append((_tokens(path), str(message)))
    return out


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
    """Validate a merged spec with the VirtualMachine schema (as a resolved spec); attribute each
    error to the highest-precedence layer that set the value (``default_label`` when none did)."""
    errors = []
    for toks, message in _schema_errors(VM_KIND, spec):
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


# --------------------------------------------------------------------------------------- VM expansion
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
    layers: list[Layer] = []
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
                version, frag = resolve(obj, pinned, field_name="spec.template.version")
                used_template = {"name": ref["name"], "version": version}
                layers.append(Layer(frag, "spec.template", f"VMTemplate {ref['name']} version {version}"))
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
                layers.append(Layer(frag, f"spec.presets[{i}]", f"preset {pref['name']} version {version}"))
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
    layers.append(Layer(overrides, "spec"))
    spec, effective = merge_layers(layers)
    if used_template:
        spec["template"] = dict(used_template)
    if used_presets:
        spec["presets"] = [dict(p) for p in used_presets]
    if validate:
        verrs = validate_merged(spec, effective)
        if verrs:
            sources = {layer.label: layer.source for layer in layers if layer.source}
            raise TemplateError([_with_source(e, sources) for e in verrs])
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


# --------------------------------------------------------------------------------- version management
def add_version(
    obj: Mapping[str, Any],
    version: str,
    fragment: Mapping[str, Any],
    *,
    description: str | None = None,
    parameters: Sequence[Mapping[str, Any]] | None = None,
    validate: bool = True,
) -> dict[str, Any]:
    """Return a copy of ``obj`` with a new revision appended.

    Refused (TemplateError) when ``version`` is not semver, already published, or not greater than
    every published version (deprecated ones included), or when the fragment is invalid.
    """
    ver = parse_semver(version, field_name="version")
    published = _published(obj)
    if version in published:
        raise TemplateError(FieldError("version", f"version {version} is already published and immutable"))
    if published:
        highest = max(published, key=parse_semver)
        if not parse_semver(highest) < ver:
            raise TemplateError(
                FieldError("version", f"version {version} must be greater than the latest published {highest}")
            )
    entry: dict[str, Any] = {"version": version, "vm": copy.deepcopy(dict(fragment))}
    if description:
        entry["description"] = description
    if parameters:
        entry["parameters"] = copy.deepcopy(list(parameters))
    entry["deprecated"] = False
    if validate:
        errors = validate_version(entry, template_kind(obj), prefix="version")
        if errors:
            raise TemplateError(errors)
    new = copy.deepcopy(dict(obj))
    new.setdefault("spec", {}).setdefault("versions", []).append(entry)
    return new


def deprecate(obj: Mapping[str, Any], version: str, deprecated: bool = True) -> dict[str, Any]:
    """Return a copy of ``obj`` with ``version`` (un)marked deprecated (the only mutable field)."""
    new = copy.deepcopy(dict(obj))
    for entry in versions_of(new):
        if entry.get("version") == version:
            entry["deprecated"] = deprecated
            return new
    raise TemplateError(FieldError("version", f"VMTemplate {_name(obj)} has no version {version!r}"))


def check_update(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[FieldError]:
    """The API server's CEL transition rules, in Python (for the gateway's early, complete answer)."""
    errors = []
    if template_kind(old) != template_kind(new):
        errors.append(FieldError("spec.kind", "spec.kind is immutable"))
    new_by_version = {v.get("version"): (i, v) for i, v in enumerate(versions_of(new))}
    old_versions = [v.get("version") for v in versions_of(old)]
    for o in versions_of(old):
        ver = o.get("version")
        if ver not in new_by_version:
            errors.append(FieldError("spec.versions", f"published version {ver} cannot be removed (deprecate it)"))
            continue
        i, n = new_by_version[ver]
        for key in sorted((set(o) | set(n)) - {"deprecated", "version"}):
            if o.get(key) != n.get(key):
                errors.append(
                    FieldError(
                        f"spec.versions[{i}].{key}",
                        f"version {ver} is published and immutable; add a new version",
                    )
                )
    published = [v for v in old_versions if is_semver(v)]
    for ver, (i, _) in new_by_version.items():
        if ver in old_versions or not is_semver(ver) or not published:
            continue
        highest = max(published, key=parse_semver)
        if not parse_semver(highest) < parse_semver(ver):
            errors.append(
                FieldError(f"spec.versions[{i}].version", f"new version {ver} must be greater than {highest}")
            )
    return errors


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


# ------------------------------------------------------------------------------------ import / export
class _CanonicalDumper(yaml.SafeDumper):
    """Sorted keys, block style, multi-line strings as literal blocks, indented sequences."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:  # noqa: FBT001
        return super().increase_indent(flow, False)


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    if "\n" in data:
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


_CanonicalDumper.add_representer(str, _str_representer)


def canonical(obj: Mapping[str, Any], version: str | None = None) -> dict[str, Any]:
    """The portable form of a VMTemplate: server-written metadata and status stripped, CRD defaults
    (kind Template, deprecated false) made explicit; ``version`` keeps only that revision."""
    src = copy.deepcopy(dict(obj))
    meta = {k: v for k, v in (src.get("metadata") or {}).items() if k not in _SERVER_METADATA}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in _SERVER_ANNOTATIONS}
    if annotations:
        meta["annotations"] = annotations
    else:
        meta.pop("annotations", None)
    if not meta.get("labels"):
        meta.pop("labels", None)
    spec = dict(src.get("spec") or {})
    spec["kind"] = spec.get("kind") or KIND_TEMPLATE
    versions = []
    for entry in spec.get("versions") or []:
        entry = dict(entry)
        entry["deprecated"] = bool(entry.get("deprecated", False))
        versions.append(entry)
    if version is not None:
        versions = [v for v in versions if v.get("version") == version]
        if not versions:
            raise TemplateError(FieldError("version", f"VMTemplate {_name(obj)} has no version {version!r}"))
    spec["versions"] = versions
    return {
        "apiVersion": src.get("apiVersion", API_VERSION),
        "kind": src.get("kind", VMTEMPLATE_KIND),
        "metadata": meta,
        "spec": spec,
    }


def export_yaml(obj: Mapping[str, Any], version: str | None = None) -> str:
    """Canonical YAML of a VMTemplate (see :func:`canonical`): sorted keys, 2-space indentation,
    literal blocks for multi-line strings, no namespace (import into any namespace).
    export_yaml(import_yaml(export_yaml(x))) == export_yaml(x)."""
    return yaml.dump(
        canonical(obj, version),
        Dumper=_CanonicalDumper,
        sort_keys=True,
        default_flow_style=False,
        allow_unicode=True,
        width=4096,
        indent=2,
    )


def import_yaml(text: str, *, validate: bool = True) -> dict[str, Any]:
    """Parse one VMTemplate document (as written by export_yaml or by hand), strip server fields,
    and (``validate``) refuse it with every field error when it is not a valid VMTemplate."""
    try:
        docs = [d for d in safeyaml.load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise TemplateError(FieldError("yaml", f"not valid YAML: {e}")) from e
    if len(docs) != 1 or not isinstance(docs[0], Mapping):
        raise TemplateError(FieldError("yaml", f"expected exactly one VMTemplate document, got {len(docs)}"))
    obj = canonical(docs[0])
    if validate:
        errors = validate_template(obj)
        if errors:
            raise TemplateError(errors)
    return obj
