"""Kubernetes label selectors (the string form): one parser, one Requirement, one match rule.

Used by the gateway's list cache (`?labelSelector=`, set-based forms included; anything this parser
refuses is left to the API server, which lists directly) and by the VM Services convention
(`k3svirt.io/vm-selector`, which adds its own limits and refuses set-based forms: vmservice.py).

Grammar: comma-separated requirements `k=v`, `k==v`, `k!=v`, `k in (v1, v2)`, `k notin (v)`, `k`,
`!k`. Keys are an optional DNS-subdomain prefix and `/`, then a name of at most 63 characters; values
at most 63 alphanumerics, `-`, `_`, `.` (or empty). `gt`/`lt` and anything else raise SelectorError.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")
_SET_BASED = re.compile(r"(?P<key>[^\s!=(),]+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)")

OPS = ("=", "!=", "in", "notin", "exists", "!exists")


class SelectorError(ValueError):
    """Not a selector this parser accepts; the message says which part and why."""


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # one of OPS
    values: frozenset[str] = frozenset()

    @property
    def value(self) -> str:
        """The value of an `=` / `!=` requirement ("" for the others)."""
        return next(iter(self.values)) if self.op in ("=", "!=") else ""

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.op in ("=", "in"):
            return present and labels[self.key] in self.values
        if self.op in ("!=", "notin"):
            return not present or labels[self.key] not in self.values
        if self.op == "exists":
            return present
        return not present


def check_key(key: str) -> str:
    prefix, slash, name = key.rpartition("/")
    ok = bool(_LABEL_NAME.fullmatch(name)) and (
        not slash or (len(prefix) <= 253 and bool(_DNS_SUBDOMAIN.fullmatch(prefix)))
    )
    if not ok:
        raise SelectorError(f"{key!r} is not a label key (optional DNS prefix/, then a name of at most 63 characters)")
    return key


def check_value(value: str) -> str:
    if not _LABEL_VALUE.fullmatch(value):
        raise SelectorError(f"{value!r} is not a label value (at most 63 alphanumerics, '-', '_', '.')")
    return value


def split(text: str) -> list[str]:
    """The requirements, stripped: commas inside `( )` do not split."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur).strip())
    return parts


def _requirement(part: str, set_based: bool) -> Requirement:
    if m := _SET_BASED.fullmatch(part):
        if not set_based:
            raise SelectorError(
                f"{part[:80]!r}: set-based requirements (in, notin) are not supported; use k=v, k!=v, k or !k"
            )
        values = [v.strip() for v in m["values"].split(",")]
        if not any(values):
            raise SelectorError(f"{part[:80]!r}: a set needs at least one value")
        return Requirement(check_key(m["key"]), m["op"], frozenset(check_value(v) for v in values))
    if "!=" in part:
        key, value = part.split("!=", 1)
        return Requirement(check_key(key.strip()), "!=", frozenset([check_value(value.strip())]))
    if "=" in part:
        key, value = part.split("==", 1) if "==" in part else part.split("=", 1)
        return Requirement(check_key(key.strip()), "=", frozenset([check_value(value.strip())]))
    if part.startswith("!"):
        return Requirement(check_key(part[1:].strip()), "!exists")
    return Requirement(check_key(part), "exists")


def parse(text: str | None, *, set_based: bool = True) -> list[Requirement]:
    """The requirements of `text` ([] for none or only spaces). SelectorError names the bad part."""
    if not text or not text.strip():
        return []
    out = []
    for part in split(text):
        if not part:
            raise SelectorError("the selector has an empty requirement (',,' or a trailing ',')")
        out.append(_requirement(part, set_based))
    return out


def matches(requirements: Iterable[Requirement], labels: Mapping[str, str]) -> bool:
    return all(r.matches(labels) for r in requirements)
