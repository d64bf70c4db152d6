"""Build the OpenAPI 3.0 document from the app's URL map and the routes' `op` metadata.

The VirtualMachine and VMTemplate schemas are the CRDs' openAPIV3Schema, loaded at runtime through
k3svirt_common.schema (never copied here). Regenerate the committed copy (no cluster needed) with:

    .venv/bin/python -m k3svirt_gateway.openapi > rest-gateway/openapi.json
"""

from __future__ import annotations

import copy
import json
import re
import sys
from importlib import metadata
from typing import Any

from flask import Flask

from .api import PARAMS, YAML_TYPES
from .conventions import ETAG_HEADER, IF_MATCH, LINK_HEADER, PAGE_PARAMS
from .errors import PROBLEM_JSON, PROBLEM_TYPES, SLUGS, TITLES, problem_type
from .schemas import COMPONENTS, NAME_PATTERN, PCI_ADDRESS_PATTERN, SUBDOMAIN_PATTERN, crd_parts

_CONVERTER = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


def _version() -> str:
    try:
        return metadata.version("k3svirt-gateway")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def crd_components() -> dict[str, Any]:
    return copy.deepcopy(crd_parts())


# A manifest for the YAML request/response bodies (documented as strings with this example).
TEMPLATE_MANIFEST_EXAMPLE = """\
apiVersion: k3svirt.io/v1alpha1
kind: VMTemplate
metadata:
  name: small
spec:
  kind: Template
  versions:
    - version: 1.0.0
      vm:
        cpu: {cores: 1}
        memory: {size: 512Mi}
"""
# format binary: the manifest's bytes, as sent (generators give it as a file/bytes, not a parsed model).
YAML_MANIFEST = {"schema": {"type": "string", "format": "binary"}, "example": TEMPLATE_MANIFEST_EXAMPLE}


def oas30(schema: Any) -> Any:
    """OpenAPI 3.0 Schema Objects have no `propertyNames`: keep the rule as the `x-propertyNames`
    extension (the gateway validates with the full JSON Schema; the document stays valid 3.0)."""
    if isinstance(schema, dict):
        return {("x-propertyNames" if k == "propertyNames" else k): oas30(v) for k, v in schema.items()}
    if isinstance(schema, list):
        return [oas30(v) for v in schema]
    return schema


def problem_examples() -> dict[str, Any]:
    """Every problem type URI the gateway answers with, described (components.examples)."""
    return {
        f"problem-{slug}": {
            "summary": f"{status} {title}",
            "description": f"`type: {problem_type(slug)}`: {meaning}",
            "value": {"type": problem_type(slug), "title": title, "status": status, "detail": meaning},
        }
        for slug, (status, title, meaning) in PROBLEM_TYPES.items()
    }


def _path_param(name: str, kind: str) -> dict[str, Any]:
    if name == "address":
        schema = {"type": "string", "pattern": PCI_ADDRESS_PATTERN}
        desc = "PCI address, domain:bus:slot.function (e.g. 0000:01:00.0)"
    elif kind == "label":
        schema = {"type": "string", "pattern": NAME_PATTERN, "minLength": 1, "maxLength": 63}
        desc = "object name (DNS-1123 label)"
    else:
        schema = {"type": "string", "pattern": SUBDOMAIN_PATTERN, "minLength": 1, "maxLength": 253}
        desc = "object name (DNS-1123 subdomain)"
    return {"name": name, "in": "path", "required": True, "description": desc, "schema": schema}


ERROR_CODES = (400, 401, 403, 404, 409, 410, 412, 413, 415, 422, 426, 502, 503)


def _error_responses() -> dict[str, Any]:
    out = {}
    for code in ERROR_CODES:
        media = {
            "schema": {"$ref": "#/components/schemas/Problem"},
            "examples": {SLUGS[code]: {"$ref": f"#/components/examples/problem-{SLUGS[code]}"}},
        }
        resp: dict[str, Any] = {"description": TITLES[code], "content": {PROBLEM_JSON: media}}
        if code == 401:
            resp["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
        out[str(code)] = resp
    return out


def build(app: Flask) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for rule in app.url_map.iter_rules():
        view = app.view_functions.get(rule.endpoint)
        ops = getattr(view, "k3s_ops", None)
        if not ops:
            continue
        path = _CONVERTER.sub(r"{\1}", rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            meta = ops.get(method)
            if meta is None:
                continue
            params = [_path_param(a, meta.get("names", "subdomain")) for a in sorted(rule.arguments)]
            query = list(meta["query"]) + (list(PAGE_PARAMS) if meta.get("paged") else [])
            for q in query:
                params.append({"$ref": f"#/components/parameters/{q}"} if isinstance(q, str) else q)
            errors = list(meta["errors"])
            if meta.get("conditional"):
                params.append({"$ref": "#/components/parameters/If-Match"})
                errors.append(412)
            if meta.get("paged"):
                errors.append(410)
            code, schema_name, desc = meta["response"]
            content: dict[str, Any] = {}
            if schema_name:
                content[meta["response_type"]] = {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}
            elif meta["response_type"] in YAML_TYPES:
                content[meta["response_type"]] = copy.deepcopy(YAML_MANIFEST)
            elif meta["response_type"] == "application/json":
                content["application/json"] = {"schema": {"type": "object"}}
            else:
                content[meta["response_type"]] = {"schema": {"type": "string"}}
            ok: dict[str, Any] = {"description": desc, "content": content}
            if code == 101:  # a WebSocket upgrade: no body, the protocol switches
                ok = {"description": desc}
            if code == 201:
                ok["headers"] = {"Location": {"schema": {"type": "string"}, "description": "URL of the new object"}}
            if meta.get("response_headers"):
                ok.setdefault("headers", {}).update(meta["response_headers"])
            if meta.get("etag"):
                ok.setdefault("headers", {}).update(ETAG_HEADER)
            if meta.get("paged"):
                ok.setdefault("headers", {}).update(LINK_HEADER)
            responses: dict[str, Any] = {str(code): ok}
            for extra_code, (extra_schema, extra_desc) in sorted(meta.get("also", {}).items()):
                extra_content = {meta["response_type"]: {"schema": {"$ref": f"#/components/schemas/{extra_schema}"}}}
                responses[str(extra_code)] = {"description": extra_desc, "content": extra_content}
            for err in sorted(set(errors)):
                if meta["public"] and err in (401, 403):
                    continue
                responses[str(err)] = {"$ref": f"#/components/responses/{err}"}
            operation: dict[str, Any] = {
                "operationId": meta["operation_id"],
                "summary": meta["summary"],
                "tags": [meta["tag"]],
                "parameters": params,
                "responses": responses,
            }
            if meta.get("description"):
                operation["description"] = meta["description"]
            if meta["body"]:
                operation["requestBody"] = {
                    "required": True,
                    "content": {
                        t: copy.deepcopy(YAML_MANIFEST)
                        if t in YAML_TYPES
                        else {"schema": {"$ref": f"#/components/schemas/{meta['body']}"}}
                        for t in meta["body_types"]
                    },
                }
            if meta["public"]:
                operation["security"] = []
            elif method not in ("GET",):
                operation["description"] = (
                    operation.get("description", "") + "\n\nRequires a key with role `admin`."
                ).strip()
            if not params:
                del operation["parameters"]
            paths.setdefault(path, {})[method.lower()] = operation
    schemas = oas30({**copy.deepcopy(COMPONENTS), **crd_components()})
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "k3svirt REST gateway",
            "version": _version(),
            "description": (
                "One API for k3svirt's KVM virtual machines (VirtualMachine / VMTemplate / PCIPassthrough "
                "custom resources, run by the node operator) and plain K3s workloads. Errors are "
                "`application/problem+json` (RFC 9457) with `errors: [{field, message}]` on validation "
                "failures and a stable `type` URI per kind of failure (components.examples lists them). "
                "Single-object GETs answer `ETag`; PATCH/PUT/DELETE take `If-Match` (412 on another version). "
                "Lists take `limit` and `continue` and answer `continue`, `next` and `Link: rel=next`. "
                "`GET /api/v1` lists the resources and optional features this gateway serves. "
                "Authenticate with `Authorization: Bearer <key>`, `X-API-Key: <key>` or HTTP basic "
                "(password = key). Keys have role `read` (GET only) or `admin`."
            ),
        },
        "tags": [
            {"name": t}
            for t in (
                "vms",
                "templates",
                "pci",
                "deployments",
                "services",
                "pods",
                "stats",
                "nodes",
                "namespaces",
                "meta",
            )
        ],
        "security": [{"bearerAuth": []}, {"apiKeyHeader": []}, {"basicAuth": []}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer"},
                "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "basicAuth": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "any user name, password = key",
                },
            },
            "parameters": {**copy.deepcopy(PARAMS), **copy.deepcopy(PAGE_PARAMS), "If-Match": copy.deepcopy(IF_MATCH)},
            "responses": _error_responses(),
            "examples": problem_examples(),
            "schemas": dict(sorted(schemas.items())),
        },
    }


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=False) + "\n"


def main() -> int:
    from .app import create_app

    app = create_app({"API_KEYS_FILE": None, "API_KEYS_SECRET": None})
    sys.stdout.write(dumps(build(app)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
