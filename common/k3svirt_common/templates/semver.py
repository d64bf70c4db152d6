"""Semantic versions (semver 2.0.0) of template versions: parse, compare, sort."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from .errors import FieldError, TemplateError

# semver 2.0.0, https://semver.org (no leading "v"); kept identical to crds/vmtemplates.yaml
SEMVER_PATTERN = (
    r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(?:-((?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
_SEMVER_RE = re.compile(SEMVER_PATTERN)


@functools.total_ordering
@dataclass(frozen=True)
class SemVer:
    """A parsed semantic version, ordered by semver precedence (build metadata ignored)."""

    major: int
    minor: int
    patch: int
    prerelease: tuple[int | str, ...] = ()
    build: str = ""
    text: str = field(default="", compare=False)

    def _key(self) -> tuple:
        # a release sorts after its pre-releases; numeric identifiers sort before alphanumeric ones
        pre = tuple((0, p, "") if isinstance(p, int) else (1, 0, p) for p in self.prerelease)
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, pre)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SemVer) and self._key() == other._key()

    def __lt__(self, other: SemVer) -> bool:
        return self._key() < other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __str__(self) -> str:
        return self.text


def parse_semver(text: str, *, field_name: str = "version") -> SemVer:
    """Parse ``MAJOR.MINOR.PATCH[-pre][+build]``; TemplateError naming ``field_name`` otherwise."""
    m = _SEMVER_RE.match(text) if isinstance(text, str) else None
    if not m:
        raise TemplateError(
            FieldError(field_name, f"{text!r} is not a semantic version (MAJOR.MINOR.PATCH, e.g. 1.0.0)")
        )
    pre = tuple(int(p) if p.isdigit() else p for p in m.group(4).split(".")) if m.group(4) else ()
    return SemVer(int(m.group(1)), int(m.group(2)), int(m.group(3)), pre, m.group(5) or "", text)


def is_semver(text: str) -> bool:
    return isinstance(text, str) and bool(_SEMVER_RE.match(text))


def sort_versions(versions: Iterable[str]) -> list[str]:
    """Versions in ascending semver order."""
    return sorted(versions, key=parse_semver)
