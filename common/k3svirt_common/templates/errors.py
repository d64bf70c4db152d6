"""Errors of template operations: each names the field it concerns."""

from __future__ import annotations

from collections.abc import Sequence

from k3svirt_common.fielderror import FieldError


class TemplateError(ValueError):
    """A template operation was refused; ``errors`` lists every offending field."""

    def __init__(self, errors: Sequence[FieldError] | FieldError | str, field_name: str = "spec"):
        if isinstance(errors, str):
            errors = [FieldError(field_name, errors)]
        elif isinstance(errors, FieldError):
            errors = [errors]
        self.errors: list[FieldError] = list(errors)
        super().__init__("; ".join(str(e) for e in self.errors))
