"""Fixtures shared by every test directory: the real test bed (libvirt + API server + tiny guest).

The first test that asks for the test bed brings it up with tests/harness/testbed.sh (idempotent: a
running libvirtd or API server is reused). Nothing here is mocked: a test bed that cannot start
makes the tests that need it error out with the harness's one-line reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import install_inventory

REPO = Path(__file__).resolve().parent

# Record every program the session starts, for tests/test_install_step.py (runs last, see below).
sys.addaudithook(install_inventory.record_launch)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    last = [i for i in items if i.name == "test_programs_started_during_this_session"]
    items[:] = [i for i in items if i not in last] + last


@dataclass(frozen=True)
class TinyGuest:
    kernel: Path
    initrd: Path
    marker: str = "K3SVIRT-GUEST-READY"


@pytest.fixture(scope="session")
def testbed() -> dict[str, str]:
    proc = subprocess.run(
        ["bash", str(REPO / "tests/harness/testbed.sh"), "start"], capture_output=True, text=True, timeout=1800
    )
    if proc.returncode != 0:
        pytest.fail(f"the test bed did not come up:\n{proc.stderr[-3000:]}", pytrace=False)
    env = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    os.environ.update(env)
    return env


@pytest.fixture(scope="session")
def kubeconfig(testbed: dict[str, str]) -> str:
    return testbed["KUBECONFIG"]


@pytest.fixture(scope="session")
def libvirt_uri(testbed: dict[str, str]) -> str:
    return testbed["LIBVIRT_DEFAULT_URI"]


@pytest.fixture(scope="session")
def domain_type(testbed: dict[str, str]) -> str:
    """kvm where KVM really runs a guest here, qemu (software emulation) otherwise."""
    return testbed["K3SVIRT_DOMAIN_TYPE"]


@pytest.fixture(scope="session")
def storage_root(testbed: dict[str, str]) -> Path:
    return Path(testbed["K3SVIRT_STORAGE_ROOT"])


@pytest.fixture(scope="session")
def tiny_guest(testbed: dict[str, str]) -> TinyGuest:
    return TinyGuest(Path(testbed["K3SVIRT_GUEST_KERNEL"]), Path(testbed["K3SVIRT_GUEST_INITRD"]))


@pytest.fixture(scope="session")
def libvirt_conn(libvirt_uri: str) -> Iterator[object]:
    import libvirt

    conn = libvirt.open(libvirt_uri)
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def k8s_api_client(kubeconfig: str) -> object:
    from kubernetes import config

    return config.new_client_from_config(config_file=kubeconfig)


@pytest.fixture
def namespace(k8s_api_client: object) -> Iterator[str]:
    """A fresh namespace, deleted after the test."""
    from kubernetes import client

    core = client.CoreV1Api(k8s_api_client)
    name = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)
