"""A VMTemplate's versions: which exist, its kind, the latest, resolving a pin."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from .errors import FieldError, TemplateError
from .semver import is_semver, parse_semver, sort_versions

KIND_TEMPLATE = "Template"
KIND_PRESET = "Preset"


def versions_of(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``spec.versions`` of a VMTemplate object (empty list when absent)."""
    return list(((obj or {}).get("spec") or {}).get("versions") or [])


def template_kind(obj: Mapping[str, Any]) -> str:
    return ((obj or {}).get("spec") or {}).get("kind") or KIND_TEMPLATE


def _name(obj: Mapping[str, Any]) -> str:
    return ((obj or {}).get("metadata") or {}).get("name") or "<unnamed>"


def latest_version(obj: Mapping[str, Any], *, include_deprecated: bool = False) -> str | None:
    """Highest published version; deprecated versions are skipped unless ``include_deprecated``."""
    candidates = [
        v["version"]
        for v in versions_of(obj)
        if is_semver(v.get("version")) and (include_deprecated or not v.get("deprecated"))
    ]
    return max(candidates, key=parse_semver) if candidates else None


def get_version(obj: Mapping[str, Any], version: str) -> dict[str, Any] | None:
    for v in versions_of(obj):
        if v.get("version") == version:
            return v
    return None


def resolve(
    template_obj: Mapping[str, Any], version: str | None = None, *, field_name: str = "template.version"
) -> tuple[str, dict[str, Any]]:
    """Pick a revision of a VMTemplate: ``(version, deep copy of its vm fragment)``.

    ``version`` given: exactly that revision, even if deprecated (a pinned VM keeps working).
    ``version`` None: the highest non-deprecated revision by semver precedence; an object whose
    every revision is deprecated cannot be used unpinned. Unknown versions raise TemplateError
    naming ``field_name``.
    """
    name = _name(template_obj)
    if version is None:
        version = latest_version(template_obj)
        if version is None:
            raise TemplateError(
                FieldError(
                    field_name,
                    f"VMTemplate {name} has no non-deprecated version; pin one explicitly "
                    f"(published: {', '.join(sort_versions(_published(template_obj))) or 'none'})",
                )
            )
    entry = get_version(template_obj, version)
    if entry is None:
        raise TemplateError(
            FieldError(
                field_name,
                f"VMTemplate {name} has no version {version!r} "
                f"(published: {', '.join(sort_versions(_published(template_obj))) or 'none'})",
            )
        )
    return version, copy.deepcopy(entry.get("vm") or {})


def _published(obj: Mapping[str, Any]) -> list[str]:
    return [v["version"] for v in versions_of(obj) if is_semver(v.get("version"))]
