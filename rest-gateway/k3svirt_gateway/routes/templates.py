"""/templates: VMTemplate custom resources (versioned VM spec fragments and tuning presets).

Import is create-or-publish: a manifest for a new template creates it; a manifest for an existing one
publishes the versions it does not have yet (and may flip `deprecated`). Published versions are
immutable: an edited one is refused with 409 (k3svirt_common.templates.check_update, the same rules
the API server enforces with CEL). Canonical import/export come from k3svirt_common.templates.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from flask import Blueprint, Response, request
from k3svirt_common import safeyaml
from k3svirt_common import templates as tmod

from .. import contract as c
from ..api import JSON_TYPES, YAML_TYPES, check_name, namespace, op
from ..cache import STALE_HEADER, Resource
from ..conventions import check_version, delete_options, versioned
from ..errors import Problem, validation_problem
from ..schemas import validate
from . import clean_metadata, deletion_accepted, kube, list_items
from .vms import template_path, vm_path

bp = Blueprint("templates", __name__)


def blueprints() -> list[Blueprint]:
    return [bp]


def field_errors(errors: Any) -> list[dict[str, str]]:
    return [
        {"field": str(getattr(e, "field", getattr(e, "path", ""))), "message": str(getattr(e, "message", e))}
        for e in errors
    ]


def summary(obj: dict[str, Any]) -> dict[str, Any]:
    md = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    out: dict[str, Any] = {
        "name": md.get("name", ""),
        "namespace": md.get("namespace", ""),
        "kind": tmod.template_kind(obj),
        "versions": tmod.sort_versions(v.get("version", "") for v in tmod.versions_of(obj)),
    }
    latest = tmod.latest_version(obj)
    if latest:
        out["latest"] = latest
    for key in ("displayName", "description"):
        if isinstance(spec.get(key), str):
            out[key] = spec[key]
    if md.get("creationTimestamp"):
        out["created"] = md["creationTimestamp"]
    return out


TEMPLATES = Resource(c.TEMPLATE_KIND, c.TEMPLATE_PLURAL, summary)


def _detail(obj: dict[str, Any]) -> dict[str, Any]:
    out = clean_metadata(obj)
    out["versions"] = tmod.sort_versions(v.get("version", "") for v in tmod.versions_of(obj))
    latest = tmod.latest_version(obj)
    if latest:
        out["latest"] = latest
    return out


@op(
    bp,
    "/templates",
    "GET",
    summary="List VMTemplates (templates and presets) with their versions",
    response=(200, "VMTemplateList", "templates"),
    query=("namespace", "labelSelector"),
    response_headers=STALE_HEADER,
    paged=True,
)
def list_templates():
    return list_items(lambda ns, query: kube().get(template_path(ns), query=query), summary, cached=TEMPLATES)


@op(
    bp,
    "/templates/<name>",
    "GET",
    summary="Get one VMTemplate with all its versions",
    response=(200, "VMTemplate", "the template"),
    query=("namespace",),
    etag=True,
)
def get_template(name: str):
    ns = namespace()
    return _detail(versioned(kube().get(template_path(ns, check_name(name)))))


def _imported() -> dict[str, Any]:
    mime = (request.mimetype or "").lower()
    if mime not in JSON_TYPES + YAML_TYPES:
        raise Problem(415, f"expected Content-Type application/json or application/yaml, got {mime or 'none'}")
    try:
        text = request.get_data(cache=True).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Problem(400, "request body is not UTF-8") from exc
    try:
        docs = [d for d in safeyaml.load_all(text) if d is not None]  # JSON is YAML: one parser for both
    except yaml.YAMLError as exc:
        raise validation_problem([{"field": "body", "message": f"not valid YAML/JSON: {exc}"}]) from exc
    if len(docs) != 1:
        raise validation_problem([{"field": "body", "message": f"expected one VMTemplate document, got {len(docs)}"}])
    # shape first (our envelope schema + the CRD's spec schema), then k3svirt_common's canonical import
    validate("VMTemplateImport", docs[0])
    errors = c.validate_spec(c.TEMPLATE_KIND, docs[0]["spec"])
    if errors:
        raise validation_problem(errors)
    try:
        return tmod.import_yaml(text, validate=True)
    except tmod.TemplateError as exc:
        raise validation_problem(field_errors(exc.errors)) from exc


@op(
    bp,
    "/templates",
    "POST",
    summary="Import a VMTemplate manifest (YAML or JSON): create it or publish new versions",
    body="VMTemplateImport",
    body_types=("application/json", "application/yaml"),
    response=(201, "VMTemplate", "created"),
    also={200: ("VMTemplate", "an existing template: new versions published, or unchanged")},
    query=("namespace",),
)
def import_template():
    obj = _imported()
    ns = namespace()
    name = (obj.get("metadata") or {}).get("name") or ""
    check_name(name, "metadata.name")
    obj["metadata"]["namespace"] = ns
    try:
        out = kube().post(template_path(ns), obj)
        return _detail(out), 201, {"Location": f"/api/v1/templates/{name}?namespace={ns}"}
    except Problem as exc:
        if exc.status != 409 or exc.extra.get("reason") != "AlreadyExists":
            raise
    current = kube().get(template_path(ns, name))
    incoming = {v.get("version"): v for v in tmod.versions_of(obj)}
    versions = []
    for old in tmod.versions_of(current):
        versions.append(copy.deepcopy(incoming.pop(old.get("version"), old)))
    versions += [copy.deepcopy(v) for v in incoming.values()]
    new = copy.deepcopy(current)
    new_spec = new.setdefault("spec", {})
    new_spec["versions"] = versions
    new_spec["kind"] = tmod.template_kind(obj)
    for key in ("displayName", "description"):
        if key in (obj.get("spec") or {}):
            new_spec[key] = obj["spec"][key]
    errors = tmod.check_update(current, new)
    if errors:
        raise Problem(
            409,
            f"VMTemplate {name!r} already exists and this import changes published content; "
            "publish a new version instead",
            errors=field_errors(errors),
            reason="Immutable",
        )
    if new["spec"] == current.get("spec"):
        return _detail(current), 200
    out = kube().put(template_path(ns, name), new)
    return _detail(out), 200


@op(
    bp,
    "/templates/<name>/export",
    "GET",
    summary="Export a VMTemplate (optionally one version) as canonical YAML",
    response=(200, None, "the manifest, importable with POST /templates"),
    response_type="application/yaml",
    query=("namespace", "version"),
)
def export_template(name: str):
    ns = namespace()
    obj = kube().get(template_path(ns, check_name(name)))
    version = request.args.get("version") or None
    try:
        text = tmod.export_yaml(obj, version)
    except tmod.TemplateError as exc:
        raise Problem(404, str(exc), errors=field_errors(exc.errors)) from exc
    return Response(
        text, mimetype=YAML_TYPES[0], headers={"Content-Disposition": f'attachment; filename="{name}.yaml"'}
    )


@op(
    bp,
    "/templates/<name>",
    "DELETE",
    summary="Delete a VMTemplate (409 while VMs reference it)",
    response=(202, "Accepted", "deletion accepted"),
    query=("namespace",),
)
def delete_template(name: str):
    ns = namespace()
    check_name(name)
    template = kube().get(template_path(ns, name))  # 404 first
    check_version(template)  # 412 before the in-use check; the delete carries the precondition too
    vms = kube().get(vm_path(ns)).get("items", [])
    refusal = tmod.check_delete(template, vms)
    if refusal:
        raise Problem(409, refusal, reason="InUse")
    kube().delete(template_path(ns, name), body=delete_options())
    return deletion_accepted(c.TEMPLATE_KIND, name, ns)
