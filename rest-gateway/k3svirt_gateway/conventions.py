"""The HTTP conventions every route shares: ETag / If-Match (from the objects' resourceVersion) and
list pagination (`limit` + an opaque `continue` token over Kubernetes' own continue).

* `versioned(obj)` in a single-object GET: the response carries `ETag: "<resourceVersion>"`.
* Conditional routes (every PATCH/PUT/DELETE, and POSTs on one object declared `op(conditional=True)`):
  `If-Match` is parsed before the view runs (app.py; 400 when malformed, refused on other routes); the
  view hands the version to the API server as its precondition (`delete_options()`, `with_version()`,
  or `check_version()` on the object it read and then writes), so check and write are one atomic step
  there; the API server's 409 Conflict for a stale version becomes 412 (`as_precondition_failure`).
  `If-Match: *` means "any version".
* `paged(list_fn, project)`: with `limit` or `continue` the list is read from the API server a page at
  a time (its continue token pins the first page's snapshot, so pages stay consistent while others
  write); the gateway's token wraps Kubernetes' one, binds it to the route, namespace and selector and
  is signed (HMAC): a forged inner token (e.g. a future resourceVersion the API server would wait for,
  then answer 504) never reaches the API server.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from flask import Response, current_app, g, request

from .errors import Problem

# ----------------------------------------------------------------------------------- ETag / If-Match
# The API server's resourceVersions are decimal (etcd/kine revisions): the only ETags we give out.
_OUR_TAG = re.compile(r"[1-9][0-9]{0,18}")
MAX_RESOURCE_VERSION = 2**63 - 1
ETAG_HEADER = {
    "ETag": {
        "schema": {"type": "string"},
        "description": 'the object\'s version (its resourceVersion), quoted: `"12345"`; send it back in '
        "`If-Match` to change or delete only that version",
    }
}
IF_MATCH = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "description": 'only if the object is still at this version (an `ETag` from a GET, e.g. `"12345"`, or '
    "`*` for any): else 412 precondition-failed",
    "schema": {"type": "string", "maxLength": 80, "example": '"12345"'},
}


def etag(obj: dict[str, Any]) -> str | None:
    rv = (obj.get("metadata") or {}).get("resourceVersion")
    return f'"{rv}"' if isinstance(rv, str) and _OUR_TAG.fullmatch(rv) else None


def versioned(obj: dict[str, Any]) -> dict[str, Any]:
    """Mark `obj` (as the API server returned it) as this response's object: its version is the ETag."""
    g.k3s_etag = etag(obj)
    return obj


def add_etag(resp: Response) -> Response:
    """after_request hook."""
    tag = g.pop("k3s_etag", None)
    if tag and resp.status_code == 200 and request.method == "GET":
        resp.headers["ETag"] = tag
    return resp


_TAG_SYNTAX = re.compile(r'(W/)?"([\x21\x23-\x7e]{1,80})"')  # RFC 9110 entity-tag, bounded


def parse_if_match() -> None:
    """Called before a write's view: the wanted resourceVersion (None: no precondition) in g. Malformed
    -> 400. A well-formed tag that cannot be a version of ours (weak, non-decimal, 0, out of range)
    matches nothing -> 412 at once (RFC 9110), and never reaches the API server (which reads "0" as
    "no precondition" and fails with 500 on a non-number)."""
    raw = request.headers.get("If-Match")
    g.k3s_if_match = None
    if raw is None or raw.strip() == "*":
        return
    m = _TAG_SYNTAX.fullmatch(raw.strip())
    if not m:
        raise Problem(
            400,
            f'If-Match must be one entity tag like "12345" (an ETag of this API) or *, got {raw[:40]!r}',
            errors=[{"field": "If-Match", "message": "expected one quoted ETag or *"}],
        )
    weak, tag = m[1], m[2]
    if weak or not _OUR_TAG.fullmatch(tag) or int(tag) > MAX_RESOURCE_VERSION:
        raise precondition_failed("no object of this API has that version")
    g.k3s_if_match = tag


def if_match() -> str | None:
    """The resourceVersion the caller's If-Match asks for, or None."""
    return g.get("k3s_if_match")


def with_version(patch: dict[str, Any]) -> dict[str, Any]:
    """A merge patch that the API server applies only at the If-Match version (if one was sent)."""
    rv = if_match()
    if rv is not None:
        patch = {**patch, "metadata": {**(patch.get("metadata") or {}), "resourceVersion": rv}}
    return patch


def delete_options(**options: Any) -> dict[str, Any] | None:
    """DeleteOptions with the If-Match version as precondition; None when there is nothing to send."""
    rv = if_match()
    if rv is not None:
        options["preconditions"] = {"resourceVersion": rv}
    return options or None


def check_version(obj: dict[str, Any]) -> None:
    """412 now when the object read is not at the If-Match version (for read-check-write routes)."""
    rv = if_match()
    if rv is not None and (obj.get("metadata") or {}).get("resourceVersion") != rv:
        raise precondition_failed()


def precondition_failed(detail: str = "") -> Problem:
    return Problem(
        412,
        f"If-Match {request.headers.get('If-Match', '')[:80]}: the object is at another version"
        + (f" ({detail})" if detail else "")
        + "; GET it again for its current ETag",
    )


def as_precondition_failure(problem: Problem) -> Problem:
    """The API server's 409 Conflict on a write that carried our precondition means: stale version."""
    if problem.status == 409 and problem.extra.get("reason") == "Conflict" and if_match() is not None:
        return precondition_failed(problem.detail[:200])
    return problem


# -------------------------------------------------------------------------------------- pagination
MAX_LIMIT = 500
PAGE_PARAMS: dict[str, dict[str, Any]] = {
    "limit": {
        "name": "limit",
        "in": "query",
        "required": False,
        "description": f"at most this many items (1-{MAX_LIMIT}); the answer's `continue`/`next` (and "
        "`Link: rel=next`) fetch the rest. Pages come from one consistent snapshot of the list",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
    },
    "continue": {
        "name": "continue",
        "in": "query",
        "required": False,
        "description": "the `continue` token of the previous page (opaque; valid only for the same route, "
        "namespace and labelSelector; 410 gone once expired: list again from the start)",
        "schema": {"type": "string", "maxLength": 2048, "pattern": "^[A-Za-z0-9_.-]*$"},
    },
}
LINK_HEADER = {
    "Link": {
        "schema": {"type": "string"},
        "description": 'the next page, when there is one: `</api/v1/...&continue=...>; rel="next"`',
    }
}
LIST_PAGE_PROPERTIES = {
    "continue": {"type": "string", "description": "token for the next page; absent on the last page"},
    "next": {"type": "string", "description": "URL of the next page; absent on the last page"},
}


def _bad(name: str, message: str) -> Problem:
    return Problem(400, f"query parameter {name}: {message}", errors=[{"field": name, "message": message}])


def _scope(ns: str, selector: str | None) -> str:
    """What a token is bound to (route, namespace, selector), hashed: tokens stay short whatever the
    selector's length."""
    digest = hashlib.sha256(json.dumps([request.path, ns, selector or ""]).encode()).digest()[:12]
    return base64.urlsafe_b64encode(digest).decode()


def continue_key(configured: str | None) -> bytes:
    return hashlib.sha256(configured.encode()).digest() if configured else secrets.token_bytes(32)


def _sign(payload: bytes) -> str:
    mac = hmac.new(current_app.extensions["k3svirt.continue_key"], payload, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def _encode(scope: str, k8s_token: str) -> str:
    raw = json.dumps({"v": 1, "s": scope, "k": k8s_token}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=") + "." + _sign(raw)


def _decode(token: str, scope: str) -> str:
    if len(token) > PAGE_PARAMS["continue"]["schema"]["maxLength"]:
        raise _bad("continue", "token too long")
    body, _, mac = token.partition(".")
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise _bad("continue", "not a continue token of this API") from None
    if not hmac.compare_digest(mac, _sign(raw)):
        raise _bad("continue", "not a continue token of this gateway (or it restarted): list from the first page")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _bad("continue", "not a continue token of this API") from None
    if not (isinstance(data, dict) and data.get("v") == 1 and isinstance(data.get("k"), str) and data["k"]):
        raise _bad("continue", "not a continue token of this API")
    if data.get("s") != scope:
        raise _bad("continue", "the token belongs to another list (route, namespace or labelSelector)")
    return data["k"]


def page_request(ns: str, selector: str | None) -> tuple[int, str | None] | None:
    """(limit, Kubernetes continue token) when the caller asked for a page, else None."""
    raw_limit, token = request.args.get("limit"), request.args.get("continue")
    if raw_limit is None and token is None:
        return None
    limit = MAX_LIMIT
    if raw_limit is not None:
        if not re.fullmatch(r"[0-9]{1,6}", raw_limit) or not 1 <= int(raw_limit) <= MAX_LIMIT:
            raise _bad("limit", f"must be an integer from 1 to {MAX_LIMIT}, got {raw_limit[:40]!r}")
        limit = int(raw_limit)
    return limit, (_decode(token, _scope(ns, selector)) if token else None)


def paged(
    list_fn: Callable[[dict[str, Any]], dict[str, Any]],
    project: Callable[[dict[str, Any]], dict[str, Any]],
    ns: str,
    selector: str | None,
    page: tuple[int, str | None],
) -> tuple[dict[str, Any], int, dict[str, str]]:
    """One page of a list read from the API server through `list_fn(query)`."""
    limit, k8s_token = page
    query: dict[str, Any] = {"labelSelector": selector, "limit": limit}
    if k8s_token:
        query["continue"] = k8s_token
    try:
        out = list_fn(query)
    except Problem as exc:
        if k8s_token and exc.extra.get("reason") == "Expired":
            detail = f"the continue token expired: list again from the first page ({exc.detail[:160]})"
            raise Problem(410, detail) from None
        if k8s_token and exc.status == 400:
            raise _bad("continue", f"refused by the API server: {exc.detail[:160]}") from None
        raise
    body: dict[str, Any] = {"items": [project(o) for o in out.get("items", [])]}
    headers: dict[str, str] = {}
    nxt = (out.get("metadata") or {}).get("continue")
    if nxt:
        token = _encode(_scope(ns, selector), nxt)
        args = {k: v for k, v in request.args.items() if k not in ("continue", "limit")}
        url = f"{request.path}?{urlencode({**args, 'limit': limit, 'continue': token})}"
        body["continue"], body["next"] = token, url
        headers["Link"] = f'<{url}>; rel="next"'
    return body, 200, headers
