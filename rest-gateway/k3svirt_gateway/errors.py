"""RFC 9457 problem details: the one error type the gateway raises and the one handler that renders it."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, has_request_context, json, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing.exceptions import WebsocketMismatch

log = logging.getLogger(__name__)

PROBLEM_TYPE_BASE = "https://k3svirt.io/problems/"
PROBLEM_JSON = "application/problem+json"

# The problem types this gateway answers with: one stable `type` URI per kind of failure (slug ->
# status, title, what it means). The OpenAPI document lists every one (components.examples), and
# tests check that every problem a response carries is one of these.
PROBLEM_TYPES: dict[str, tuple[int, str, str]] = {
    "bad-request": (400, "Bad Request", "malformed request: body, query parameter or header (see `errors`)"),
    "unauthorized": (401, "Unauthorized", "no API key, or an unknown one"),
    "forbidden": (403, "Forbidden", "the key's role does not allow this operation"),
    "not-found": (404, "Not Found", "no such route or object"),
    "method-not-allowed": (405, "Method Not Allowed", "the route does not answer this method (see `Allow`)"),
    "conflict": (409, "Conflict", "the object's state forbids this now (see `reason`)"),
    "gone": (410, "Gone", "a list `continue` token expired: list again from the first page"),
    "precondition-failed": (412, "Precondition Failed", "`If-Match` names another version than the object's"),
    "payload-too-large": (413, "Payload Too Large", "the request body exceeds the gateway's limit"),
    "unsupported-media-type": (415, "Unsupported Media Type", "the body's Content-Type is not accepted here"),
    "upgrade-required": (426, "Upgrade Required", "a WebSocket route asked for without the WebSocket upgrade"),
    "validation-error": (422, "Validation failed", "the body or a name is invalid (see `errors[].field`)"),
    "internal-error": (500, "Internal Server Error", "a gateway bug; the gateway log has the details"),
    "bad-gateway": (502, "Bad Gateway", "an upstream answered nonsense"),
    "unavailable": (503, "Service Unavailable", "the API server or a node endpoint is unreachable (see `Retry-After`)"),
    "gateway-timeout": (504, "Gateway Timeout", "an upstream did not answer in time"),
}
TITLES = {status: title for status, title, _ in PROBLEM_TYPES.values()}
SLUGS = {status: slug for slug, (status, _, _) in PROBLEM_TYPES.items()}


def problem_type(slug: str) -> str:
    return PROBLEM_TYPE_BASE + slug


class Problem(Exception):
    """An error that becomes an application/problem+json response."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        type_: str | None = None,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title or TITLES.get(status, "Error")
        self.type = type_ or problem_type(SLUGS.get(status, "internal-error"))
        self.errors = errors
        self.headers = headers or {}
        self.extra = extra

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors is not None:
            body["errors"] = self.errors
        if has_request_context():
            body["instance"] = request.path
        body.update(self.extra)
        return body


def problem_response(problem: Problem) -> Response:
    resp = Response(json.dumps(problem.to_dict()), status=problem.status, mimetype=PROBLEM_JSON)
    for k, v in problem.headers.items():
        resp.headers[k] = v
    return resp


def validation_problem(errors: list[dict[str, str]], detail: str | None = None) -> Problem:
    if detail is None:
        first = errors[0] if errors else {"field": "", "message": "invalid"}
        detail = f"{first['field'] or 'body'}: {first['message']}"
        if len(errors) > 1:
            detail += f" (and {len(errors) - 1} more)"
    return Problem(422, detail, title="Validation failed", errors=errors)


def register_error_handlers(app: Flask) -> None:
    """The one place exceptions become responses."""

    @app.errorhandler(Problem)
    def _problem(exc: Problem) -> Response:
        from .conventions import as_precondition_failure  # a stale If-Match: 409 Conflict -> 412

        return problem_response(as_precondition_failure(exc))

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        detail = exc.description or TITLES.get(status, "Error")
        headers: dict[str, str] = {}
        valid = getattr(exc, "valid_methods", None)
        if status == 405 and valid:
            headers["Allow"] = ", ".join(valid)
        if status == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            detail = f"request body exceeds the limit of {limit} bytes"
        if isinstance(exc, WebsocketMismatch):  # the router: a WebSocket route without the upgrade, or back
            upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
            if not upgrade:
                bad = _bad_path_name()
                if bad is not None:  # a name that could never exist is 422, as on every other route
                    return problem_response(bad)
                headers.update({"Upgrade": "websocket", "Connection": "Upgrade"})
                return problem_response(Problem(426, "this route is a WebSocket: send Connection: Upgrade and "
                                                "Upgrade: websocket", headers=headers))  # fmt: skip
            detail = "this route is no WebSocket: send the request without Upgrade: websocket"
        return problem_response(Problem(status, detail, headers=headers))

    def _bad_path_name() -> Problem | None:
        """The path's {name} checked like the WebSocket route itself would check it."""
        from .api import check_name

        try:
            _, args = app.url_map.bind_to_environ(request.environ).match(return_rule=True, websocket=True)
        except HTTPException:
            return None
        try:
            if "name" in args:
                check_name(str(args["name"]), label=True)
        except Problem as problem:
            return problem
        return None

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        # Last resort: anything that reaches here is a bug; API-server failures are mapped in k8s.py.
        log.exception("unhandled error", extra={"path": request.path, "method": request.method})
        return problem_response(Problem(500, "internal error; see the gateway log"))
