#!/usr/bin/env python3
"""Benchmark: scale on one small box (issue 18), every figure next to a bare baseline of the same run.

Builds on bench_vm.py (its operator subprocess, namespace, watch, bare twins of operator domains and
clean-up) and adds the gateway (gunicorn, as bench_gateway.py starts it). Phases, each optional:

- ``--bursts 10,20``: N VMs created at once through kubectl (one `kubectl create -f` of a List) and
  through the gateway (N concurrent POSTs); create -> Ready per VM (P50/P95) and until all are Ready.
  Then the same N domains (the operator's XML, renamed, own disks: bench_vm.Bench.bare_xml) started
  at once with N concurrent `virsh create` processes; ratio = operator / bare.
- ``--rate-vms 100 --rate 10``: VMs POSTed to the gateway at a fixed rate; create -> Ready P50/P95,
  against bare `virsh create` launched at the same rate. The VMs stay running for:
- at rest (``--rest-seconds``): operator and gateway RSS/PSS and CPU, libvirtd CPU, API requests per
  minute (the API server's apiserver_request_total, by resource and verb, against a window of the
  control plane alone before the operator starts), QEMU RSS/PSS per guest, the operator's stats
  self-metrics (round wall/CPU, interval, stretched), status.monitoring ages. The same is measured
  for the bare guests (QEMU only).
- stats cost on the bare guests: one ``domainListGetStats`` call over 1/10/50/100 of them (the
  operator's groups and cheaper sets): wall, caller CPU, libvirtd CPU, QEMU CPU per round.
- ``--memory-settings 3``: guests of the operator's XML with one setting changed at a time
  (TCG translation cache 32 MiB / QEMU's default 1 GiB, memballoon, VGA + VNC), QEMU RSS/PSS once
  the guest printed its ready marker.

The load average is printed next to every figure: the box is shared. Prints figures, asserts
nothing about timing; everything created is removed (domains by this run's name prefix only).

    K3SVIRT_RESERVATIONS=off .venv/bin/python bench/bench_scale.py [--bursts 10,20] [--rate-vms 100]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import requests
from bench_vm import GROUP, PLURAL, ROOT, VERSION, Bench, free_port, log, pct, proc_memory, r3

READY_MARKER = "K3SVIRT-GUEST-READY"


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def daemon_pids() -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            with contextlib.suppress(OSError):
                if (p / "comm").read_text().strip() in ("libvirtd", "virtqemud"):
                    out.append(int(p.name))
    return out


def qemu_pid(domain: str) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(Path(f"/run/libvirt/qemu/{domain}.pid").read_text().strip())
    return None


def summary(values: list[float]) -> dict[str, float | None]:
    return {"p50": r3(pct(values, 50)), "p95": r3(pct(values, 95)), "max": r3(max(values)) if values else None}


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 2)


class Suspender(threading.Thread):
    """Pauses every running domain of this run (operator VMs and bare twins) as soon as it runs: the
    timings stop at "running", and 100 booting TCG guests of ~200 MiB each would not fit the shared
    box's memory nor its 2 cores. Paused domains still answer the full stats record."""

    def __init__(self, uri: str, prefixes: tuple[str, ...], may_pause: Callable[[str], bool]) -> None:
        super().__init__(daemon=True)
        self.uri, self.prefixes, self.stop_flag, self.paused = uri, prefixes, False, 0
        self.may_pause = may_pause  # an operator VM only once the watch saw it Ready (else it never is)
        self.quiet = False  # True while figures at rest are taken: its polling would count as libvirtd's

    def run(self) -> None:
        import libvirt

        conn = None
        while not self.stop_flag:
            if self.quiet:
                time.sleep(0.3)
                continue
            try:
                if conn is None or not conn.isAlive():
                    conn = libvirt.open(self.uri)  # libvirtd restarted (by another user of the box)
            except libvirt.libvirtError:
                conn = None
                time.sleep(1.0)
                continue
            with contextlib.suppress(libvirt.libvirtError):
                for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_RUNNING):
                    if dom.name().startswith(self.prefixes) and self.may_pause(dom.name()):
                        with contextlib.suppress(libvirt.libvirtError):
                            dom.suspend()
                            self.paused += 1
            time.sleep(0.3)
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()


class Scale(Bench):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.gw: subprocess.Popen[bytes] | None = None
        self.gw_url = ""
        self.http = requests.Session()
        self.load: dict[str, str] = {}
        self.suspender: Suspender | None = None

    # ------------------------------------------------------------------ gateway (as bench_gateway.py)
    def start_gateway(self) -> None:
        tmp = Path(tempfile.mkdtemp(dir=self.work))
        keyfile = tmp / "keys"
        key = subprocess.run(
            [sys.executable, "-m", "k3svirt_gateway.keys", "add", "bench", "--role", "admin", "--file", str(keyfile)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        port = free_port()
        env = {
            **os.environ,
            "KUBECONFIG": self.kubeconfig,
            "K3SVIRT_API_KEYS_FILE": str(keyfile),
            "K3SVIRT_LOG_LEVEL": "WARNING",
        }
        exe = Path(sys.executable).with_name("k3svirt-gateway")
        out = (self.work / "gateway.log").open("ab")
        self.gw = subprocess.Popen([str(exe), "--bind", f"127.0.0.1:{port}"], env=env, stdout=out, stderr=out)
        self.gw_url = f"http://127.0.0.1:{port}"
        self.http.headers["Authorization"] = f"Bearer {key}"
        self.http.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=64))
        for _ in range(300):
            with contextlib.suppress(requests.ConnectionError):
                if self.http.get(self.gw_url + "/healthz", timeout=2).ok:
                    return
            time.sleep(0.2)
        raise RuntimeError("the gateway did not come up")

    def gateway_pids(self) -> list[int]:
        assert self.gw is not None
        return [self.gw.pid, *children(self.gw.pid)]

    # ------------------------------------------------------------------ creating
    def create_kubectl(self, names: list[str]) -> dict[str, float]:
        doc = {"apiVersion": "v1", "kind": "List", "items": [{**self.vm_body(n)} for n in names]}
        t0 = time.time()
        subprocess.run(
            ["kubectl", "--kubeconfig", self.kubeconfig, "create", "-n", self.ns, "-f", "-"],
            input=json.dumps(doc),
            text=True,
            check=True,
            capture_output=True,
        )
        return dict.fromkeys(names, t0)

    def create_gateway(self, names: list[str], rate: float | None = None) -> dict[str, float]:
        starts: dict[str, float] = {}
        errors: list[str] = []

        def post(name: str) -> None:
            t0 = time.time()
            starts[name] = t0
            r = self.http.post(
                f"{self.gw_url}/api/v1/vms",
                params={"namespace": self.ns},
                json={"name": name, "spec": self.vm_body(name)["spec"]},
                timeout=120,
            )
            if r.status_code != 201:
                errors.append(f"{name}: {r.status_code} {r.text[:200]}")

        threads = []
        first = time.monotonic()
        for i, name in enumerate(names):
            if rate:
                time.sleep(max(0.0, first + i / rate - time.monotonic()))
            t = threading.Thread(target=post, args=(name,))
            t.start()
            threads.append(t)
        for t in threads:
            t.join()
        if errors:
            raise RuntimeError("gateway POSTs failed: " + "; ".join(errors[:3]))
        return starts

    def wait_ready(self, starts: dict[str, float], timeout: float) -> dict[str, Any]:
        assert self.watch is not None
        self.watch.wait(lambda: all(n in self.watch.ready_at for n in starts), timeout, f"{len(starts)} VMs Ready")
        per_vm = [self.watch.ready_at[n] - t for n, t in starts.items()]
        all_ready = max(self.watch.ready_at[n] for n in starts) - min(starts.values())
        return {"n": len(starts), **summary(per_vm), "allReady": r3(all_ready), "load": loadavg()}

    # ------------------------------------------------------------------ bare twins
    def bare_start(self, twins: list[tuple[str, str]], rate: float | None = None) -> dict[str, Any]:
        """`virsh create` of each twin, all at once (or at `rate` per second); each measured until
        its process returns (the domain is running then)."""
        paths = []
        for bare, xml in twins:
            path = self.work / f"{bare}.xml"
            path.write_text(xml)
            paths.append((bare, path))
            self.bare_names.add(bare)
        launched: dict[str, float] = {}
        done: dict[str, float] = {}
        failed: list[str] = []

        def one(bare: str, path: Path) -> None:
            launched[bare] = time.time()
            proc = subprocess.run(
                ["virsh", "-c", "qemu:///system", "create", str(path)], capture_output=True, text=True, timeout=900
            )
            if proc.returncode == 0:
                done[bare] = time.time()
            else:
                failed.append(f"{bare}: {proc.stderr[-200:]}")

        threads = []
        first = time.monotonic()
        for i, (bare, path) in enumerate(paths):
            if rate:
                time.sleep(max(0.0, first + i / rate - time.monotonic()))
            t = threading.Thread(target=one, args=(bare, path))
            t.start()
            threads.append(t)
        for t in threads:
            t.join()
        per = [done[b] - launched[b] for b in done]
        out = {"n": len(done), **summary(per), "load": loadavg(), "failed": len(failed)}
        if done:
            out["allRunning"] = r3(max(done.values()) - min(launched.values()))
        if failed:
            log(f"  {len(failed)} bare starts failed, e.g. {failed[0]}")
        return out

    def bare_destroy(self, twins: list[tuple[str, str]]) -> None:
        import libvirt

        for bare, _ in twins:
            with contextlib.suppress(libvirt.libvirtError):
                self.conn.lookupByName(bare).destroy()

    def may_pause(self, domain: str) -> bool:
        assert self.watch is not None
        vm = domain[len(self.ns) + 1 :] if domain.startswith(self.ns + "_") else None
        return vm is None or vm in self.watch.ready_at

    def hush(self, quiet: bool) -> None:
        if self.suspender is not None:
            self.suspender.quiet = quiet

    def twins(self, names: list[str]) -> list[tuple[str, str]]:
        return [self.bare_xml(n) for n in names]

    # ------------------------------------------------------------------ phases
    def phase_burst(self, n: int, via: str) -> None:
        log(f"burst: {n} VMs at once through {via} (load {loadavg()})")
        names = [self.new_name(f"b{n}{via[0]}") for _ in range(n)]
        starts = self.create_kubectl(names) if via == "kubectl" else self.create_gateway(names)
        op = self.wait_ready(starts, 900)
        log(f"  operator: all Ready after {op['allReady']} s, per VM p50 {op['p50']} / p95 {op['p95']} s")
        twins = self.twins(names)
        self.delete(names, 900)
        time.sleep(3)
        log(f"  bare: {n} virsh create at once (load {loadavg()})")
        bare = self.bare_start(twins)
        self.bare_destroy(twins)
        log(f"  bare: all running after {bare.get('allRunning')} s, per domain p50 {bare['p50']} / p95 {bare['p95']} s")
        self.results.setdefault("bursts", []).append(
            {
                "n": n,
                "via": via,
                "operator": op,
                "bare": bare,
                "ratioAll": ratio(op["allReady"], bare.get("allRunning")),
                "ratioP50": ratio(op["p50"], bare["p50"]),
                "ratioP95": ratio(op["p95"], bare["p95"]),
            }
        )

    def phase_rate(self, n: int, rate: float) -> None:
        log(f"rate: {n} VMs through the gateway at {rate:g}/s (load {loadavg()})")
        names = [self.new_name("r") for _ in range(n)]
        starts = self.create_gateway(names, rate)
        op = self.wait_ready(starts, 1800)
        log(f"  operator: p50 {op['p50']} / p95 {op['p95']} s, all Ready after {op['allReady']} s")
        self.hush(True)
        rest = self.at_rest(names, self.args.rest_seconds)
        self.hush(False)
        self.results["rate"] = {"n": n, "rate": rate, "operator": op}
        self.results["atRest"] = {"operator": rest}
        if not self.args.rate_bare:
            return
        twins = self.twins(names)
        self.results["deleteAtRate"] = r3(self.delete(names, 1800))
        time.sleep(5)
        log(f"  bare: {n} virsh create at {rate:g}/s (load {loadavg()})")
        bare = self.bare_start(twins, rate)
        log(f"  bare: p50 {bare['p50']} / p95 {bare['p95']} s")
        time.sleep(3)
        self.hush(True)
        bare_rest = self.bare_at_rest([b for b, _ in twins], self.args.rest_seconds)
        self.results["statsCost"] = self.stats_cost([b for b, _ in twins])
        self.hush(False)
        self.bare_destroy(twins)
        self.results["rate"] |= {
            "n": n,
            "rate": rate,
            "operator": op,
            "bare": bare,
            "ratioP95": ratio(op["p95"], bare["p95"]),
            "ratioP50": ratio(op["p50"], bare["p50"]),
        }
        self.results["atRest"]["bare"] = bare_rest

    # ------------------------------------------------------------------ at rest
    def api_requests(self) -> dict[str, float]:
        text = subprocess.run(
            ["kubectl", "--kubeconfig", self.kubeconfig, "get", "--raw", "/metrics"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        out: dict[str, float] = {}
        for line in text.splitlines():
            if not line.startswith("apiserver_request_total{"):
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
            key = f"{labels.get('verb')} {labels.get('group') or 'core'}/{labels.get('resource')}"
            if labels.get("subresource"):
                key += "/" + labels["subresource"]
            out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
        return out

    def request_rates(self, seconds: float) -> dict[str, float]:
        a = self.api_requests()
        time.sleep(seconds)
        b = self.api_requests()
        per_min = {k: round((v - a.get(k, 0.0)) * 60 / seconds, 1) for k, v in b.items() if v - a.get(k, 0.0) > 0}
        return dict(sorted(per_min.items(), key=lambda kv: -kv[1]))

    def qemu_memory(self, domains: list[str]) -> dict[str, Any]:
        rss, pss = [], []
        for d in domains:
            pid = qemu_pid(d)
            if pid is None:
                continue
            with contextlib.suppress(OSError):
                m = proc_memory(pid)
                rss.append(m["VmRSS"])
                pss.append(m["Pss"])
        return {
            "guests": len(rss),
            "rssMiBMedian": r3(statistics.median(rss)) if rss else None,
            "pssMiBMedian": r3(statistics.median(pss)) if pss else None,
            "rssMiBTotal": round(sum(rss), 1),
            "pssMiBTotal": round(sum(pss), 1),
        }

    def operator_metrics(self) -> dict[str, float]:
        assert self.operator is not None
        port = self.operator.env["K3SVIRT_METRICS_PORT"]
        body = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        want = ("k3svirt_stats_", "k3svirt_start_queue_")
        return {
            line.split(" ")[0]: float(line.split(" ")[1])
            for line in body.splitlines()
            if line.startswith(want) and "{" not in line.split(" ")[0]
        }

    def at_rest(self, names: list[str], seconds: float) -> dict[str, Any]:
        assert self.operator is not None
        log(f"  at rest: {len(names)} VMs running, settling 20 s, then {seconds:g} s of counting (load {loadavg()})")
        time.sleep(20)
        ours = {"operator": [self.operator.pid], "gateway": self.gateway_pids(), "libvirtd": daemon_pids()}
        cpu0 = {k: sum(cpu_seconds(p) for p in v) for k, v in ours.items()}
        t0 = time.monotonic()
        requests_per_min = self.request_rates(seconds)
        dt = time.monotonic() - t0
        cpu = {k: round(100 * (sum(cpu_seconds(p) for p in v) - cpu0[k]) / dt, 2) for k, v in ours.items()}
        items = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL)["items"]
        now = time.time()
        ages, stretched = [], 0
        for it in items:
            mon = (it.get("status") or {}).get("monitoring") or {}
            if mon.get("updatedAt"):
                ages.append(now - datetime.fromisoformat(mon["updatedAt"].replace("Z", "+00:00")).timestamp())
            stretched += bool(mon.get("statsDegraded"))
        gw = [proc_memory(p) for p in self.gateway_pids()]
        op = proc_memory(self.operator.pid)
        return {
            "vms": len(names),
            "load": loadavg(),
            "seconds": round(dt, 1),
            "cpuPercentOfOneCore": cpu,
            "apiRequestsPerMinute": requests_per_min,
            "apiRequestsPerMinuteTotal": round(sum(requests_per_min.values()), 1),
            "operatorMiB": {"rss": round(op["VmRSS"], 1), "pss": round(op["Pss"], 1), "hwm": round(op["VmHWM"], 1)},
            "gatewayMiB": [{"rss": round(m["VmRSS"], 1), "pss": round(m["Pss"], 1)} for m in gw],
            "qemu": self.qemu_memory([self.domain(n) for n in names]),
            "operatorStats": self.operator_metrics(),
            "monitoringStatusVMsStretched": stretched,
            "monitoringUpdatedAtAge": summary(ages),
        }

    def bare_at_rest(self, domains: list[str], seconds: float) -> dict[str, Any]:
        log(f"  bare at rest: {len(domains)} guests, settling 20 s then {seconds:g} s (load {loadavg()})")
        time.sleep(20)
        pids = [p for p in (qemu_pid(d) for d in domains) if p]
        c0 = sum(cpu_seconds(p) for p in pids)
        l0 = sum(cpu_seconds(p) for p in daemon_pids())
        time.sleep(seconds)
        return {
            "guests": len(pids),
            "load": loadavg(),
            "qemuCpuPercentOfOneCore": round(100 * (sum(cpu_seconds(p) for p in pids) - c0) / seconds, 1),
            "libvirtdCpuPercentOfOneCore": round(100 * (sum(cpu_seconds(p) for p in daemon_pids()) - l0) / seconds, 2),
            "qemu": self.qemu_memory(domains),
        }

    # ------------------------------------------------------------------ stats cost
    def stats_cost(self, domains: list[str], rounds: int = 10) -> dict[str, Any]:
        import libvirt
        from k3svirt_operator.stats.pacing import cycle_cost
        from k3svirt_operator.stats.sampler import NOWAIT_FLAG, STATS_FLAGS
        from k3svirt_operator.stats.schedule import CHEAP_FLAGS, DEFAULT_FULL_EVERY

        doms = []
        for d in domains:
            with contextlib.suppress(libvirt.libvirtError):
                dom = self.conn.lookupByName(d)
                if dom.isActive():
                    doms.append(dom)
        full_name, cheap_name = "operator (state,cpu,balloon,vcpu,net,block)", "operator cheap round (state,cpu,net)"
        groups = {
            full_name: STATS_FLAGS,
            cheap_name: CHEAP_FLAGS,
            "state,cpu,vcpu,net": libvirt.VIR_DOMAIN_STATS_STATE
            | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
            | libvirt.VIR_DOMAIN_STATS_VCPU
            | libvirt.VIR_DOMAIN_STATS_INTERFACE,
            "balloon only": libvirt.VIR_DOMAIN_STATS_BALLOON,
            "block only": libvirt.VIR_DOMAIN_STATS_BLOCK,
        }
        flags = NOWAIT_FLAG  # as the operator's round; a list of domains takes no list filter
        out: list[dict[str, Any]] = []
        counts = [k for k in (1, 10, 50, 100) if k <= len(doms)] or [len(doms)]
        log(f"  stats cost over {len(doms)} running bare guests, counts {counts} (load {loadavg()})")
        plan = [(k, g) for k in counts for g in (full_name, cheap_name)]
        plan += [(counts[-1], g) for g in groups if not g.startswith("operator")]
        for k, gname in plan:
            subset = doms[:k]
            pids = [p for p in (qemu_pid(d.name()) for d in subset) if p]
            walls, cpus, lcpu, qcpu = [], [], [], []
            for _ in range(rounds):
                l0, q0 = sum(cpu_seconds(p) for p in daemon_pids()), sum(cpu_seconds(p) for p in pids)
                c0, w0 = time.process_time(), time.perf_counter()
                self.conn.domainListGetStats(subset, groups[gname], flags)
                walls.append(time.perf_counter() - w0)
                cpus.append(time.process_time() - c0)
                lcpu.append(sum(cpu_seconds(p) for p in daemon_pids()) - l0)
                qcpu.append(sum(cpu_seconds(p) for p in pids) - q0)
                time.sleep(0.3)
            wall = statistics.median(walls)
            out.append(
                {
                    "domains": k,
                    "groups": gname,
                    "wallMs": round(wall * 1e3, 2),
                    "wallMsPerDomain": round(wall * 1e3 / k, 3),
                    "callerCpuMs": round(statistics.median(cpus) * 1e3, 2),
                    "libvirtdCpuMs": round(statistics.fmean(lcpu) * 1e3, 1),
                    "qemuCpuMs": round(statistics.fmean(qcpu) * 1e3, 1),
                    "load": loadavg(),
                }
            )
            log(f"    {k:>3} domains, {gname}: {out[-1]['wallMs']} ms wall, {out[-1]['libvirtdCpuMs']} ms libvirtd CPU")
        return {
            "rounds": rounds,
            "rows": out,
            "cycle": self.stats_cycle(out, full_name, cheap_name, DEFAULT_FULL_EVERY, cycle_cost),
            "note": "libvirtd is shared: its CPU includes other users' calls",
        }

    @staticmethod
    def stats_cycle(
        rows: list[dict[str, Any]], full_name: str, cheap_name: str, full_every: int, cycle_cost: Callable[..., float]
    ) -> list[dict[str, Any]]:
        """The operator's schedule (one full round, full_every - 1 cheap ones): the average cost per
        round, what pacing follows, and libvirtd's share of one core at the default 2 s interval."""
        by = {(r["domains"], r["groups"]): r for r in rows}
        out = []
        for (k, g), full in sorted(by.items()):
            cheap = by.get((k, cheap_name))
            if g != full_name or cheap is None:
                continue
            wall = cycle_cost(full["wallMs"], cheap["wallMs"], full_every)
            lcpu = cycle_cost(full["libvirtdCpuMs"], cheap["libvirtdCpuMs"], full_every)
            out.append(
                {
                    "domains": k,
                    "fullEvery": full_every,
                    "fullWallMs": full["wallMs"],
                    "cheapWallMs": cheap["wallMs"],
                    "perRoundWallMs": round(wall, 2),
                    "perRoundLibvirtdCpuMs": round(lcpu, 1),
                    "libvirtdCoreShareAt2s": round(lcpu / 2000, 4),
                    "stretches": wall / 1000 > 0.1 * 2.0,  # pacing's budget: 10 % of the 2 s interval
                }
            )
        return out

    # ------------------------------------------------------------------ memory per setting
    def phase_memory_settings(self, per: int) -> None:
        import libvirt

        log(f"memory per setting: {per} guests per variant (load {loadavg()})")
        variants = (
            "as built (tb-cache 32 MiB, no balloon, no video)",
            "tb-cache 16 MiB",
            "tb-cache 8 MiB",
            "qemu-default-tb-cache",
            "memballoon",
            "memballoon+freePageReporting",
            "vga+vnc",
        )
        vms = [self.new_name("mem") for _ in range(per * len(variants))]
        for name in vms:
            self.create(name, "Halted")  # one VM per guest: each twin gets its own disks
        assert self.watch is not None
        self.watch.wait(lambda: all(n in self.watch.stopped_at for n in vms), 600, f"{len(vms)} VMs Stopped")

        def variant(root: ET.Element, what: str) -> None:
            feats, devs = root.find("features"), root.find("devices")
            assert feats is not None and devs is not None
            cache = feats.find("tcg/tb-cache")
            if what.startswith("tb-cache ") and cache is not None:
                cache.text, cache.attrib["unit"] = what.split()[1], "MiB"
            if what == "qemu-default-tb-cache" and feats.find("tcg") is not None:
                feats.remove(feats.find("tcg"))  # type: ignore[arg-type]
            if what.startswith("memballoon"):
                for mb in devs.findall("memballoon"):
                    devs.remove(mb)
                attrs = {"freePageReporting": "on"} if "free" in what else {}
                ET.SubElement(ET.SubElement(devs, "memballoon", model="virtio", **attrs), "stats", period="10")
            if what == "vga+vnc":
                for video in devs.findall("video"):
                    devs.remove(video)
                ET.SubElement(devs, "graphics", type="vnc", autoport="yes", listen="127.0.0.1")
                ET.SubElement(ET.SubElement(devs, "video"), "model", type="vga")

        rows = []
        for k, what in enumerate(variants):
            started = []
            for name in vms[k * per : (k + 1) * per]:
                bare, xml = self.bare_xml(name)
                root = ET.fromstring(xml)
                variant(root, what)
                for log_el in root.iter("log"):
                    log_el.set("file", str(self.bare_dir / f"{bare}.log"))
                self.bare_names.add(bare)
                if not started:
                    t_start = time.monotonic()
                started.append((bare, self.conn.createXML(ET.tostring(root, encoding="unicode"), 0)))
            deadline = time.monotonic() + 300
            boots = []
            for bare, _ in started:
                path = self.bare_dir / f"{bare}.log"
                while time.monotonic() < deadline:
                    with contextlib.suppress(OSError):
                        if READY_MARKER in path.read_text(errors="replace"):
                            boots.append(time.monotonic() - t_start)
                            break
                    time.sleep(0.2)
            time.sleep(5)
            mem = self.qemu_memory([b for b, _ in started])
            boot = r3(statistics.median(boots)) if boots else None
            rows.append({"variant": what, **mem, "bootToMarkerSeconds": boot, "load": loadavg()})
            log(f"  {what}: QEMU RSS median {mem['rssMiBMedian']} MiB, PSS {mem['pssMiBMedian']} MiB, boot {boot} s")
            for _, dom in started:
                with contextlib.suppress(libvirt.libvirtError):
                    dom.destroy()
        self.results["memorySettings"] = rows
        self.delete(vms, 600)

    # ------------------------------------------------------------------ main
    def run(self) -> dict[str, Any]:
        from kubernetes import client

        self.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=self.ns)))
        try:
            self.watch = VMWatchFor(self)
            self.watch.start()
            if self.args.rate_vms:
                log(f"control plane alone: API requests for {self.args.rest_seconds:g} s")
                self.results["controlPlaneAloneRequestsPerMinute"] = self.request_rates(self.args.rest_seconds)
            self.start_operator()
            self.start_gateway()
            if self.args.memory_settings:
                self.phase_memory_settings(self.args.memory_settings)
            if self.args.pause:
                prefixes = (self.ns + "_", f"k3svirt-bench-bare-{self.suffix}")
                uri = self.tb.get("LIBVIRT_DEFAULT_URI", "qemu:///system")
                self.suspender = Suspender(uri, prefixes, self.may_pause)
                self.suspender.start()
            log(f"operator pid {self.operator.pid if self.operator else '?'}, gateway {self.gw_url}, ns {self.ns}")
            for n in self.args.bursts:
                for via in self.args.via:
                    self.phase_burst(n, via)
            if self.args.rate_vms:
                self.phase_rate(self.args.rate_vms, self.args.rate)
        finally:
            if self.gw is not None:
                self.gw.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.gw.wait(15)
            if self.suspender is not None:
                self.suspender.stop_flag = True
                self.results["pausedDomains"] = self.suspender.paused
            self.cleanup()
        return self.results


def VMWatchFor(bench: Bench) -> Any:  # noqa: N802 - a constructor
    from bench_vm import VMWatch

    return VMWatch(bench.api_client, bench.ns, bench.check_alive)


def report(res: dict[str, Any]) -> None:
    print("\nscale figures (load average 1/5/15 min next to each)")
    for b in res.get("bursts", []):
        o, r = b["operator"], b["bare"]
        print(
            f"burst {b['n']:>3} via {b['via']:<8} all Ready {o['allReady']:>7} s  p50 {o['p50']} p95 {o['p95']}"
            f"  | bare all running {r.get('allRunning')} s p50 {r['p50']} p95 {r['p95']}"
            f"  | ratio all {b['ratioAll']} p50 {b['ratioP50']} p95 {b['ratioP95']}  [load {o['load']} / {r['load']}]"
        )
    if "rate" in res:
        x = res["rate"]
        bare = x.get("bare") or {}
        print(
            f"rate {x['n']} at {x['rate']}/s: operator p50 {x['operator']['p50']} p95 {x['operator']['p95']}"
            f" | bare p50 {bare.get('p50')} p95 {bare.get('p95')} | ratio p95 {x.get('ratioP95')}"
            f"  [load {x['operator']['load']} / {bare.get('load')}]"
        )
    for row in res.get("memorySettings", []):
        print(
            f"memory {row['variant']:<50} QEMU RSS {row['rssMiBMedian']} MiB PSS {row['pssMiBMedian']} MiB"
            f" (n={row['guests']}) [load {row['load']}]"
        )
    if "atRest" in res:
        print("at rest:", json.dumps(res["atRest"], indent=1))
    for row in (res.get("statsCost") or {}).get("rows", []):
        print(
            f"stats {row['domains']:>3} domains {row['groups']:<45} wall {row['wallMs']} ms"
            f" ({row['wallMsPerDomain']} ms/domain) caller CPU {row['callerCpuMs']} ms libvirtd CPU "
            f"{row['libvirtdCpuMs']} ms QEMU CPU {row['qemuCpuMs']} ms [load {row['load']}]"
        )
    for row in (res.get("statsCost") or {}).get("cycle", []):
        print(
            f"stats {row['domains']:>3} domains, schedule 1 full + {row['fullEvery'] - 1} cheap:"
            f" full {row['fullWallMs']} ms, cheap {row['cheapWallMs']} ms,"
            f" per round {row['perRoundWallMs']} ms wall, libvirtd"
            f" {row['perRoundLibvirtdCpuMs']} ms CPU ({row['libvirtdCoreShareAt2s']:.1%} of a core at 2 s)"
            f"{', stretches' if row['stretches'] else ''}"
        )
    print("\nBENCH_SCALE_JSON " + json.dumps(res, sort_keys=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--bursts", default="10", help="comma-separated N for the at-once bursts ('' = none)")
    ap.add_argument("--via", default="kubectl,gateway")
    ap.add_argument("--rate-vms", type=int, default=0, help="VMs POSTed at --rate per second (0 = skip)")
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument(
        "--rate-bare",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the bare twins at the same rate, their rest figures and the stats cost",
    )
    ap.add_argument("--rest-seconds", type=float, default=60.0)
    ap.add_argument("--memory-settings", type=int, default=0, help="guests per memory variant (0 = skip)")
    ap.add_argument(
        "--pause",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pause every domain of the run once it runs (memory and CPU of a shared box)",
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up on kill as on Ctrl-C
    args = ap.parse_args()
    args.bursts = [int(x) for x in args.bursts.split(",") if x.strip()]
    args.via = [v for v in args.via.split(",") if v]
    args.client, args.client_path = "layer", None
    if os.environ.get("K3SVIRT_TESTBED_NODE") == "0":
        os.environ.setdefault("K3SVIRT_RESERVATIONS", "off")  # no kubelet: nothing would admit a reservation
    t0 = time.monotonic()
    bench = Scale(args)
    try:
        bench.run()
    finally:  # a run stopped half-way still prints what it measured
        res = bench.results
        res["benchSeconds"] = round(time.monotonic() - t0, 1)
        res["machine"] = f"{os.cpu_count()} cores, shared"
        res["maxParallelStarts"] = os.environ.get("K3SVIRT_MAX_PARALLEL_STARTS", "default (20)")
        report(res)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "bench"))
    main()
