"""End-to-end fixtures: a real operator process against the test bed, and kubectl/virsh helpers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.polling import wait_until

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Operator:
    """The real k3svirt-operator as a subprocess (kopf + libvirt), restartable by tests."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [str(REPO / ".venv/bin/k3svirt-operator")], env=self.env, stdout=out, stderr=subprocess.STDOUT
        )
        url = f"http://127.0.0.1:{self.env['K3SVIRT_METRICS_PORT']}/healthz"
        try:
            wait_until(lambda: _http_ok(url), 90, f"operator did not come up; log: {self.log}")
        except AssertionError:
            self.stop()  # a fixture that fails here never reaches its teardown: no operator left behind
            raise

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:]) if self.log.exists() else ""


def _http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def console_key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One console ticket key per test session (k3svirt_common.console_ticket), mode 0600."""
    path = tmp_path_factory.getbasetemp() / "console-key"
    if not path.exists():
        from k3svirt_common.console_ticket import new_key

        path.touch(0o600)
        path.write_text(new_key() + "\n")
    return path


def operator_env(testbed: dict[str, str], **extra: str) -> dict[str, str]:
    """The e2e operator's environment, with a test's own settings on top."""
    env = {
        **os.environ,
        **testbed,
        # The test bed's node: the VMs' reservation pods are placed on it (docs/accounting.md).
        "K3SVIRT_NODE_NAME": testbed["K3SVIRT_NODE_NAME"],
        "K3SVIRT_STOP_GRACE_SECONDS": "3",
        "K3SVIRT_METRICS_PORT": str(free_port()),
        "K3SVIRT_STATS_INTERVAL": "1",
        "K3SVIRT_STATUS_SUMMARY_SECONDS": "5",
        # status.monitoring rewritten at least this often (default 300 s): tests that wait for a fresh
        # updatedAt (the API outage) need not wait minutes.
        "K3SVIRT_STATUS_SUMMARY_MAX_AGE_SECONDS": "10",
        "PYTHONUNBUFFERED": "1",
    }
    if os.environ.get("K3SVIRT_TESTBED_NODE") == "0":
        # No kubelet in this test bed: nothing could place reservation pods, so this operator runs as
        # one of a machine without a kubelet (development). With the node (CI, scripts/test.sh) the
        # operator uses the default: reservations on.
        env["K3SVIRT_RESERVATIONS"] = "off"
    return {**env, **extra}


@pytest.fixture(scope="module")
def operator(testbed: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    env = operator_env(
        testbed,
        # Serial consoles over WebSocket (test_vm_console.py): the key a gateway under test shares.
        K3SVIRT_CONSOLE_KEY_FILE=str(console_key_file(tmp_path_factory)),
        K3SVIRT_CONSOLE_PORT=str(free_port()),
    )
    op = Operator(env, tmp_path_factory.mktemp("operator") / "operator.log")
    op.start()
    yield op
    op.stop()
    sys.stdout.write(f"\n--- operator log tail ---\n{op.tail()}\n")


def kubectl(kubeconfig: str, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        ["kubectl", "--kubeconfig", kubeconfig, *args], input=stdin, capture_output=True, text=True, timeout=180
    )
    if check:
        assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
    return proc


def get_json(kubeconfig: str, *args: str) -> dict:
    return json.loads(kubectl(kubeconfig, "get", *args, "-o", "json").stdout)


def virsh(*args: str, check: bool = True) -> str:
    proc = subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True, text=True, timeout=60)
    if check:
        assert proc.returncode == 0, f"virsh {' '.join(args)}: {proc.stderr}"
    return proc.stdout.strip()


def tiny_vm(name: str, guest, **spec_overrides: object) -> dict:
    spec: dict = {
        "runStrategy": "Always",
        "nodeName": os.environ["K3SVIRT_NODE_NAME"],
        # A tenth of a CPU in the node's books: several test VMs fit on the 2-core test node.
        "cpu": {"cores": 1, "request": "100m"},
        "memory": {"size": "128Mi"},
        "boot": {
            "kernel": {
                "path": str(guest.kernel),
                "initrdPath": str(guest.initrd),
                # no_timer_check: a host starved of CPU (software emulation under load) made the guest kernel
                # panic at boot with "IO-APIC + timer doesn't work"; the check is pointless in a VM.
                "cmdline": f"console=ttyS0 quiet no_timer_check k3svirt.hostname={name}",
            }
        },
        "disks": [{"name": "scratch", "size": "64Mi", "source": {"blank": {}}}],
        "networks": [{"name": "default", "nat": {"network": "default"}}],
    }
    spec.update(spec_overrides)
    return {"apiVersion": "k3svirt.io/v1alpha1", "kind": "VirtualMachine", "metadata": {"name": name}, "spec": spec}
