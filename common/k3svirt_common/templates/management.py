"""Changing a VMTemplate's versions: adding and deprecating them, and the update rules (published
versions are immutable)."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import FieldError, TemplateError
from .semver import is_semver, parse_semver
from .validation import validate_version
from .versions import _name, _published, template_kind, versions_of


def add_version(
    obj: Mapping[str, Any],
    version: str,
    fragment: Mapping[str, Any],
    *,
    description: str | None = None,
    parameters: Sequence[Mapping[str, Any]] | None = None,
    validate: bool = True,
) -> dict[str, Any]:
    """Return a copy of ``obj`` with a new revision appended.

    Refused (TemplateError) when ``version`` is not semver, already published, or not greater than
    every published version (deprecated ones included), or when the fragment is invalid.
    """
    ver = parse_semver(version, field_name="version")
    published = _published(obj)
    if version in published:
        raise TemplateError(FieldError("version", f"version {version} is already published and immutable"))
    if published:
        highest = max(published, key=parse_semver)
        if not parse_semver(highest) < ver:
            raise TemplateError(
                FieldError("version", f"version {version} must be greater than the latest published {highest}")
            )
    entry: dict[str, Any] = {"version": version, "vm": copy.deepcopy(dict(fragment))}
    if description:
        entry["description"] = description
    if parameters:
        entry["parameters"] = copy.deepcopy(list(parameters))
    entry["deprecated"] = False
    if validate:
        errors = validate_version(entry, template_kind(obj), prefix="version")
        if errors:
            raise TemplateError(errors)
    new = copy.deepcopy(dict(obj))
    new.setdefault("spec", {}).setdefault("versions", []).append(entry)
    return new


def deprecate(obj: Mapping[str, Any], version: str, deprecated: bool = True) -> dict[str, Any]:
    """Return a copy of ``obj`` with ``version`` (un)marked deprecated (the only mutable field)."""
    new = copy.deepcopy(dict(obj))
    for entry in versions_of(new):
        if entry.get("version") == version:
            entry["deprecated"] = deprecated
            return new
    raise TemplateError(FieldError("version", f"VMTemplate {_name(obj)} has no version {version!r}"))


def check_update(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[FieldError]:
    """The API server's CEL transition rules, in Python (for the gateway's early, complete answer)."""
    errors = []
    if template_kind(old) != template_kind(new):
        errors.append(FieldError("spec.kind", "spec.kind is immutable"))
    new_by_version = {v.get("version"): (i, v) for i, v in enumerate(versions_of(new))}
    old_versions = [v.get("version") for v in versions_of(old)]
    for o in versions_of(old):
        ver = o.get("version")
        if ver not in new_by_version:
            errors.append(FieldError("spec.versions", f"published version {ver} cannot be removed (deprecate it)"))
            continue
        i, n = new_by_version[ver]
        for key in sorted((set(o) | set(n)) - {"deprecated", "version"}):
            if o.get(key) != n.get(key):
                errors.append(
                    FieldError(
                        f"spec.versions[{i}].{key}",
                        f"version {ver} is published and immutable; add a new version",
                    )
                )
    published = [v for v in old_versions if is_semver(v)]
    for ver, (i, _) in new_by_version.items():
        if ver in old_versions or not is_semver(ver) or not published:
            continue
        highest = max(published, key=parse_semver)
        if not parse_semver(highest) < parse_semver(ver):
            errors.append(
                FieldError(f"spec.versions[{i}].version", f"new version {ver} must be greater than {highest}")
            )
    return errors
