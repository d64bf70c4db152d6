"""Hugepages in the shared books on a real kubelet (issue 16, item 4): a node instance's kubelet reports
the machine's 1 GiB and 2 MiB pools as `hugepages-1Gi`/`hugepages-2Mi` capacity and allocatable; a VM
asking for 1Gi pages is accounted (its reservation pod requests `hugepages-1Gi`), waits Unschedulable
while a pod holds the node's 1Gi pages in the books, starts on a real 1 GiB page once they are free,
and a second one finds no free page in the kernel (InsufficientHugepages). A 2Mi VM likewise asks for
`hugepages-2Mi`.

The pages are reserved at run time on this machine (/sys/kernel/mm/hugepages/hugepages-<size>kB/
nr_hugepages; grown by what the test needs and shrunk by the same number after) BEFORE the node
instance's kubelet starts: the kubelet reads the pools when it starts (docs/accounting.md). A machine
that cannot give a 1 GiB page at run time skips the 1Gi test saying so; the 2Mi parts still run.
The VMs run on a private libvirtd whose namespace mounts a 2 MiB and a 1 GiB hugetlbfs
(tests/harness/private-libvirt.sh); they have no NICs (it has no networks).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from k3svirt_common import names
from k3svirt_common import reservation as rsv
from k3svirt_common.quantity import parse_quantity

from tests.e2e.conftest import Operator, get_json, kubectl, tiny_vm
from tests.e2e.node_instance import NodeInstance, instance_operator, needs_instances, start_instance
from tests.polling import wait_until

pytestmark = needs_instances

REPO = Path(__file__).resolve().parents[2]
GIB = 1 << 30
POOLS = {"1Gi": Path("/sys/kernel/mm/hugepages/hugepages-1048576kB"),
         "2Mi": Path("/sys/kernel/mm/hugepages/hugepages-2048kB")}  # fmt: skip
WANT = {"1Gi": 1, "2Mi": 72}  # one 1 GiB guest; one 128Mi guest (64 pages) and a few more


@dataclass
class Pool:
    size: str
    path: Path
    added: int = 0  # pages this test added (and removes again)
    total_at_start: int = 0  # nr_hugepages when the kubelet started
    why_not: str = ""  # set when the kernel did not give the pages

    def count(self, name: str) -> int:
        return int((self.path / name).read_text())

    def available(self) -> int:
        return self.count("free_hugepages") - self.count("resv_hugepages")

    def grow(self, n: int) -> None:
        if not self.path.is_dir():
            self.why_not = f"this kernel has no {self.size} hugepage pool ({self.path} is missing)"
            return
        before = self.count("nr_hugepages")
        try:
            (self.path / "nr_hugepages").write_text(f"{before + n}\n")
        except OSError as exc:
            self.why_not = f"{self.path}/nr_hugepages refused {before + n}: {exc}"
            return
        self.added = self.count("nr_hugepages") - before
        if self.added < n:
            self.why_not = f"the kernel gave {self.added} of {n} {self.size} pages ({self.path}/nr_hugepages)"

    def shrink(self) -> None:
        if self.added > 0:
            (self.path / "nr_hugepages").write_text(f"{max(self.count('nr_hugepages') - self.added, 0)}\n")


@pytest.fixture(scope="module")
def pools() -> Iterator[dict[str, Pool]]:
    """WANT pages added to each pool of this machine; removed again after the module."""
    found = {size: Pool(size, path) for size, path in POOLS.items()}
    try:
        for size, pool in found.items():
            pool.grow(WANT[size])
        yield found
    finally:
        for pool in found.values():
            pool.shrink()


@pytest.fixture(scope="module")
def huge_node(testbed: dict[str, str], pools: dict[str, Pool]) -> Iterator[NodeInstance]:
    """A node instance whose kubelet starts after the pages were reserved."""
    for pool in pools.values():
        pool.total_at_start = pool.count("nr_hugepages") if pool.path.is_dir() else 0
    node = start_instance()
    yield node
    node.node_sh("stop")


@pytest.fixture(scope="module")
def hp_libvirt(testbed: dict[str, str]) -> Iterator[str]:
    root = Path(testbed["K3SVIRT_STORAGE_ROOT"])
    d = str(root.parent / f"{root.name}-hp1g")

    def plv(*args: str) -> str:
        proc = subprocess.run(["bash", str(REPO / "tests/harness/private-libvirt.sh"), *args, d],
                              capture_output=True, text=True, timeout=180)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout.strip()

    uri = plv("start")
    try:
        yield uri
    finally:
        plv("stop")


@pytest.fixture(scope="module")
def hp_operator(testbed, huge_node, hp_libvirt, tmp_path_factory) -> Iterator[Operator]:
    op = instance_operator(testbed, huge_node.name, tmp_path_factory.mktemp("op") / "operator.log",
                           K3SVIRT_RESERVATIONS="on", LIBVIRT_DEFAULT_URI=hp_libvirt)  # fmt: skip
    yield op
    op.stop()


def _ready(kubeconfig: str, ns: str, name: str) -> dict:
    vm = get_json(kubeconfig, "vm", name, "-n", ns)
    return {c["type"]: c for c in (vm.get("status") or {}).get("conditions") or []}.get("Ready") or {}


def _hp_vm(name: str, guest, node: str, size: str, page: str) -> str:
    return json.dumps(tiny_vm(name, guest, nodeName=node, networks=[],
                              memory={"size": size, "hugepages": {"pageSize": page}}))  # fmt: skip


def _virsh(uri: str, *args: str) -> str:
    return subprocess.run(["virsh", "-c", uri, *args], capture_output=True, text=True, timeout=60).stdout.strip()


def test_kubelet_reports_both_hugepage_pools(kubeconfig, pools, huge_node):
    node = get_json(kubeconfig, "node", huge_node.name)["status"]
    print(f"\nnode {huge_node.name}: " + ", ".join(
        f"{part} hugepages-{size} {node[part].get(f'hugepages-{size}')}" for part in ("capacity", "allocatable")
        for size in POOLS))  # fmt: skip
    for size, pool in pools.items():
        if not pool.path.is_dir():
            continue
        page = parse_quantity(size)
        want = pool.total_at_start * page
        for part in ("capacity", "allocatable"):
            got = node[part].get(f"hugepages-{size}")
            assert got is not None and parse_quantity(got) == want, (part, size, node[part])
    if pools["1Gi"].why_not:
        pytest.skip(f"1 GiB pages: {pools['1Gi'].why_not} (hugepages-2Mi checked)")
    assert parse_quantity(node["capacity"]["hugepages-1Gi"]) >= GIB


def test_a_2mi_vm_asks_the_books_for_hugepages_2mi(kubeconfig, namespace, pools, huge_node, hp_operator, hp_libvirt,
                                                    tiny_guest):  # fmt: skip
    if pools["2Mi"].why_not:
        pytest.skip(pools["2Mi"].why_not)
    before = pools["2Mi"].available()
    kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=_hp_vm("small", tiny_guest, huge_node.name,
                                                                          "128Mi", "2Mi"))  # fmt: skip
    wait_until(lambda: _ready(kubeconfig, namespace, "small").get("status") == "True", 240,
               f"the 2Mi VM is not Ready; log:\n{hp_operator.tail()}")  # fmt: skip
    pod = get_json(kubeconfig, "pod", rsv.pod_name("small"), "-n", namespace)
    res = pod["spec"]["containers"][0]["resources"]
    assert res["requests"]["hugepages-2Mi"] == res["limits"]["hugepages-2Mi"] == "128Mi", res
    assert pod["spec"]["nodeName"] == huge_node.name and pod["status"]["phase"] == "Running"
    assert before - pools["2Mi"].available() >= 64  # QEMU's guest RAM came out of the kernel's pool
    kubectl(kubeconfig, "delete", "-n", namespace, "vm/small", "--timeout=90s")


def test_a_1gi_vm_is_in_the_books_waits_for_room_and_then_for_the_kernel(
    kubeconfig, namespace, pools, huge_node, hp_operator, hp_libvirt, tiny_guest
):
    pool = pools["1Gi"]
    if pool.why_not:
        pytest.skip(f"1 GiB pages cannot be reserved on this machine: {pool.why_not}")
    node = huge_node.name
    capacity = get_json(kubeconfig, "node", node)["status"]["allocatable"]["hugepages-1Gi"]
    # A pod takes every 1Gi page of the node in the books (it never touches them: pause).
    holder = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "holder"},
              "spec": {"nodeSelector": {"kubernetes.io/hostname": node},
                       "containers": [{"name": "pause", "image": rsv.PAUSE_IMAGE, "imagePullPolicy": "Never",
                                       "resources": {"requests": {"hugepages-1Gi": capacity, "memory": "16Mi",
                                                                  "cpu": "10m"},
                                                     "limits": {"hugepages-1Gi": capacity, "memory": "16Mi",
                                                                "cpu": "10m"}}}]}}  # fmt: skip
    kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=json.dumps(holder))
    kubectl(kubeconfig, "wait", "-n", namespace, "--for=condition=Ready", "pod/holder", "--timeout=120s")
    free = pool.available()
    assert free >= 1  # the kernel still has the page: only the books are full

    # The VM passes the kernel's check but its reservation finds no hugepages-1Gi left: Unschedulable.
    kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=_hp_vm("gig", tiny_guest, node, "1Gi", "1Gi"))
    ready = wait_until(lambda: (r := _ready(kubeconfig, namespace, "gig")).get("reason") == "Unschedulable" and r,
                       120, f"the 1Gi VM is not Unschedulable; log:\n{hp_operator.tail()}")  # fmt: skip
    assert "hugepages-1Gi" in ready["message"] and node in ready["message"], ready["message"]
    vm = get_json(kubeconfig, "vm", "gig", "-n", namespace)
    assert vm["status"]["printableStatus"] == "ErrorUnschedulable"
    pod = get_json(kubeconfig, "pod", rsv.pod_name("gig"), "-n", namespace)
    res = pod["spec"]["containers"][0]["resources"]
    assert res["requests"]["hugepages-1Gi"] == res["limits"]["hugepages-1Gi"] == "1Gi", res
    assert parse_quantity(res["requests"]["memory"]) < GIB  # the overhead only: guest RAM is not asked twice
    assert _virsh(hp_libvirt, "domstate", names.domain_name(namespace, "gig")) != "running"
    assert pool.available() == free  # nothing took the page

    # The pod goes: the VM starts by itself (its retry), on a real 1 GiB page.
    kubectl(kubeconfig, "delete", "-n", namespace, "pod/holder", "--timeout=60s")
    wait_until(lambda: _ready(kubeconfig, namespace, "gig").get("status") == "True", 180,
               f"the 1Gi VM did not start once the books had room; log:\n{hp_operator.tail()}")  # fmt: skip
    xml = _virsh(hp_libvirt, "dumpxml", names.domain_name(namespace, "gig"))
    assert "<page size='1048576' unit='KiB'/>" in xml, xml
    assert pool.available() == free - 1, (free, pool.available())
    assert get_json(kubeconfig, "pod", rsv.pod_name("gig"), "-n", namespace)["status"]["phase"] == "Running"

    # A second 1Gi VM: the kernel has no free 1 GiB page left (the books would refuse it too).
    if pool.available() == 0:
        kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=_hp_vm("gig2", tiny_guest, node, "1Gi", "1Gi"))
        ready = wait_until(
            lambda: (r := _ready(kubeconfig, namespace, "gig2")).get("reason") == "InsufficientHugepages" and r,
            60, f"no InsufficientHugepages condition; log:\n{hp_operator.tail()}")  # fmt: skip
        assert "spec.memory.hugepages.pageSize" in ready["message"] and "needs 1 free 1Gi" in ready["message"]
        assert "hugepagesz=1G" in ready["message"], ready["message"]
    kubectl(kubeconfig, "delete", "-n", namespace, "vm", "--all", "--timeout=120s")
    wait_until(lambda: pool.available() == free, 60, "the 1 GiB page did not return to the pool")
