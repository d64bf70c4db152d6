"""GET /usage shaping (pure): the completed buckets of VMUsage objects within [from, to), per VM and
summed per namespace, by hour (the stored buckets) or by UTC day."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from k3svirt_common.names import USAGE_FIELDS as FIELDS

GRANULARITIES = ("hour", "day")


def parse_time(text: str) -> datetime:
    """RFC 3339 ('2026-01-01T00:00:00Z', an offset, or a bare date = its midnight UTC); ValueError else."""
    if len(text) > 40:
        raise ValueError("longer than 40 characters")
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        if "T" in text:
            raise ValueError("needs a time zone (Z or +hh:mm)")
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _zero() -> dict[str, float]:
    return dict.fromkeys(FIELDS, 0.0)


def _add(into: dict[str, float], bucket: Mapping[str, Any]) -> None:
    for k in FIELDS:
        value = bucket.get(k)
        if isinstance(value, int | float) and not isinstance(value, bool):
            into[k] += float(value)


def _key(start: datetime, granularity: str) -> str:
    if granularity == "day":
        start = start.replace(hour=0, minute=0, second=0)
    return rfc3339(start)


def usage_view(namespace: str, objects: Iterable[Mapping[str, Any]], start: datetime, end: datetime,
               granularity: str) -> dict[str, Any]:  # fmt: skip
    vms, ns_buckets, ns_total, lengths = [], {}, _zero(), set()
    for obj in objects:
        status = obj.get("status") or {}
        vm = status.get("vm") or {}
        per: dict[str, dict[str, float]] = {}
        total = _zero()
        for bucket in status.get("buckets") or []:
            try:
                at = parse_time(str(bucket["start"]))
            except (KeyError, TypeError, ValueError):
                continue  # not one of ours: skipped rather than guessed
            if not start <= at < end:
                continue
            key = _key(at, granularity)
            _add(per.setdefault(key, _zero()), bucket)
            _add(ns_buckets.setdefault(key, _zero()), bucket)
            _add(total, bucket)
            _add(ns_total, bucket)
        if isinstance(status.get("bucketSeconds"), int):
            lengths.add(status["bucketSeconds"])
        vms.append(
            {
                "name": vm.get("name", ""),
                "uid": vm.get("uid", ""),
                "node": status.get("node", ""),
                "buckets": [{"start": k, **v} for k, v in sorted(per.items())],
                "total": total,
            }
        )
    return {
        "namespace": namespace,
        "from": rfc3339(start),
        "to": rfc3339(end),
        "granularity": granularity,
        "bucketSeconds": sorted(lengths),
        "vms": sorted(vms, key=lambda v: (v["name"], v["uid"])),
        "total": {"buckets": [{"start": k, **v} for k, v in sorted(ns_buckets.items())], "total": ns_total},
    }
