"""cloud-init's NoCloud seed reaches the guest: the tiny guest finds the device labelled cidata the
way cloud-init does, prints every file it read on the console and applies local-hostname."""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree as ET

from .conftest import get_json, kubectl, tiny_vm, virsh, wait_until

SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK3sV1rTseedKeyForTheE2eTestOnly0000000 e2e@k3svirt"
USER_MARKER = "K3SVIRT-USERDATA-MARKER-7f3a"


def _text(console: Path) -> str:
    return console.read_text(errors="replace") if console.exists() else ""


def _seed_lines(console: Path, file: str) -> list[str]:
    prefix = f"K3SVIRT-SEED {file}: "
    return [line.removeprefix(prefix).rstrip("\r") for line in _text(console).splitlines() if line.startswith(prefix)]


def test_seed_hostname_ssh_key_user_data_and_network_config_arrive(kubeconfig, namespace, operator, tiny_guest):
    name = "seeded"
    vm = tiny_vm(
        name,
        tiny_guest,
        cloudInit={
            "userData": f"#cloud-config\nruncmd:\n  - echo {USER_MARKER}\n",
            "sshAuthorizedKeys": [SSH_KEY],
            "metaData": "local-hostname: seeded-host\n",
            "networkData": "version: 2\nethernets:\n  eth0:\n    dhcp4: true\n",
        },
    )
    kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=json.dumps(vm))
    kubectl(kubeconfig, "wait", "-n", namespace, "--for=condition=Ready", f"vm/{name}", "--timeout=120s")
    status = get_json(kubeconfig, "vm", name, "-n", namespace)["status"]
    console = Path(status["consoleLog"])

    # The guest applied the seed's hostname (not the VM name the kernel command line carries).
    try:
        wait_until(lambda: "K3SVIRT-SEED-HOSTNAME seeded-host" in _text(console), 90, "")
    except AssertionError as e:
        raise AssertionError(f"the guest never reported the seed's hostname; console:\n{_text(console)[-3000:]}") from e
    meta = _seed_lines(console, "meta-data")
    assert f"instance-id: {get_json(kubeconfig, 'vm', name, '-n', namespace)['metadata']['uid']}" in meta
    user = _seed_lines(console, "user-data")
    assert user[0] == "#cloud-config"
    assert any(USER_MARKER in line for line in user), user
    assert any(SSH_KEY in line for line in user), user  # sshAuthorizedKeys merged into user-data
    assert "version: 2" in _seed_lines(console, "network-config")

    # The seed is a read-only virtio disk: cloud kernels (this guest's too) have no SATA driver.
    dom = ET.fromstring(virsh("dumpxml", f"{namespace}_{name}"))
    seeds = [d for d in dom.iterfind("devices/disk") if d.find("alias[@name='ua-cloudinit']") is not None]
    assert len(seeds) == 1 and seeds[0].get("device") == "disk"
    seed = seeds[0]
    assert seed.find("target").get("bus") == "virtio"
    assert seed.find("readonly") is not None
