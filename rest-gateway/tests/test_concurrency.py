"""50 concurrent POSTs of the same VM name: exactly one 201, the rest 409 (API server's AlreadyExists)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import requests


def test_concurrent_creates_same_name(live_gateway, admin, namespace):
    url = f"{live_gateway}/api/v1/vms?namespace={namespace}"
    body = {"name": "race", "spec": {"memory": {"size": "64Mi"}}}

    def post(_):
        with requests.Session() as s:
            return s.post(url, json=body, headers=admin, timeout=30).status_code

    with ThreadPoolExecutor(max_workers=50) as pool:
        codes = list(pool.map(post, range(50)))
    assert codes.count(201) == 1, codes
    assert codes.count(409) == 49, codes
