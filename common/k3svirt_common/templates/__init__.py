"""VMTemplate logic, one module per job: semver, versions (resolving a pin), merge (the
template/preset/override layering), validation, expand (a VM's spec from its template and presets),
management (new versions, deprecation, update rules), usage (the template's status, the delete guard)
and transfer (canonical import/export). Pure functions (no API calls, no libvirt), shared by the
operator (expand before building the domain; status) and the gateway (validate, import/export, new
version, deprecate, delete checks). Behaviour is documented in docs/templates.md.

Layering (lowest precedence first)::

    template.vm  ->  presets[0].vm  ->  presets[1].vm ...  ->  overrides (the VM's own spec fields)

* maps merge key by key; scalars and unnamed lists (inputs, sshAuthorizedKeys, ...) are replaced;
* the named lists ``disks``, ``networks`` and ``hostDevices`` merge item by item on ``name`` (new
  names are appended in order);
* one-of groups are replaced, not merged: a layer that sets ``disks[].source.volume`` drops the
  ``image``/``blank`` inherited from below, ``networks[].bridge`` drops ``nat`` and vice versa,
  ``hostDevices[].resource`` drops ``pciPassthrough`` and vice versa;
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

from .errors import FieldError, TemplateError
from .expand import Expanded, expand, merge
from .management import add_version, check_update, deprecate
from .merge import MERGE_ONLY, NAMED_LISTS, Layer, merge_layers
from .semver import SEMVER_PATTERN, SemVer, is_semver, parse_semver, sort_versions
from .transfer import canonical, export_yaml, import_yaml
from .usage import check_delete, compute_status, referenced_names, references, usage_of
from .validation import has_path, validate_merged, validate_template, validate_version, vm_field_exists
from .versions import KIND_PRESET, KIND_TEMPLATE, get_version, latest_version, resolve, template_kind, versions_of

__all__ = [
    "Expanded",
    "FieldError",
    "KIND_PRESET",
    "KIND_TEMPLATE",
    "Layer",
    "MERGE_ONLY",
    "NAMED_LISTS",
    "SEMVER_PATTERN",
    "SemVer",
    "TemplateError",
    "add_version",
    "canonical",
    "check_delete",
    "check_update",
    "compute_status",
    "deprecate",
    "expand",
    "export_yaml",
    "get_version",
    "has_path",
    "import_yaml",
    "is_semver",
    "latest_version",
    "merge",
    "merge_layers",
    "parse_semver",
    "referenced_names",
    "references",
    "resolve",
    "sort_versions",
    "template_kind",
    "usage_of",
    "validate_merged",
    "validate_template",
    "validate_version",
    "versions_of",
    "vm_field_exists",
]
