"""The examples/ scripts run against the gunicorn gateway on 127.0.0.1 and the real API server."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture()
def example_env(live_gateway, keys, admin):
    ns = f"gwex-{uuid.uuid4().hex[:8]}"
    assert (
        requests.post(f"{live_gateway}/api/v1/namespaces", json={"name": ns}, headers=admin, timeout=30).status_code
        == 201
    )
    yield {**os.environ, "GATEWAY_URL": live_gateway, "API_KEY": keys["admin"], "NAMESPACE": ns}
    requests.delete(f"{live_gateway}/api/v1/namespaces/{ns}", headers=admin, timeout=30)


@pytest.mark.parametrize("script", ["vm-from-template.sh", "deploy-container.sh"])
def test_curl_examples(example_env, script):
    res = subprocess.run(["sh", str(EXAMPLES / script)], env=example_env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_python_example(example_env, live_gateway, admin):
    res = subprocess.run(
        [sys.executable, str(EXAMPLES / "k3svirt_client.py")],
        env=example_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    ns = example_env["NAMESPACE"]
    vm = requests.get(f"{live_gateway}/api/v1/vms/py-vm", params={"namespace": ns}, headers=admin, timeout=30)
    assert vm.json()["spec"]["runStrategy"] == "Halted"
    dep = requests.get(f"{live_gateway}/api/v1/deployments/py-web", params={"namespace": ns}, headers=admin, timeout=30)
    assert dep.json()["replicas"] == 2
