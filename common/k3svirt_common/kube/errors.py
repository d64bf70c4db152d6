"""The one error type of the Kubernetes layer: an API server answer >= 400, or no answer at all."""

from __future__ import annotations

import json
from typing import Any

# status 0: the API server gave no HTTP answer (not configured, unreachable, timed out, broken stream).
NO_ANSWER = 0


class ApiError(Exception):
    """Carries what the API server's Status said: HTTP status, reason (e.g. NotFound, AlreadyExists,
    Conflict, Expired, Invalid), message and details (name, kind, causes: [{field, message}])."""

    def __init__(self, status: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}" if status else f"{reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.details = details or {}

    @property
    def answered(self) -> bool:
        """False when the API server never answered (connection refused, timeout, not configured)."""
        return self.status != NO_ANSWER

    @property
    def expired(self) -> bool:
        """410 Gone: a resourceVersion or continue token the API server no longer has."""
        return self.status == 410

    @property
    def causes(self) -> list[dict[str, str]]:
        return [c for c in self.details.get("causes") or [] if isinstance(c, dict)]

    @classmethod
    def from_status(cls, status: int, st: dict[str, Any]) -> ApiError:
        """From a decoded metav1.Status (an HTTP error body or a watch ERROR event's object)."""
        details = st.get("details")
        return cls(
            int(st.get("code") or status),
            str(st.get("reason") or ""),
            str(st.get("message") or f"HTTP {status}"),
            details if isinstance(details, dict) else None,
        )

    @classmethod
    def from_response(cls, status: int, payload: bytes) -> ApiError:
        try:
            st = json.loads(payload)
        except ValueError:
            st = None
        if not isinstance(st, dict) or st.get("kind") != "Status":
            text = payload.decode("utf-8", "replace").strip()[:300]
            return cls(status, "", text or f"HTTP {status}")
        err = cls.from_status(status, st)
        err.status = status  # the HTTP status wins over the body's code
        return err

    @classmethod
    def no_answer(cls, reason: str, exc: BaseException | str) -> ApiError:
        detail = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        return cls(NO_ANSWER, reason, detail)
