#!/usr/bin/env python3
"""Benchmark: operator CPU time per stats sampling round with 1, 10 and 50 VMs.

Each guest is the tiny busybox guest from operator/tests/guest.py (TCG, 80 MiB: 64 MiB is too
small for the Debian cloud kernel; one 4 MiB virtio disk, one virtio NIC on libvirt's 'default'
network, virtio-balloon with a 2 s stats period). Every guest boots to its serial marker; the
first ``--running`` guests (default 10) stay running (idle shell), the others are suspended
(``virDomainSuspend``), because 50 TCG guests running on 2 cores would measure the host's
overload rather than the sampler. Paused domains still return the full stats record (state, cpu,
balloon, vcpu, block, net), so the per-round work has the same shape.

libvirtd may be shared (other domains running): a round samples ALL active domains, so the table
shows the total domain count per round next to the bench's own VM count.

Measured per round (``Sampler.sample()``: ONE getAllDomainStats call + parsing + derive):
process CPU time (time.process_time of this single-threaded process = what the operator pays),
wall time, and libvirt daemon CPU time (utime+stime from /proc of virtqemud/libvirtd, if found).
Also the cost of one /metrics exposition (generate_latest) over the resulting snapshot.
The first round per VM count is reported apart (cold identity cache: metadata + XMLDesc per domain).
Rounds follow the operator's schedule (``--full-every``, default K3SVIRT_STATS_FULL_EVERY's 5): the
full and the cheap rounds are reported apart, with the average per round over one cycle (what
pacing follows).

Prints figures and ratios; asserts nothing about timing.

    .venv/bin/python bench/bench_stats.py [--counts 1,10,50] [--rounds 30] [--running 10] [--full-every 5]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import time
import uuid
from pathlib import Path

import libvirt
from prometheus_client.exposition import generate_latest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator" / "tests"))

from guest import (  # noqa: E402
    build_initramfs,
    domain_xml,
    find_kernel,
    make_disk,
    make_work_dir,
    vm_metadata_xml,
    wait_for_marker,
)
from k3svirt_operator.stats import StatsCollector, StatsSnapshot, make_registry  # noqa: E402
from k3svirt_operator.stats.pacing import cycle_cost  # noqa: E402
from k3svirt_operator.stats.schedule import DEFAULT_FULL_EVERY  # noqa: E402

PREFIX = "k3svirt-unittest-stats-bench-"
NAMESPACE = "k3svirt-bench"
SCRIPT = "ip link set eth0 up\necho BENCH-READY\n"


def daemon_pids() -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (p / "comm").read_text().strip() in ("virtqemud", "libvirtd"):
                pids.append(int(p.name))
    return pids


def daemon_cpu(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


class Fleet:
    def __init__(self, conn: libvirt.virConnect, work: Path, args: argparse.Namespace) -> None:
        self.conn, self.work, self.args = conn, work, args
        self.kernel, release = find_kernel()
        self.initrd = build_initramfs(work, SCRIPT, kernel_release=release)
        self.domains: list[libvirt.virDomain] = []

    def grow(self, n: int) -> None:
        """Boot guests (in batches) until n exist; suspend all beyond --running."""
        batch = max(1, self.args.batch)
        while len(self.domains) < n:
            started = []
            for _ in range(min(batch, n - len(self.domains))):
                i = len(self.domains) + len(started)
                d = self.work / f"vm{i:02d}"
                d.mkdir()
                d.chmod(0o755)
                disk = make_disk(d / "disk.raw", size_mib=4)
                log = d / "serial.log"
                xml = domain_xml(
                    f"{PREFIX}{i:02d}",
                    self.kernel,
                    self.initrd,
                    disk=disk,
                    serial_log=log,
                    memory_mib=self.args.memory,
                    domain_type=self.args.domain_type,
                    metadata=vm_metadata_xml(NAMESPACE, f"vm-{i:02d}", uid=str(uuid.uuid4())),
                    tcg_tb_cache_mib=32,
                )
                started.append((self.conn.createXML(xml, 0), log))
            for dom, log in started:
                wait_for_marker(log, "BENCH-READY", timeout=300, domain=dom)
                if len(self.domains) >= self.args.running:
                    dom.suspend()
                self.domains.append(dom)
            print(f"  booted {len(self.domains)}/{n}", file=sys.stderr, flush=True)

    def destroy(self) -> None:
        for dom in self.domains:
            for _ in range(5):  # a busy libvirtd may time out on the state lock: retry
                try:
                    dom.destroy()
                    break
                except libvirt.libvirtError as e:
                    if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                        break
                    time.sleep(2)


def own(snap: StatsSnapshot) -> int:
    return sum(1 for ns, _ in snap.vms if ns == NAMESPACE)


def _kind_medians(values: list[float], kinds: list[bool], full: bool) -> float:
    picked = [v for v, k in zip(values, kinds, strict=True) if k == full]
    return statistics.median(picked) * 1e3 if picked else float("nan")


def measure(conn: libvirt.virConnect, n: int, rounds: int, interval: float, full_every: int) -> dict[str, float]:
    collector = StatsCollector(conn, node_name="bench", interval=interval, full_every=full_every)
    registry = make_registry(collector)
    pids = daemon_pids()
    # cold round: identity cache empty (metadata + XMLDesc per domain)
    c0 = time.process_time()
    w0 = time.perf_counter()
    snap = collector.sample_once()
    cold_cpu, cold_wall = time.process_time() - c0, time.perf_counter() - w0
    assert snap is not None and own(snap) == n, f"expected {n} VMs, got {snap and own(snap)}"
    cpu, wall, dcpu, kinds = [], [], [], []
    for _ in range(rounds):
        time.sleep(interval)
        d0 = daemon_cpu(pids)
        c0 = time.process_time()
        w0 = time.perf_counter()
        snap = collector.sample_once()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
        dcpu.append(daemon_cpu(pids) - d0)
        kinds.append(bool(snap and snap.round and snap.round.full))
        assert snap is not None and own(snap) == n
    c0 = time.process_time()
    body = b""
    for _ in range(5):
        body = generate_latest(registry)
    scrape_cpu = (time.process_time() - c0) / 5
    return {
        "n": n,
        "domains": snap.round.domains if snap.round else n,
        "cold_cpu_ms": cold_cpu * 1e3,
        "cold_wall_ms": cold_wall * 1e3,
        "cpu_ms": statistics.median(cpu) * 1e3,
        "cpu_ms_mean": statistics.fmean(cpu) * 1e3,
        "wall_ms": statistics.median(wall) * 1e3,
        "daemon_cpu_ms": statistics.fmean(dcpu) * 1e3 if pids else float("nan"),
        "scrape_cpu_ms": scrape_cpu * 1e3,
        "scrape_kib": len(body) / 1024,
        "full_wall_ms": _kind_medians(wall, kinds, True),
        "cheap_wall_ms": _kind_medians(wall, kinds, False),
        "full_daemon_cpu_ms": _kind_medians(dcpu, kinds, True) if pids else float("nan"),
        "cheap_daemon_cpu_ms": _kind_medians(dcpu, kinds, False) if pids else float("nan"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--uri", default=os.environ.get("K3SVIRT_LIBVIRT_URI", "qemu:///system"))
    ap.add_argument("--domain-type", default=os.environ.get("K3SVIRT_DOMAIN_TYPE", "qemu"))
    ap.add_argument("--counts", default="1,10,50")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--interval", type=float, default=0.2, help="pause between measured rounds (s)")
    ap.add_argument("--running", type=int, default=10, help="guests left running; the rest are suspended")
    ap.add_argument("--memory", type=int, default=80, help="guest memory (MiB); 64 is too small")
    ap.add_argument("--batch", type=int, default=4, help="guests booted concurrently")
    ap.add_argument("--full-every", type=int, default=DEFAULT_FULL_EVERY, help="a full round every N (1: always)")
    args = ap.parse_args()
    counts = sorted(int(c) for c in args.counts.split(","))

    conn = libvirt.open(args.uri)
    work = make_work_dir("k3svirt-unittest-stats-bench-")
    fleet = Fleet(conn, work, args)
    results = []
    try:
        for n in counts:
            print(f"preparing {n} guests ...", file=sys.stderr, flush=True)
            fleet.grow(n)
            results.append(measure(conn, n, args.rounds, args.interval, args.full_every))
    finally:
        fleet.destroy()
        conn.close()
        shutil.rmtree(work, ignore_errors=True)

    base = results[0]  # per-VM figures divide by the domains actually sampled
    print(
        f"\nstats sampling cost per round ({args.rounds} rounds each, medians; "
        f"first {args.running} guests running idle, the rest suspended; domain type {args.domain_type})"
    )
    hdr = (
        f"{'VMs':>4} {'domains':>8} {'cpu ms/round':>13} {'cpu ms/dom':>10} {'per-dom vs 1':>12} {'wall ms':>8} "
        f"{'libvirtd cpu ms':>16} {'cold cpu ms':>12} {'scrape cpu ms':>14} {'scrape KiB':>11}"
    )
    print(hdr)
    for r in results:
        per_vm = r["cpu_ms"] / r["domains"]
        ratio = per_vm / (base["cpu_ms"] / base["domains"])
        print(
            f"{r['n']:>4} {r['domains']:>8} {r['cpu_ms']:>13.2f} {per_vm:>10.3f} {ratio:>12.2f} "
            f"{r['wall_ms']:>8.2f} {r['daemon_cpu_ms']:>16.2f} {r['cold_cpu_ms']:>12.2f} "
            f"{r['scrape_cpu_ms']:>14.2f} {r['scrape_kib']:>11.1f}"
        )
    print(f"\nround schedule: 1 full + {args.full_every - 1} cheap (medians per kind; per round = cycle average)")
    print(f"{'VMs':>4} {'full wall ms':>13} {'cheap wall ms':>14} {'per round ms':>13} {'full libvirtd ms':>17} "
          f"{'cheap libvirtd ms':>18} {'per round libvirtd ms':>22}")  # fmt: skip
    for r in results:
        cheap_wall = r["cheap_wall_ms"] if args.full_every > 1 else 0.0
        cheap_cpu = r["cheap_daemon_cpu_ms"] if args.full_every > 1 else 0.0
        per_wall = cycle_cost(r["full_wall_ms"], cheap_wall, args.full_every)
        per_cpu = cycle_cost(r["full_daemon_cpu_ms"], cheap_cpu, args.full_every)
        print(
            f"{r['n']:>4} {r['full_wall_ms']:>13.2f} {r['cheap_wall_ms']:>14.2f} {per_wall:>13.2f} "
            f"{r['full_daemon_cpu_ms']:>17.2f} {r['cheap_daemon_cpu_ms']:>18.2f} {per_cpu:>22.2f}"
        )
    if len(results) > 1:
        a, b = results[-2], results[-1]
        if b["domains"] != a["domains"]:
            marginal = (b["cpu_ms"] - a["cpu_ms"]) / (b["domains"] - a["domains"])
            print(f"marginal cpu per added domain ({a['domains']}->{b['domains']}): {marginal:.3f} ms/round")
    return 0


if __name__ == "__main__":
    sys.exit(main())
