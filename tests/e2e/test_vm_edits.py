"""Edits of a running VM against real libvirt: memory and vCPUs below their maxima are applied live
(balloon, vCPU hot-plug) and the status says so; anything else sets RestartRequired until a restart.
The gateway's PATCH and kubectl patch reach the same operator path."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
import requests

from tests.e2e.conftest import get_json, kubectl, tiny_vm, virsh
from tests.gateway_proc import gateway
from tests.polling import wait_until

VM = "edit"


@pytest.fixture(scope="module")
def vm(kubeconfig, operator, tiny_guest, tmp_path_factory) -> Iterator[tuple[str, str]]:
    ns = f"ed-{uuid.uuid4().hex[:8]}"
    kubectl(kubeconfig, "create", "namespace", ns)
    spec = tiny_vm(VM, tiny_guest, memory={"size": "128Mi", "maxSize": "256Mi"},
                   cpu={"sockets": 1, "maxVcpus": 2, "request": "100m"})  # fmt: skip
    kubectl(kubeconfig, "apply", "-n", ns, "-f", "-", stdin=json.dumps(spec))
    wait_until(lambda: status(kubeconfig, ns).get("printableStatus") == "Running", 300, "VM not running")
    yield kubeconfig, ns
    kubectl(kubeconfig, "delete", "vm", "--all", "-n", ns, "--wait=true", "--timeout=120s", check=False)
    kubectl(kubeconfig, "delete", "namespace", ns, "--wait=false", check=False)


def status(kubeconfig: str, ns: str) -> dict:
    return get_json(kubeconfig, "vm", VM, "-n", ns).get("status") or {}


def condition(kubeconfig: str, ns: str, kind: str) -> dict:
    return next((c for c in status(kubeconfig, ns).get("conditions") or [] if c["type"] == kind), {})


def test_memory_and_vcpus_are_applied_live(vm):
    kubeconfig, ns = vm
    wait_until(lambda: status(kubeconfig, ns).get("liveResources"), 60, "no status.liveResources")
    assert status(kubeconfig, ns)["liveResources"]["maxVcpus"] == 2
    domid = virsh("domid", f"{ns}_{VM}")
    kubectl(kubeconfig, "patch", "vm", VM, "-n", ns, "--type=merge",
            "-p", json.dumps({"spec": {"memory": {"size": "192Mi"}, "cpu": {"sockets": 2}}}))  # fmt: skip
    wait_until(lambda: (status(kubeconfig, ns).get("liveResources") or {}).get("vcpus") == 2, 120,
               "vCPU not hot-plugged")  # fmt: skip
    assert virsh("vcpucount", f"{ns}_{VM}", "--live", "--active") == "2"
    # The balloon gives the guest 192 MiB: libvirt's current figure follows once the guest's driver acted.
    wait_until(lambda: (status(kubeconfig, ns).get("liveResources") or {}).get("memory") == "196608Ki", 180,
               "balloon not at 192Mi")  # fmt: skip
    live_xml = virsh("dumpxml", f"{ns}_{VM}")
    assert "<currentMemory unit='KiB'>196608</currentMemory>" in live_xml, live_xml[:800]
    assert virsh("domid", f"{ns}_{VM}") == domid, "the domain was restarted, not changed live"
    wait_until(lambda: condition(kubeconfig, ns, "RestartRequired").get("status") == "False", 60,
               "RestartRequired after a live change")  # fmt: skip
    events = kubectl(kubeconfig, "get", "events", "-n", ns, "-o", "json").stdout
    assert "LiveUpdated" in events


def test_other_changes_wait_for_the_restart_through_the_gateway(vm, tmp_path):
    kubeconfig, ns = vm
    keys = tmp_path / "keys"
    key = subprocess.run([sys.executable, "-m", "k3svirt_gateway.keys", "add", "ed", "--role", "admin", "--file",
                          str(keys)], check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    env = {"KUBECONFIG": kubeconfig, "K3SVIRT_API_KEYS_FILE": str(keys), "K3SVIRT_API_KEYS_SECRET": ""}
    with gateway(env, tmp_path / "gateway.log") as (url, _proc):
        api, auth = f"{url}/api/v1/vms/{VM}?namespace={ns}", {"Authorization": f"Bearer {key}"}
        merge = {**auth, "Content-Type": "application/merge-patch+json"}
        etag = requests.get(api, headers=auth, timeout=10).headers["ETag"]
        # The balloon goes too (the next test's refusal needs a guest without one): also a restart.
        r = requests.patch(api, json={"spec": {"devices": {"rng": True, "memballoon": False}}}, headers=merge,
                           timeout=10)  # fmt: skip
        assert r.status_code == 200, r.text
        # The version read before that write is stale now: the edit is refused, not merged blindly.
        stale = requests.patch(api, json={"spec": {"devices": {"rng": False}}}, headers={**merge, "If-Match": etag},
                               timeout=10)  # fmt: skip
        assert stale.status_code == 412, stale.text
    wait_until(lambda: condition(kubeconfig, ns, "RestartRequired").get("status") == "True", 60,
               "no RestartRequired for a device change")  # fmt: skip
    assert condition(kubeconfig, ns, "RestartRequired")["reason"] == "SpecChanged"
    assert "<rng" not in virsh("dumpxml", f"{ns}_{VM}")  # not yet in the running guest
    kubectl(kubeconfig, "annotate", "vm", VM, "-n", ns, f"k3svirt.io/action-request=restart/{time.time_ns()}",
            "--overwrite")  # fmt: skip
    wait_until(lambda: "<rng" in virsh("dumpxml", f"{ns}_{VM}", check=False), 240, "restart did not apply the rng")
    wait_until(lambda: condition(kubeconfig, ns, "RestartRequired").get("status") == "False", 120,
               "RestartRequired stayed after the restart")  # fmt: skip
    assert "<memballoon model='none'/>" in virsh("dumpxml", f"{ns}_{VM}")


def test_a_live_change_libvirt_refuses_waits_for_the_restart(vm):
    """No balloon device since the restart above: a memory.size change under maxSize is tried live, libvirt
    refuses it, and the status says so (RestartRequired, LiveUpdateFailed with libvirt's reason)."""
    kubeconfig, ns = vm
    # the previous test's restart may still be bringing the domain back: start from a running one
    wait_until(lambda: virsh("domid", f"{ns}_{VM}") != "-", 120, "the domain is not running again after the restart")
    domid = virsh("domid", f"{ns}_{VM}")
    before = virsh("dumpxml", f"{ns}_{VM}")
    kubectl(kubeconfig, "patch", "vm", VM, "-n", ns, "--type=merge",
            "-p", json.dumps({"spec": {"memory": {"size": "160Mi"}}}))  # fmt: skip
    wait_until(lambda: condition(kubeconfig, ns, "RestartRequired").get("reason") == "LiveUpdateFailed", 60,
               "no LiveUpdateFailed for a memory change without a balloon")  # fmt: skip
    cond = condition(kubeconfig, ns, "RestartRequired")
    assert cond["status"] == "True" and "balloon" in cond["message"], cond
    events = json.loads(kubectl(kubeconfig, "get", "events", "-n", ns, "-o", "json").stdout)["items"]
    failed = [e for e in events if e.get("reason") == "LiveUpdateFailed"]
    assert failed and failed[0]["type"] == "Warning" and "balloon" in failed[0]["message"], failed
    assert virsh("domid", f"{ns}_{VM}") == domid  # refused, not restarted
    current = "<currentMemory unit='KiB'>"
    assert before.split(current, 1)[1][:12] == virsh("dumpxml", f"{ns}_{VM}").split(current, 1)[1][:12]
