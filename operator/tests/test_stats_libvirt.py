"""Stats against real libvirt: a tiny TCG guest that burns CPU, writes/reads its disk and sends packets.

Skipped only when libvirtd is not reachable (the harness is not up).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import pytest
from guest import (
    build_initramfs,
    domain_xml,
    find_kernel,
    make_disk,
    make_work_dir,
    vm_metadata_xml,
    wait_for_marker,
)
from k3svirt_operator.stats import MetricsServer, StatsCollector, VMStats, summarize
from prometheus_client.parser import text_string_to_metric_families

from tests.polling import poll

LIBVIRT_URI = os.environ.get("K3SVIRT_LIBVIRT_URI", "qemu:///system")
DOMAIN_TYPE = os.environ.get("K3SVIRT_DOMAIN_TYPE", "qemu")  # nested KVM hangs here: TCG
NAMESPACE = "k3svirt-test"

GUEST_SCRIPT = r"""
cat > /bin/dhcp.sh <<'EOF'
#!/bin/sh
[ "$1" = bound ] && ip addr add "$ip/${mask:-24}" dev "$interface"
exit 0
EOF
chmod +x /bin/dhcp.sh
# disk: write + uncached read of /dev/vda every second
(while true; do
    dd if=/dev/zero of=/dev/vda bs=64k count=16 conv=fsync 2>/dev/null
    echo 3 > /proc/sys/vm/drop_caches
    dd if=/dev/vda of=/dev/null bs=64k count=16 2>/dev/null
    sleep 1
done) &
# network: DHCP on the libvirt 'default' network, then ping the gateway
(ip link set eth0 up
 udhcpc -i eth0 -n -q -t 5 -T 1 -s /bin/dhcp.sh >/dev/null 2>&1
 while true; do ping -c 2 -s 1200 192.168.122.1 >/dev/null 2>&1; sleep 1; done) &
echo GUEST-WORKLOAD-STARTED
# cpu: burn in the foreground
while true; do :; done
"""


@pytest.fixture(scope="module")
def conn() -> Iterator[libvirt.virConnect]:
    try:
        c = libvirt.open(LIBVIRT_URI)
    except libvirt.libvirtError as e:
        pytest.skip(f"libvirt not reachable at {LIBVIRT_URI}: {e}")
    try:
        yield c
    finally:
        c.close()


def _destroy(dom: libvirt.virDomain) -> None:
    """Destroy, retrying: on a busy libvirtd destroy can time out on the domain's state lock."""
    for _ in range(5):
        try:
            dom.destroy()
            return
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return
            with contextlib.suppress(libvirt.libvirtError):
                if not dom.isActive():
                    return
            time.sleep(2)


@pytest.fixture(scope="module")
def guest_vm(conn: libvirt.virConnect) -> Iterator[tuple[libvirt.virDomain, str, Path]]:
    """(domain, vm name, serial log) of a running busy tiny guest; destroyed in finally."""
    if not Path("/bin/busybox").exists() or shutil.which("cpio") is None:
        pytest.skip("busybox-static / cpio not installed")
    kernel, release = find_kernel()
    work = make_work_dir("k3svirt-unittest-stats-")
    suffix = uuid.uuid4().hex[:8]
    vm_name = f"stats-{suffix}"
    dom = None
    try:
        initrd = build_initramfs(work, GUEST_SCRIPT, kernel_release=release)
        disk = make_disk(work / "disk.raw", size_mib=16)
        log = work / "serial.log"
        xml = domain_xml(
            f"k3svirt-unittest-stats-{suffix}",
            kernel,
            initrd,
            disk=disk,
            serial_log=log,
            memory_mib=96,
            domain_type=DOMAIN_TYPE,
            metadata=vm_metadata_xml(NAMESPACE, vm_name, uid=str(uuid.uuid4()), generation=1),
        )
        dom = conn.createXML(xml, 0)
        wait_for_marker(log, "GUEST-WORKLOAD-STARTED", timeout=120, domain=dom)
        yield dom, vm_name, log
    finally:
        if dom is not None:
            _destroy(dom)
        shutil.rmtree(work, ignore_errors=True)


def _poll(collector: StatsCollector, vm: str, pred: Callable[[VMStats], bool], timeout: float = 40.0) -> VMStats:
    seen: list[VMStats] = []

    def met() -> VMStats | None:
        st = collector.get(NAMESPACE, vm)
        if st is not None:
            seen[:] = [st]
        return st if st is not None and pred(st) else None

    found = poll(met, timeout, 0.5)
    if found is None:
        raise AssertionError(f"condition not met within {timeout}s; last stats: {seen and seen[0].to_dict()}")
    return found


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_live_guest_stats_metrics_and_stop(
    conn: libvirt.virConnect, guest_vm: tuple[libvirt.virDomain, str, Path]
) -> None:
    dom, vm, _log = guest_vm
    collector = StatsCollector(conn, node_name="test-node", interval=1.0)
    server = MetricsServer(collector, port=0, host="127.0.0.1")
    collector.start()
    server.start()
    try:
        base = server.base_url("127.0.0.1")
        # CPU: the guest burns a vCPU under TCG. Total CPU comes with every round; per-vCPU figures
        # with the full rounds (every 5th), so their first rate needs two of them.
        st = _poll(collector, vm, lambda s: (s.cpu.usage_percent or 0) > 5)
        assert st.state == "running"
        assert st.ref.uid and st.ref.generation == 1
        st = _poll(collector, vm, lambda s: bool(s.cpu.vcpus) and (s.cpu.vcpus[0].usage_percent or 0) > 0)
        assert st.memory.resident_bytes and st.memory.resident_bytes > 0
        assert st.memory.domain_bytes == 96 * 1024 * 1024

        # disk: counters move and both rates show up
        first_disk = st.disks[0]
        assert first_disk.drive == "vda"
        st = _poll(collector, vm, lambda s: (s.disks[0].write_bytes_per_sec or 0) > 0)
        st = _poll(
            collector, vm, lambda s: (s.disks[0].read_bytes_per_sec or 0) > 0 and (s.disks[0].read_iops or 0) > 0
        )
        st = _poll(
            collector,
            vm,
            lambda s: (
                (s.disks[0].write_bytes_total or 0) > (first_disk.write_bytes_total or 0)
                and (s.disks[0].read_ops_total or 0) > (first_disk.read_ops_total or 0)
            ),
        )

        # network: counters move and tx rate shows up
        first_net = st.nets[0]
        st = _poll(
            collector, vm, lambda s: (s.nets[0].rate("tx_bytes") or 0) > 0 and (s.nets[0].rate("tx_pkts") or 0) > 0
        )
        st = _poll(
            collector,
            vm,
            lambda s: (
                (s.nets[0].total("rx_bytes") or 0) > (first_net.total("rx_bytes") or 0)
                and (s.nets[0].total("tx_bytes") or 0) > (first_net.total("tx_bytes") or 0)
            ),
        )

        # guest balloon driver reports guest-side memory (stats period 2 s)
        st = _poll(collector, vm, lambda s: s.memory.available_bytes is not None)
        assert st.memory.usable_bytes is not None and st.memory.used_bytes is not None

        # freshness: sampledAt within the 5 s bound; memory and disks within one full period (5 x 1 s)
        assert time.time() - st.sampled_at < 5.0
        assert st.memory_sampled_at is not None and st.sampled_at - st.memory_sampled_at <= collector.full_period
        assert all(st.sampled_at - (d.sampled_at or 0) <= collector.full_period for d in st.disks)
        rounds = set()
        for _ in range(6):  # both kinds of round happen against real libvirt
            assert collector.sample_once() is not None
            rounds.add(collector.sampler.last_round.full if collector.sampler.last_round else None)
        assert rounds == {True, False}

        # /metrics parses and carries the expected families and labels
        code, body = _get(base + "/metrics")
        assert code == 200
        fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
        expected = {
            "k3svirt_vmi_cpu_usage_seconds": "counter",
            "k3svirt_vmi_vcpu_seconds": "counter",
            "k3svirt_vmi_cpu_usage_percent": "gauge",
            "k3svirt_vmi_memory_resident_bytes": "gauge",
            "k3svirt_vmi_memory_available_bytes": "gauge",
            "k3svirt_vmi_storage_read_traffic_bytes": "counter",
            "k3svirt_vmi_storage_write_traffic_bytes": "counter",
            "k3svirt_vmi_storage_iops_read": "counter",
            "k3svirt_vmi_storage_iops_write": "counter",
            "k3svirt_vmi_storage_write_bytes_per_second": "gauge",
            "k3svirt_vmi_network_receive_bytes": "counter",
            "k3svirt_vmi_network_transmit_bytes": "counter",
            "k3svirt_vmi_network_receive_errors": "counter",
            "k3svirt_vmi_network_transmit_packets_dropped": "counter",
            "k3svirt_vmi_network_transmit_bytes_per_second": "gauge",
        }
        for fam_name, kind in expected.items():
            assert fam_name in fams, fam_name
            fam = fams[fam_name]
            assert fam.type == kind, fam_name
            mine = [s for s in fam.samples if s.labels.get("name") == vm]
            assert mine, f"{fam_name} has no sample for {vm}"
            assert mine[0].labels["namespace"] == NAMESPACE and mine[0].labels["node"] == "test-node"
        vcpu = [s for s in fams["k3svirt_vmi_vcpu_seconds"].samples if s.labels["name"] == vm]
        assert vcpu[0].labels["id"] == "0" and vcpu[0].name == "k3svirt_vmi_vcpu_seconds_total"
        drives = {
            s.labels["drive"] for s in fams["k3svirt_vmi_storage_read_traffic_bytes"].samples if s.labels["name"] == vm
        }
        assert drives == {"vda"}
        ifaces = {
            s.labels["interface"] for s in fams["k3svirt_vmi_network_receive_bytes"].samples if s.labels["name"] == vm
        }
        assert len(ifaces) == 1

        # JSON per VM, summary, healthz
        code, body = _get(server.stats_url(NAMESPACE, vm, host="127.0.0.1"))
        assert code == 200
        js = json.loads(body)
        assert js["name"] == vm and js["namespace"] == NAMESPACE and js["node"] == "test-node"
        assert js["state"] == "running" and js["sampledAt"].endswith("Z")
        assert js["disks"][0]["drive"] == "vda" and js["interfaces"]
        summary = summarize(collector.get(NAMESPACE, vm))
        assert summary is not None and summary["memoryUsedBytes"] > 0
        code, body = _get(base + "/healthz")
        assert code == 200 and json.loads(body)["status"] == "ok"
        code, body = _get(f"{base}/stats/{NAMESPACE}/no-such-vm")
        assert code == 404 and json.loads(body)["error"] == "NotFound"

        # stop: destroy, the next round drops the VM (no stale rates anywhere)
        collector.stop()
        dom.destroy()
        assert collector.sample_once() is not None
        assert collector.get(NAMESPACE, vm) is None
        code, body = _get(server.stats_url(NAMESPACE, vm, host="127.0.0.1"))
        assert code == 404
        code, body = _get(base + "/metrics")
        assert f'name="{vm}"' not in body.decode()
    finally:
        server.stop()
        collector.stop()
