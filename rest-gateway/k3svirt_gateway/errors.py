"""RFC 9457 problem details: the one error type the gateway raises and the one handler that renders it."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, has_request_context, json, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

PROBLEM_TYPE_BASE = "https://k3svirt.io/problems/"
PROBLEM_JSON = "application/problem+json"

TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Entity",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

SLUGS = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "payload-too-large",
    415: "unsupported-media-type",
    422: "validation-error",
    500: "internal-error",
    502: "bad-gateway",
    503: "unavailable",
    504: "gateway-timeout",
}


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
        self.type = type_ or PROBLEM_TYPE_BASE + SLUGS.get(status, "error")
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
        return problem_response(exc)

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
        return problem_response(Problem(status, detail, headers=headers))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        # Last resort: anything that reaches here is a bug; API-server failures are mapped in k8s.py.
        log.exception("unhandled error", extra={"path": request.path, "method": request.method})
        return problem_response(Problem(500, "internal error; see the gateway log"))
