"""Load through the real gateway: VMs created at 10/s all reach Ready and, once deleted, leave
nothing behind (domains, disks, seeds, DHCP leases, vfio bindings, PCI reservations); 50 concurrent
POSTs of one name give exactly one 201 and 409 problem+json for the rest.

Short form (CI): 10 VMs. K3SVIRT_ROBUSTNESS=full: 100 VMs (K3SVIRT_LOAD_VMS overrides).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.e2e.conftest import wait_until

from .conftest import (
    FULL,
    FULL_TIMEOUT,
    ApiServer,
    Gateway,
    conditions,
    count,
    drop_namespace,
    make_namespace,
    namespace_domains,
    operator_env,
    remove_domains,
)
from .conftest import start_operator as start_op

N_VMS = int(os.environ.get("K3SVIRT_LOAD_VMS") or (100 if FULL else 10))
RATE = 10.0  # creations per second


def test_50_concurrent_posts_of_one_name_give_exactly_one_201(gateway: Gateway, apiserver: ApiServer):
    ns = make_namespace(apiserver, "rbsame")
    body = {"name": "same", "spec": {"runStrategy": "Halted", "nodeName": "no-operator-here",
                                     "memory": {"size": "64Mi"}}}  # fmt: skip
    start = threading.Barrier(50)

    def post(_: int):
        start.wait()
        return gateway.request("POST", f"/api/v1/vms?namespace={ns}", json=body)

    try:
        with ThreadPoolExecutor(50) as pool:
            answers = list(pool.map(post, range(50)))
        codes = sorted(r.status_code for r in answers)
        count("load: concurrent same-name POSTs", 50)
        assert codes.count(201) == 1 and codes.count(409) == 49, codes
        for r in answers:
            if r.status_code == 409:
                assert r.headers["Content-Type"].startswith("application/problem+json"), r.headers
                assert "same" in r.json()["detail"], r.text
        assert len(apiserver.request("GET", apiserver.vms(ns)).json()["items"]) == 1
    finally:
        drop_namespace(apiserver, ns)


def _vfio_bound() -> set[str]:
    d = Path("/sys/bus/pci/drivers/vfio-pci")
    return {p.name for p in d.iterdir() if p.is_symlink()} if d.exists() else set()


def _leases(conn, macs: set[str]) -> list[dict]:
    out = []
    for net in conn.listAllNetworks(0):
        if net.isActive():
            out += [lease for lease in net.DHCPLeases() if lease.get("mac", "").lower() in macs]
    return out


@pytest.mark.timeout(FULL_TIMEOUT)
def test_vms_created_at_10_per_second_through_the_gateway(
    testbed, gateway: Gateway, apiserver: ApiServer, libvirt_conn, storage_root: Path, tiny_guest, tmp_path
):
    node = f"load-{uuid.uuid4().hex[:6]}"
    ns = make_namespace(apiserver, "rbload")
    op = start_op(operator_env(testbed, node, K3SVIRT_STATS_INTERVAL="10"), tmp_path / "operator.log")
    vfio_before = _vfio_bound()
    names = [f"l{i:03d}" for i in range(N_VMS)]

    def spec(name: str) -> dict:
        return {
            "runStrategy": "Always",
            "nodeName": node,
            "cpu": {"cores": 1},
            "memory": {"size": "64Mi"},
            "boot": {
                "kernel": {
                    "path": str(tiny_guest.kernel),
                    "initrdPath": str(tiny_guest.initrd),
                    "cmdline": f"console=ttyS0 quiet no_timer_check k3svirt.hostname={name}",
                }
            },  # fmt: skip
            "disks": [{"name": "scratch", "size": "16Mi", "source": {"blank": {}}}],
            "networks": [{"name": "default", "nat": {"network": "default"}}],
        }

    def at_rate(fn, items):
        """fn(item) for each item, the i-th sent at i/RATE s (on its own thread: a slow answer does
        not hold back the next request); returns the answers and the achieved send rate."""
        t0, sent = time.monotonic(), []

        def one(i_item):
            i, item = i_item
            time.sleep(max(0.0, t0 + i / RATE - time.monotonic()))
            sent.append(time.monotonic())
            return fn(item)

        with ThreadPoolExecutor(32) as pool:
            out = list(pool.map(one, enumerate(items)))
        span = max(sent) - min(sent)
        return out, (len(sent) - 1) / span if span > 0 else float("inf")

    try:
        created, rate = at_rate(
            lambda n: gateway.request("POST", f"/api/v1/vms?namespace={ns}", json={"name": n, "spec": spec(n)}), names
        )
        assert [r.status_code for r in created] == [201] * N_VMS, [
            r.text[:200] for r in created if r.status_code != 201
        ]
        print(f"{N_VMS} VMs posted at {rate:.1f}/s")
        assert rate > RATE * 0.8, f"the POSTs went out at {rate:.1f}/s only"
        t_posted = time.monotonic()

        def all_ready() -> bool:
            items = apiserver.request("GET", apiserver.vms(ns)).json()["items"]
            ready = [v for v in items if conditions(v).get("Ready", {}).get("status") == "True"]
            return len(ready) == N_VMS

        wait_until(all_ready, 120 + 6 * N_VMS, f"not all {N_VMS} VMs became Ready; log:\n{op.tail(30)}", 2)
        ready_after = time.monotonic() - t_posted
        items = apiserver.request("GET", apiserver.vms(ns)).json()["items"]
        macs = {
            i["macAddress"].lower() for v in items for i in v["status"].get("interfaces") or [] if "macAddress" in i
        }
        uids = {v["metadata"]["uid"] for v in items}
        domains = namespace_domains(libvirt_conn, ns)
        assert len(domains) == N_VMS and {d.UUIDString() for d in domains} == uids
        rss = _rss_mib(domains)
        print(f"all {N_VMS} Ready {ready_after:.1f} s after the last POST; QEMU RSS per VM {rss:.0f} MiB")
        count("load: VMs created and deleted", N_VMS)

        deleted, _ = at_rate(lambda n: gateway.request("DELETE", f"/api/v1/vms/{n}?namespace={ns}"), names)
        assert [r.status_code for r in deleted] == [202] * N_VMS
        wait_until(lambda: apiserver.request("GET", apiserver.vms(ns)).json()["items"] == [], 120 + 3 * N_VMS,
                   f"not all VMs were finalized; log:\n{op.tail(30)}", 2)  # fmt: skip
        print(f"{N_VMS} VMs deleted and finalized {time.monotonic() - t_posted - ready_after:.1f} s after Ready")
        leaks = {
            "domains": [d.name() for d in namespace_domains(libvirt_conn, ns)],
            "vm dirs (disks, seeds)": [str(p) for p in (storage_root / "vms" / ns).glob("*")]
            if (storage_root / "vms" / ns).exists()
            else [],
            "DHCP leases": _leases(libvirt_conn, macs),
            "vfio bindings": sorted(_vfio_bound() - vfio_before),
            "PCI reservations": [
                p["metadata"]["name"]
                for p in apiserver.request("GET", "/apis/k3svirt.io/v1alpha1/pcipassthroughs").json().get("items", [])
                if ((p.get("status") or {}).get("assignedTo") or {}).get("namespace") == ns
            ],
        }
        assert all(not v for v in leaks.values()), f"left behind: { {k: v for k, v in leaks.items() if v} }"
    finally:
        op.stop()
        remove_domains(libvirt_conn, ns)
        drop_namespace(apiserver, ns, storage_root)


def _rss_mib(domains) -> float:
    """Mean resident memory of the QEMU processes of these domains (from /proc, by their pid files)."""
    sizes = []
    for d in domains:
        pid_file = Path(f"/run/libvirt/qemu/{d.name()}.pid")
        try:
            pid = int(pid_file.read_text())
            status = Path(f"/proc/{pid}/status").read_text()
        except (OSError, ValueError):
            continue
        kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        sizes.append(kb / 1024)
    return sum(sizes) / len(sizes) if sizes else float("nan")
