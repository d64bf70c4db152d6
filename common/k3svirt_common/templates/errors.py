"""Errors of template operations: each names the field it concerns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class FieldError:
    """One problem, with the dotted path of the field it concerns (``overrides.cpu.cores``)."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class TemplateError(ValueError):
    """A template operation was refused; ``errors`` lists every offending field."""

    def __init__(self, errors: Sequence[FieldError] | FieldError | str, field_name: str = "spec"):
        if isinstance(errors, str):
            errors = [FieldError(field_name, errors)]
        elif isinstance(errors, FieldError):
            errors = [errors]
        self.errors: list[FieldError] = list(errors)
        super().__init__("; ".join(str(e) for e in self.errors))
