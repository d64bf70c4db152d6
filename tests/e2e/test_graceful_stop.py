"""spec.terminationGracePeriodSeconds: a guest that ignores its ACPI shutdown request is destroyed
after the VM's own grace (not the node's 30 s default), on stop and on delete."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

from .conftest import get_json, kubectl, tiny_vm, virsh, wait_until

# The guest stops listening to the power button once it has booted.
IGNORE_ACPI = "sleep 1; killall acpid; echo K3SVIRT-ACPI-IGNORED > /dev/console\n"


def _event_messages(kubeconfig: str, ns: str, name: str, reason: str) -> list[str]:
    items = get_json(kubeconfig, "events", "-n", ns, "--field-selector", f"involvedObject.name={name},reason={reason}")[
        "items"
    ]
    return [e["message"] for e in items]


def _deaf_vm(name: str, tiny_guest, grace: int) -> dict:
    vm = tiny_vm(name, tiny_guest, terminationGracePeriodSeconds=grace)
    vm["spec"]["boot"]["kernel"]["cmdline"] += f" k3svirt.run={base64.b64encode(IGNORE_ACPI.encode()).decode()}"
    return vm


def _wait_deaf(kubeconfig: str, ns: str, name: str) -> Path:
    kubectl(kubeconfig, "wait", "-n", ns, "--for=condition=Ready", f"vm/{name}", "--timeout=120s")
    console = Path(get_json(kubeconfig, "vm", name, "-n", ns)["status"]["consoleLog"])
    wait_until(
        lambda: console.exists() and "K3SVIRT-ACPI-IGNORED" in console.read_text(errors="replace"),
        60,
        f"the guest never stopped its ACPI handler; console: {console}",
    )
    return console


def test_stop_and_delete_destroy_after_the_vms_own_grace(kubeconfig, namespace, operator, tiny_guest):
    name, domain = "deaf", f"{namespace}_deaf"
    kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=json.dumps(_deaf_vm(name, tiny_guest, 3)))
    console = _wait_deaf(kubeconfig, namespace, name)

    # Stop: the request goes unanswered, so the domain is destroyed after 3 s, not 30.
    t0 = time.monotonic()
    kubectl(
        kubeconfig, "patch", "-n", namespace, f"vm/{name}", "--type=merge", "-p", '{"spec":{"runStrategy":"Halted"}}'
    )
    wait_until(lambda: virsh("domstate", domain, check=False) == "shut off", 30, "the deaf guest was not stopped")
    took = time.monotonic() - t0
    assert 3 <= took < 20, took
    assert "K3SVIRT-GUEST-POWEROFF" not in console.read_text(errors="replace")
    assert any("within 3 s" in m for m in wait_until(
        lambda: _event_messages(kubeconfig, namespace, name, "Destroyed"), 20, "no Destroyed event"
    ))  # fmt: skip

    # Delete while running: the same grace, then the domain is gone.
    kubectl(
        kubeconfig, "patch", "-n", namespace, f"vm/{name}", "--type=merge", "-p", '{"spec":{"runStrategy":"Always"}}'
    )
    kubectl(kubeconfig, "wait", "-n", namespace, "--for=condition=Ready", f"vm/{name}", "--timeout=120s")
    boots = console.read_text(errors="replace").count("K3SVIRT-ACPI-IGNORED")
    wait_until(
        lambda: console.read_text(errors="replace").count("K3SVIRT-ACPI-IGNORED") >= max(boots, 2),
        60,
        "the restarted guest did not come back deaf",
    )
    kubectl(kubeconfig, "delete", "-n", namespace, f"vm/{name}", "--timeout=60s")
    assert virsh("list", "--all", "--name").split().count(domain) == 0
    assert any("destroyed after 3 s" in m for m in wait_until(
        lambda: _event_messages(kubeconfig, namespace, name, "Undefined"), 20, "no Undefined event"
    ))  # fmt: skip
