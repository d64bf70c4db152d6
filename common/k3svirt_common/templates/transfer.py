"""Canonical import/export of templates as YAML."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import yaml

from k3svirt_common import safeyaml
from k3svirt_common.names import API_VERSION, VMTEMPLATE_KIND

from .errors import FieldError, TemplateError
from .validation import validate_template
from .versions import KIND_TEMPLATE, _name

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
