"""NodeTuning end to end: a real operator applies it to FIXTURE sysfs/procfs roots (the host's tunables are
never written), records found/applied/conflicts in status.nodes.<node>, gives way to an older
NodeTuning, reports the hostSettings of the template a VM on the node uses, and restores every value
when the NodeTuning is deleted (its finalizer goes only then)."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from k3svirt_operator.tuning import parse

from tests.polling import wait_until

from .conftest import Operator, free_port, get_json, kubectl, tiny_vm

FILES = {
    "sys/kernel/mm/ksm/run": "0\n",
    "sys/kernel/mm/ksm/merge_across_nodes": "1\n",
    "sys/kernel/mm/transparent_hugepage/enabled": "always [madvise] never\n",
    "proc/sys/vm/swappiness": "60\n",
    "sys/block/sda/queue/scheduler": "[mq-deadline] kyber bfq none\n",
}


@pytest.fixture
def roots(tmp_path: Path) -> Path:
    for rel, text in FILES.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


@pytest.fixture
def tuned_operator(testbed, roots, tmp_path) -> Iterator[tuple[Operator, str, str]]:
    node, label = f"nt-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex[:10]
    env = {
        **os.environ,
        **testbed,
        "K3SVIRT_NODE_NAME": node,
        # a label no other operator has: no other node (with the real /sys) is ever selected
        "K3SVIRT_NODE_LABELS": f"k3svirt.io/tuning-test={label}",
        "K3SVIRT_NODE_SYSFS_ROOT": str(roots / "sys"),
        "K3SVIRT_NODE_PROC_ROOT": str(roots / "proc"),
        "K3SVIRT_RESERVATIONS": "off",
        "K3SVIRT_METRICS_PORT": str(free_port()),
        "K3SVIRT_STOP_GRACE_SECONDS": "2",
        "PYTHONUNBUFFERED": "1",
    }
    op = Operator(env, tmp_path / "operator.log")
    op.start()
    try:
        yield op, node, label
    finally:
        op.stop()


def _nt(name: str, label: str, **spec) -> dict:
    return {"apiVersion": "k3svirt.io/v1alpha1", "kind": "NodeTuning", "metadata": {"name": name},
            "spec": {"nodeSelector": {"k3svirt.io/tuning-test": label}, **spec}}  # fmt: skip


def _entry(kubeconfig: str, name: str, node: str) -> dict:
    obj = json.loads(kubectl(kubeconfig, "get", "nodetuning", name, "-o", "json", check=False).stdout or "{}")
    return ((obj.get("status") or {}).get("nodes") or {}).get(node) or {}


def _read(roots: Path) -> dict[str, str]:
    """The value each file selects, as the kernel's choice lists read ("always [madvise] never" -> madvise)."""
    return {rel: parse((roots / rel).read_text()) for rel in FILES}


ORIGINAL = {rel: parse(text) for rel, text in FILES.items()}


def test_node_tuning_applied_recorded_yielding_and_restored(kubeconfig, namespace, roots, tuned_operator, tiny_guest):
    op, node, label = tuned_operator
    a, b, c, other = (f"{p}-{label}" for p in ("a", "b", "c", "other"))
    spec = {"ksm": {"enabled": True}, "transparentHugepages": "never", "swappiness": 10,
            "ioSchedulers": [{"device": "sd*", "scheduler": "bfq"}]}  # fmt: skip
    try:
        kubectl(kubeconfig, "apply", "-f", "-", stdin=json.dumps(_nt(a, label, **spec)))
        entry = wait_until(lambda: (e := _entry(kubeconfig, a, node)).get("phase") == "Applied" and e, 60,
                           f"NodeTuning not applied; log:\n{op.tail(30)}")  # fmt: skip
        assert _read(roots) == {
            **ORIGINAL,
            "sys/kernel/mm/ksm/run": "1",
            "sys/kernel/mm/transparent_hugepage/enabled": "never",
            "proc/sys/vm/swappiness": "10",
            "sys/block/sda/queue/scheduler": "bfq",
        }
        assert entry["found"] == {"ksm.run": "0", "thp.enabled": "madvise", "vm.swappiness": "60",
                                  "block.sda.scheduler": "mq-deadline"}  # fmt: skip
        assert entry["applied"] == {"ksm.run": "1", "thp.enabled": "never", "vm.swappiness": "10",
                                    "block.sda.scheduler": "bfq"}  # fmt: skip
        finalizers = get_json(kubeconfig, "nodetuning", a)["metadata"].get("finalizers") or []
        assert f"k3svirt.io/node-{node}" in finalizers, finalizers

        # a younger NodeTuning for the same node yields; one for other nodes leaves no trace here
        kubectl(kubeconfig, "apply", "-f", "-", stdin=json.dumps(_nt(b, label, swappiness=5)))
        kubectl(kubeconfig, "apply", "-f", "-", stdin=json.dumps(_nt(other, "not-" + label, swappiness=1)))
        wait_until(lambda: _entry(kubeconfig, b, node).get("phase") == "Conflict", 60, "no Conflict on the younger")
        assert a in _entry(kubeconfig, b, node)["message"] and _read(roots)["proc/sys/vm/swappiness"] == "10"

        # a VM on this node built from a template whose hostSettings disagree: reported, not enforced
        host = {"ksm": False, "swappiness": 10}
        version = {"version": "1.0.0", "vm": {"memory": {"size": "128Mi"}}, "hostSettings": host}
        tmpl = {"apiVersion": "k3svirt.io/v1alpha1", "kind": "VMTemplate", "metadata": {"name": "tuned"},
                "spec": {"kind": "Template", "versions": [version]}}  # fmt: skip
        kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=json.dumps(tmpl))
        vm = tiny_vm("tuned", tiny_guest, nodeName=node, networks=[], runStrategy="Halted", template={"name": "tuned"})
        kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=json.dumps(vm))
        conflicts = wait_until(lambda: _entry(kubeconfig, a, node).get("conflicts"), 90,
                               f"no hostSettings conflict reported; log:\n{op.tail(30)}")  # fmt: skip
        assert conflicts == [f"{namespace}/tuned@1.0.0 wants ksm False; this NodeTuning sets ksm.run = 1"], conflicts

        # deleted: every value found is back, then the object goes; the younger one takes over
        kubectl(kubeconfig, "delete", "nodetuning", a, "--timeout=60s")
        wait_until(lambda: _read(roots)["proc/sys/vm/swappiness"] == "5", 90,
                   f"the younger NodeTuning did not take over; log:\n{op.tail(30)}")  # fmt: skip
        assert _read(roots) == {**ORIGINAL, "proc/sys/vm/swappiness": "5"}
        assert _entry(kubeconfig, b, node)["found"] == {"vm.swappiness": "60"}
        assert _entry(kubeconfig, other, node) == {}
        kubectl(kubeconfig, "delete", "nodetuning", b, "--timeout=60s")
        assert _read(roots) == ORIGINAL

        # a device the node does not have is reported by name (status and the Warning Event), the rest holds
        missing = {"swappiness": 20, "ioSchedulers": [{"device": "nvme9n1", "scheduler": "none"}]}
        kubectl(kubeconfig, "apply", "-f", "-", stdin=json.dumps(_nt(c, label, **missing)))
        entry = wait_until(lambda: (e := _entry(kubeconfig, c, node)).get("phase") == "PartlyApplied" and e, 60,
                           f"a missing device not reported; log:\n{op.tail(30)}")  # fmt: skip
        [error] = entry["errors"]
        assert error.startswith("ioSchedulers[0] (device nvme9n1): no such block device on this node"), error
        assert entry["applied"] == {"vm.swappiness": "20"}, entry
        assert entry["message"].startswith("1 of 2 settings hold"), entry  # (+ the tuned VM's conflict)
        events = wait_until(lambda: get_json(kubeconfig, "events", "-A", "--field-selector",
                                             f"involvedObject.name={c},reason=PartlyApplied")["items"], 30,
                            "no PartlyApplied Event")  # fmt: skip
        assert any("nvme9n1" in e["message"] and e["type"] == "Warning" for e in events), events
        kubectl(kubeconfig, "delete", "nodetuning", c, "--timeout=60s")
        assert _read(roots) == ORIGINAL
    finally:
        kubectl(kubeconfig, "delete", "nodetuning", a, b, c, other, "--ignore-not-found", "--timeout=60s", check=False)
        kubectl(kubeconfig, "delete", "-n", namespace, "vm/tuned", "--ignore-not-found", "--timeout=60s", check=False)
