"""/usage: metered usage of a namespace's VMs (completed buckets of the operator's VMUsage records;
docs/metering.md). The base for billing: figures only, no prices."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flask import Blueprint, request
from k3svirt_common import names

from ..api import bad_query, namespace, op
from ..k8s import k3svirt_path
from ..usageview import GRANULARITIES, parse_time, usage_view
from . import kube

bp = Blueprint("usage", __name__)
MAX_RANGE = timedelta(days=400)


def blueprints() -> list[Blueprint]:
    return [bp]


def usage_path(ns: str, name: str | None = None) -> str:
    return k3svirt_path(names.VMUSAGE_PLURAL, ns, name)


def _time(name: str, default: datetime) -> datetime:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        return parse_time(raw)
    except ValueError as exc:
        raise bad_query(name, f"not an RFC 3339 time ({exc}), e.g. 2026-01-01T00:00:00Z") from exc


TIME_PARAM = {"in": "query", "required": False, "schema": {"type": "string", "maxLength": 40}}


@op(
    bp,
    "/usage",
    "GET",
    summary="Metered VM usage of a namespace, per VM and in total",
    response=(200, "Usage", "usage"),
    query=(
        "namespace",
        {**TIME_PARAM, "name": "from", "description": "first bucket start included (RFC 3339; default: to - 24 h)"},
        {**TIME_PARAM, "name": "to", "description": "buckets starting before this (RFC 3339; default: now)"},
        {
            "name": "granularity",
            "in": "query",
            "required": False,
            "description": "hour (stored buckets) or day",
            "schema": {"type": "string", "enum": list(GRANULARITIES)},
        },  # fmt: skip
    ),
)
def get_usage():
    """Completed buckets only (an open bucket is not billable yet): CPU seconds, memory GiB-hours
    allocated and used, disk GB-hours, network bytes in and out. Records outlive their VMs."""
    ns = namespace()
    end = _time("to", datetime.now(UTC))
    start = _time("from", end - timedelta(hours=24))
    granularity = request.args.get("granularity", "hour")
    if granularity not in GRANULARITIES:
        raise bad_query("granularity", f"one of {', '.join(GRANULARITIES)}")
    if start >= end:
        raise bad_query("from", "must be before to")
    if end - start > MAX_RANGE:
        raise bad_query("from", f"the range may span at most {MAX_RANGE.days} days")
    items = kube().get(usage_path(ns)).get("items") or []
    return usage_view(ns, items, start, end, granularity)
