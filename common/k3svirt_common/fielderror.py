"""The one error type of k3svirt's validation: a field path and what is wrong with it (schema, CEL
rules and template operations all report these; the gateway turns them into problem+json)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class FieldError:
    """One validation failure: `path` like "spec.disks[0].bus", `message` like the API server's."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"

    @property
    def field(self) -> str:
        """Alias of path (the name the gateway's JSON errors use)."""
        return self.path
