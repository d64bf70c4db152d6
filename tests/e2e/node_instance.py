"""Node instances for e2e tests (tests/harness/node.sh with K3SVIRT_NODE_INSTANCE): a kubelet node of
its own on this machine, started and stopped by the test that needs it. Needs root (network
namespaces) and nsenter; CI runs as root."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import Operator, free_port

REPO = Path(__file__).resolve().parents[2]
NODE_SH = REPO / "tests/harness/node.sh"

needs_instances = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("nsenter"), reason="node instances need root and nsenter"
)


@dataclass
class NodeInstance:
    instance: int
    name: str
    env: dict[str, str]

    @property
    def pod_range(self) -> ipaddress.IPv4Network:
        return ipaddress.ip_network(f"10.42.{self.instance}.0/24")

    def node_sh(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(NODE_SH), *args], env=self.env, capture_output=True, text=True, timeout=300)


def free_instance() -> int:
    """K3SVIRT_E2E_NODE_INSTANCE, else the first instance whose namespace nobody holds."""
    if os.environ.get("K3SVIRT_E2E_NODE_INSTANCE"):
        return int(os.environ["K3SVIRT_E2E_NODE_INSTANCE"])
    taken = {os.environ.get("K3SVIRT_TESTBED_NODE_INSTANCE", "0")}
    return next(i for i in range(1, 100) if str(i) not in taken and not Path(f"/run/netns/k3svirt-n{i}").exists())


def start_instance(kubelet_config: Path | None = None, **settings: str) -> NodeInstance:
    """A new node instance (kubelet_config: a KubeletConfiguration fragment, node.sh's
    K3SVIRT_NODE_KUBELET_CONFIG; settings: more node.sh variables, e.g. K3SVIRT_NODE_CPU_MANAGER);
    fails the test when it does not come up."""
    i = free_instance()
    env = {**os.environ, **settings, "K3SVIRT_NODE_INSTANCE": str(i)}
    if kubelet_config is not None:
        env["K3SVIRT_NODE_KUBELET_CONFIG"] = str(kubelet_config)
    node = NodeInstance(i, "", env)
    started = node.node_sh("start")
    if started.returncode != 0:
        node.node_sh("stop")
        pytest.fail(f"node instance {i} did not start:\n{started.stderr[-3000:]}", pytrace=False)
    node.name = node.node_sh("name").stdout.strip()
    return node


def instance_operator(testbed: dict[str, str], node: str, log: Path, **extra: str) -> Operator:
    """The real operator for `node` (quick resyncs: the vanished-node sweep runs every 5 s)."""
    env = {**os.environ, **testbed, "K3SVIRT_NODE_NAME": node, "K3SVIRT_METRICS_PORT": str(free_port()),
           "K3SVIRT_STOP_GRACE_SECONDS": "3", "K3SVIRT_RESYNC_SECONDS": "5", "PYTHONUNBUFFERED": "1",
           **extra}  # fmt: skip
    op = Operator(env, log)
    op.start()
    return op
