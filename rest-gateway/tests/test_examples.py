"""The examples/ scripts run against the gunicorn gateway on 127.0.0.1 and the real API server. The
container examples wait for their pods to run and query the app through its Service: they need a
Ready node (`ready_node`)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests
from helpers import APP_IMAGE

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture()
def example_env(live_gateway, keys, admin):
    ns = f"gwex-{uuid.uuid4().hex[:8]}"
    assert (
        requests.post(f"{live_gateway}/api/v1/namespaces", json={"name": ns}, headers=admin, timeout=30).status_code
        == 201
    )
    yield {
        **os.environ,
        "GATEWAY_URL": live_gateway,
        "API_KEY": keys["admin"],
        "NAMESPACE": ns,
        "IMAGE": APP_IMAGE,
        "TIMEOUT": "150",
    }
    requests.delete(f"{live_gateway}/api/v1/namespaces/{ns}", headers=admin, timeout=30)


def _run(cmd: list[str], env: dict[str, str]) -> str:
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_vm_example(example_env):
    _run(["sh", str(EXAMPLES / "vm-from-template.sh")], example_env)


def _answer_line(out: str, message: str) -> None:
    answers = [line for line in out.splitlines() if line.startswith("answer: ")]
    assert answers, out
    if APP_IMAGE.startswith("localhost/k3svirt/http-echo:"):
        assert answers[0].startswith("answer: http-echo host=") and answers[0].endswith(f"message={message}"), out


def test_container_example(example_env, ready_node, live_gateway, admin):
    out = _run(["sh", str(EXAMPLES / "deploy-container.sh")], example_env)
    _answer_line(out, "hello from k3svirt")
    dep = requests.get(
        f"{live_gateway}/api/v1/deployments/hello",
        params={"namespace": example_env["NAMESPACE"]},
        headers=admin,
        timeout=30,
    ).json()
    assert dep["replicas"] == 2 and dep["readyReplicas"] == 2 and dep["env"]["MESSAGE"] == "updated", dep


def test_python_example(example_env, ready_node, live_gateway, admin):
    out = _run([sys.executable, str(EXAMPLES / "k3svirt_client.py")], example_env)
    _answer_line(out, "hello from python")
    ns = example_env["NAMESPACE"]
    vm = requests.get(f"{live_gateway}/api/v1/vms/py-vm", params={"namespace": ns}, headers=admin, timeout=30)
    assert vm.json()["spec"]["runStrategy"] == "Halted"
    dep = requests.get(f"{live_gateway}/api/v1/deployments/py-web", params={"namespace": ns}, headers=admin, timeout=30)
    assert dep.json()["replicas"] == 2 and dep.json()["readyReplicas"] == 2
