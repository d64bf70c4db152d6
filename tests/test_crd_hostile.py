"""Hostile values are refused by the API server (kubectl) and by the gateway's validation from the
same CRD schema, with the same answer: control characters, NUL and newlines in paths, URLs, kernel
command lines and SSH keys, and a VM moved away from the node that runs it."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest
from k3svirt_common import schema

KERNEL = "/var/lib/k3svirt/guest/vmlinuz"

HOSTILE = [
    ("spec.boot.kernel.path", {"boot": {"kernel": {"path": KERNEL + "\x00.img"}}}),
    ("spec.boot.kernel.path", {"boot": {"kernel": {"path": KERNEL + "\n"}}}),
    ("spec.boot.kernel.initrdPath", {"boot": {"kernel": {"path": KERNEL, "initrdPath": "/boot/x\r\n"}}}),
    ("spec.boot.kernel.cmdline", {"boot": {"kernel": {"path": KERNEL, "cmdline": "console=ttyS0\x00 init=/bin/sh"}}}),
    ("spec.boot.kernel.cmdline", {"boot": {"kernel": {"path": KERNEL, "cmdline": "a\nb"}}}),
    ("spec.disks[0].source.image.url", {"disks": [{"name": "d", "source": {"image": {"url": "http://x/a\nHost: y"}}}]}),
    ("spec.disks[0].source.image.url", {"disks": [{"name": "d", "source": {"image": {"url": "http://x/a b"}}}]}),
    ("spec.disks[0].source.image.url", {"disks": [{"name": "d", "source": {"image": {"url": "file:///x\n"}}}]}),
    ("spec.disks[0].source.volume.path", {"disks": [{"name": "d", "source": {"volume": {"path": "/v/x\x7f"}}}]}),
    ("spec.cloudInit.sshAuthorizedKeys[0]", {"cloudInit": {"sshAuthorizedKeys": ["ssh-ed25519 AAAA\nssh-rsa evil"]}}),
    ("spec.memory.maxSize", {"memory": {"size": "1Gi", "maxSize": "512Mi"}}),  # the balloon's ceiling below the RAM
]


def vm(name: str, extra: dict) -> dict:
    spec = {"memory": {"size": "64Mi"}, "runStrategy": "Halted", "nodeName": "no-operator-here", **extra}
    return {"apiVersion": "k3svirt.io/v1alpha1", "kind": "VirtualMachine", "metadata": {"name": name}, "spec": spec}


def kubectl(kubeconfig: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["kubectl", "--kubeconfig", kubeconfig, *args], input=stdin, capture_output=True,
                          text=True, timeout=60)  # fmt: skip


@pytest.mark.parametrize(("field", "extra"), HOSTILE, ids=[f"{f}-{i}" for i, (f, _) in enumerate(HOSTILE)])
def test_refused_by_the_api_server_and_by_the_gateway_schema(kubeconfig, namespace, field, extra):
    obj = vm(f"h-{uuid.uuid4().hex[:6]}", extra)
    errors = schema.validate_object("VirtualMachine", obj)
    assert field in {e.path for e in errors}, f"gateway schema accepted {field}: {errors}"
    proc = kubectl(kubeconfig, "-n", namespace, "create", "-f", "-", stdin=json.dumps(obj))
    assert proc.returncode != 0 and field.split("[")[0].rsplit(".", 1)[-1] in proc.stderr, proc.stderr


def test_clean_values_still_pass(kubeconfig, namespace):
    disk = {"name": "d", "source": {"image": {"url": "https://example.org/a.qcow2"}}}
    obj = vm("clean", {"boot": {"kernel": {"path": KERNEL, "cmdline": "console=ttyS0 quiet"}}, "disks": [disk]})
    assert schema.validate_object("VirtualMachine", obj) == []
    proc = kubectl(kubeconfig, "-n", namespace, "create", "-f", "-", stdin=json.dumps(obj))
    assert proc.returncode == 0, proc.stderr


def test_a_vm_cannot_be_moved_off_the_node_that_runs_it(kubeconfig, namespace):
    obj = vm("mover", {})
    assert kubectl(kubeconfig, "-n", namespace, "create", "-f", "-", stdin=json.dumps(obj)).returncode == 0
    # before a node runs it, the placement may still change
    ok = kubectl(kubeconfig, "-n", namespace, "patch", "vm", "mover", "--type=merge", "-p",
                 '{"spec":{"nodeName":"node-a"}}')  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    claim = kubectl(kubeconfig, "-n", namespace, "patch", "vm", "mover", "--subresource=status", "--type=merge",
                    "-p", '{"status":{"node":"node-a"}}')  # fmt: skip
    assert claim.returncode == 0, claim.stderr
    moved = kubectl(kubeconfig, "-n", namespace, "patch", "vm", "mover", "--type=merge", "-p",
                    '{"spec":{"nodeName":"node-b"}}')  # fmt: skip
    assert moved.returncode != 0 and "spec.nodeName" in moved.stderr and "Forbidden" in moved.stderr
    same = kubectl(kubeconfig, "-n", namespace, "patch", "vm", "mover", "--type=merge", "-p",
                   '{"spec":{"runStrategy":"Always"}}')  # fmt: skip
    assert same.returncode == 0, same.stderr  # other edits are unaffected
