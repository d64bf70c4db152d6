"""Route declaration helpers: `op` registers a Flask route AND records its OpenAPI metadata on the
view function, so /openapi.json is built from the real URL map (every route, nothing stale)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from flask import Blueprint, current_app, json, request

from .auth import require_namespace
from .errors import Problem
from .schemas import NAME_PATTERN, SUBDOMAIN_PATTERN

JSON_TYPES = ("application/json",)
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml")

# Reusable query parameters (OpenAPI parameter objects).
PARAMS: dict[str, dict[str, Any]] = {
    "namespace": {
        "name": "namespace",
        "in": "query",
        "required": False,
        "description": "Kubernetes namespace (default: the gateway's default namespace, `default`)",
        "schema": {"type": "string", "pattern": NAME_PATTERN, "maxLength": 63},
    },
    "version": {
        "name": "version",
        "in": "query",
        "required": False,
        "description": "template version (semver); default: every version",
        "schema": {"type": "string", "maxLength": 64},
    },
    "container": {
        "name": "container",
        "in": "query",
        "required": False,
        "description": "container name (default: the pod's only container)",
        "schema": {"type": "string", "pattern": NAME_PATTERN, "maxLength": 63},
    },
    "tailLines": {
        "name": "tailLines",
        "in": "query",
        "required": False,
        "description": "only the last N lines",
        "schema": {"type": "integer", "minimum": 0, "maximum": 100000},
    },
    "previous": {
        "name": "previous",
        "in": "query",
        "required": False,
        "description": "the log of the previous (terminated) instance of the container",
        "schema": {"type": "boolean"},
    },
    "sinceSeconds": {
        "name": "sinceSeconds",
        "in": "query",
        "required": False,
        "description": "only lines written in the last N seconds",
        "schema": {"type": "integer", "minimum": 1, "maximum": 315360000},
    },
    "timestamps": {
        "name": "timestamps",
        "in": "query",
        "required": False,
        "description": "prefix every line with its RFC 3339 timestamp",
        "schema": {"type": "boolean"},
    },
    "limitBytes": {
        "name": "limitBytes",
        "in": "query",
        "required": False,
        "description": "stop after this many bytes (default 1 MiB, at most 8 MiB)",
        "schema": {"type": "integer", "minimum": 1, "maximum": 8 * 1024 * 1024},
    },
    "node": {
        "name": "node",
        "in": "query",
        "required": False,
        "description": "only this node",
        "schema": {"type": "string", "pattern": SUBDOMAIN_PATTERN, "maxLength": 253},
    },
    "labelSelector": {
        "name": "labelSelector",
        "in": "query",
        "required": False,
        "description": "Kubernetes label selector (e.g. app=web)",
        # Printable ASCII (label keys and values are ASCII): the longest selector, percent-encoded,
        # still fits the HTTP server's 8190-byte request line beside the other parameters.
        "schema": {"type": "string", "maxLength": 1024, "pattern": "^[ -~]*$"},
    },
}

DEFAULT_ERRORS = (400, 401, 403, 404, 409, 413, 415, 422, 503)


def op(
    bp: Blueprint,
    rule: str,
    method: str,
    *,
    summary: str,
    response: tuple[int, str | None, str] = (200, None, "OK"),
    body: str | None = None,
    body_types: tuple[str, ...] = JSON_TYPES,
    query: tuple[str | dict[str, Any], ...] = (),
    public: bool = False,
    any_scope: bool = False,
    role: str | None = None,
    errors: tuple[int, ...] = DEFAULT_ERRORS,
    description: str | None = None,
    response_type: str = "application/json",
    response_headers: dict[str, Any] | None = None,
    operation_id: str | None = None,
    names: str = "subdomain",
    also: dict[int, tuple[str | None, str]] | None = None,
    etag: bool = False,
    paged: bool = False,
    conditional: bool | None = None,
    namespace_param: str | None = None,
    websocket: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare one route (rule + method) with its documentation. `etag`: a single-object GET whose view
    calls conventions.versioned (ETag header); `paged`: a list answered by routes.list_items (limit,
    continue, Link). `conditional` (default: PATCH, PUT, DELETE): the view honours If-Match
    (conventions.parse_if_match); any other route refuses an If-Match with 400 rather than ignore it.

    Access (auth.check_request): `role` is the least key role the method needs (default: read for
    GET, admin for writes). A route taking the `namespace` query parameter acts in that namespace;
    `namespace_param` names a path argument that is the namespace instead; any other route is
    cluster-wide (a key for all namespaces only) unless `any_scope` (it shows no tenant's data, e.g.
    the API index, so every key may read it)."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        meta = {
            "summary": summary,
            "description": description or (fn.__doc__ or "").strip() or None,
            "response": response,
            "response_type": response_type,
            "response_headers": response_headers,
            "body": body,
            "body_types": body_types,
            "query": query,
            "public": public,
            "errors": errors,
            "tag": bp.name,
            "operation_id": operation_id or fn.__name__,
            "names": names,
            "also": also or {},
            "etag": etag,
            "paged": paged,
            "conditional": method in ("PATCH", "PUT", "DELETE") if conditional is None else conditional,
            "namespace_param": namespace_param,
        }
        ops = fn.__dict__.setdefault("k3s_ops", {})
        ops[method] = meta
        fn.k3s_public = public
        fn.k3s_any_scope = any_scope
        if role:
            fn.__dict__.setdefault("k3s_roles", {})[method] = role
        # websocket: the router matches the rule only for an Upgrade: websocket request (426 otherwise).
        bp.add_url_rule(rule, endpoint=fn.__name__, view_func=fn, methods=[method], websocket=websocket)
        return fn

    return deco


_NAME_RE = re.compile(SUBDOMAIN_PATTERN)
_LABEL_RE = re.compile(NAME_PATTERN)


def check_name(value: str, field: str = "name", label: bool = False) -> str:
    """Path/query names must be valid Kubernetes names: else 422 (they could never exist)."""
    limit = 63 if label else 253
    pattern = _LABEL_RE if label else _NAME_RE
    if not value or len(value) > limit or not pattern.match(value):
        kind = "DNS-1123 label" if label else "DNS-1123 subdomain"
        raise Problem(
            422,
            f"{field}: {value!r} is not a valid {kind}",
            title="Validation failed",
            errors=[{"field": field, "message": f"must be a {kind} (lower-case, <= {limit} chars)"}],
        )
    return value


def bad_query(name: str, message: str) -> Problem:
    return Problem(400, f"query parameter {name}: {message}", errors=[{"field": name, "message": message}])


def query_int(name: str) -> int | None:
    """An integer query parameter, bounded by its PARAMS schema; 400 naming it when invalid."""
    raw = request.args.get(name)
    if raw is None:
        return None
    schema = PARAMS[name]["schema"]
    lo, hi = schema.get("minimum", 0), schema.get("maximum")
    if not re.fullmatch(r"[0-9]{1,12}", raw) or int(raw) < lo or (hi is not None and int(raw) > hi):
        raise bad_query(name, f"must be an integer from {lo} to {hi}, got {raw[:40]!r}")
    return int(raw)


def query_str(name: str) -> str | None:
    """A string query parameter held to its PARAMS schema (maxLength, pattern); 400 naming it."""
    raw = request.args.get(name)
    if raw is None:
        return None
    schema = PARAMS[name]["schema"]
    if len(raw) > schema.get("maxLength", len(raw)):
        raise bad_query(name, f"longer than {schema['maxLength']} characters")
    if "pattern" in schema and not re.search(schema["pattern"], raw):
        raise bad_query(name, f"must match {schema['pattern']}, got {raw[:40]!r}")
    return raw


def query_bool(name: str) -> bool:
    """A boolean query parameter: true or false (absent = false); 400 naming it otherwise."""
    raw = request.args.get(name)
    if raw is None or raw == "false":
        return False
    if raw == "true":
        return True
    raise bad_query(name, f"must be true or false, got {raw[:40]!r}")


def namespace() -> str:
    """The request's namespace (?namespace=, else the default), held to the key's scope."""
    ns = request.args.get("namespace")
    if ns is None:
        ns = current_app.config["DEFAULT_NAMESPACE"]
    else:
        check_name(ns, "namespace", label=True)
    require_namespace(ns)
    return ns


def _mime() -> str:
    return (request.mimetype or "").lower()


def json_body() -> Any:
    """The JSON request body; 415 for another media type, 400 for malformed JSON."""
    if _mime() not in JSON_TYPES and not _mime().endswith("+json"):
        raise Problem(415, f"expected Content-Type application/json, got {request.mimetype or 'none'}")
    raw = request.get_data(cache=True)
    try:
        body = json.loads(raw, parse_constant=_not_json)
    except ValueError as exc:
        raise Problem(400, f"malformed JSON body: {exc}") from exc
    except RecursionError:
        raise Problem(400, f"malformed JSON body: nested deeper than {MAX_BODY_DEPTH} levels") from None
    problem = _shape_problem(body)
    if problem:
        raise Problem(400, f"malformed JSON body: {problem}")
    return body


MAX_BODY_DEPTH = 64  # as for YAML bodies (k3svirt_common.safeyaml); no resource of ours nests half as deep
_SURROGATE = re.compile("[\ud800-\udfff]")


def _not_json(constant: str) -> Any:
    # Python's json reads NaN/Infinity; JSON has no such numbers and the API server refuses them.
    raise ValueError(f"{constant} is not a JSON number")


def _shape_problem(value: Any) -> str | None:
    """Why a decoded body is not acceptable JSON text, walked iteratively (a hostile body cannot
    exhaust the stack): nested too deep, or a string with an unpaired UTF-16 surrogate ("\\ud800"
    is valid JSON syntax but no Unicode text; the API server would silently store U+FFFD instead)."""
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, str):
            if _SURROGATE.search(v):
                return f"the string {v[:40]!r} holds an unpaired UTF-16 surrogate (not Unicode text)"
        elif isinstance(v, dict | list):
            if d > MAX_BODY_DEPTH:
                return f"nested deeper than {MAX_BODY_DEPTH} levels"
            items = [*v.keys(), *v.values()] if isinstance(v, dict) else v
            stack.extend((c, d + 1) for c in items)
    return None


def created(payload: Any, location: str) -> tuple[Any, int, dict[str, str]]:
    return payload, 201, {"Location": location}
