"""Hostile request bodies get a 4xx problem+json on every write route, fast: JSON nested 20,000 deep
(used to be a 500 everywhere), and a YAML alias bomb."""

from __future__ import annotations

import re
import time

import pytest

DEEP = "[" * 20_000 + "]" * 20_000
BOMB = "\n".join(
    ["a: &a [x, x, x, x, x, x, x, x, x]"]
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)]
)


def write_routes(app) -> list[tuple[str, str]]:
    out = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1"):
            continue
        for method in sorted(rule.methods & {"POST", "PUT", "PATCH"}):
            out.append((method, re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"x\1", rule.rule)))
    return out


def test_there_are_write_routes(app):
    assert len(write_routes(app)) >= 8


@pytest.mark.parametrize("body_type", ["application/json", "application/merge-patch+json"])
def test_deeply_nested_json_is_a_400_on_every_write_route(app, client, admin, namespace, body_type):
    for method, path in write_routes(app):
        r = client.open(f"{path}?namespace={namespace}", method=method, data=DEEP,
                        headers={**admin, "Content-Type": body_type})  # fmt: skip
        assert r.status_code < 500, f"{method} {path}: {r.status_code} {r.get_data(as_text=True)[:300]}"
        if r.status_code == 400:
            assert r.mimetype == "application/problem+json" and "nested deeper" in r.json["detail"], (method, path)


def test_a_yaml_alias_bomb_is_refused_fast(client, admin, namespace):
    t0 = time.monotonic()
    r = client.post(f"/api/v1/templates/import?namespace={namespace}", data=BOMB,
                    headers={**admin, "Content-Type": "application/yaml"})  # fmt: skip
    assert 400 <= r.status_code < 500 and r.mimetype == "application/problem+json", r.get_data(as_text=True)
    assert time.monotonic() - t0 < 2


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ('{"name": "n", "spec": {"cpu": {"cores": NaN}}}', "NaN is not a JSON number"),
        ('{"name": "n", "spec": {"cpu": {"cores": -Infinity}}}', "-Infinity is not a JSON number"),
        ('{"name": "n", "spec": {"cloudInit": {"userData": "a\\ud800"}}}', "unpaired UTF-16 surrogate"),
        ('{"name": "n", "spec": {"nodeSelector": {"\\udfff": "x"}}}', "unpaired UTF-16 surrogate"),
    ],
)
def test_json_that_is_not_json_text_is_a_400(client, admin, namespace, body, detail):
    """Python's json reads NaN/Infinity and unpaired surrogate escapes; neither is JSON text (the
    API server refuses the first and silently stores U+FFFD for the second)."""
    r = client.post(f"/api/v1/vms?namespace={namespace}", data=body,
                    headers={**admin, "Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 400 and r.mimetype == "application/problem+json", r.get_data(as_text=True)
    assert detail in r.json["detail"]
