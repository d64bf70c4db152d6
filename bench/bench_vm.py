#!/usr/bin/env python3
"""Benchmark: VirtualMachine create-to-Ready against a bare `virsh create`, operator memory, drift repair.

Runs the real operator (`.venv/bin/k3svirt-operator`) as a subprocess against the test bed, as
tests/e2e/conftest.py does, with its own node name, a free metrics port and
K3SVIRT_STOP_GRACE_SECONDS=2, in its own namespace; everything it creates is deleted at the end
(VMs, libvirt domains, disks, the namespace). Guest: the tiny test guest (128Mi, 1 vCPU, one 64Mi
blank qcow2 disk, one NAT NIC on libvirt's 'default' network), domain type from the test bed
(`qemu` = TCG where nested KVM hangs).

Measured (wall clock, time.time(); the VM's Ready is seen through a Kubernetes watch):
1. create -> Ready=True through the Python client (one create call on a warm connection), paired
   with a bare start of the SAME domain: the operator-generated XML (`XMLDesc(INACTIVE)` = `virsh
   dumpxml --inactive`) renamed, new UUID and MAC, its own fresh disk and console log, started with
   `virsh create` (the CLI, process start included; the domain is running when it returns, checked
   with `virsh domstate` outside the timing) and with libvirt's createXML on a warm connection.
   Each operator VM is deleted before its bare twin starts, so no bench guest runs during a
   measurement. Ratio = operator / bare, median over --vms pairs.
   A few VMs also go through `kubectl apply` (its own process start, ~100-200 ms, included).
2. p50/p95 create -> Ready for --vms sequential (the pairs above) and --vms concurrent VMs
   (create all, then wait for all).
3. Operator VmRSS and PSS (/proc/<pid>/status, smaps_rollup) idle with 0 VMs and with --defined
   VMs under runStrategy Halted (domains defined, not running: that many TCG guests do not fit in
   2 cores); time from `virsh destroy` of a running VM to the domain running again (median of 5);
   stats freshness (now - status.monitoring.updatedAt) over the running VMs.
4. With --profile (default: only if the median ratio misses 1.3) the operator is restarted under
   a timing shim (this file, --operator-shim: wraps reconcile phases, qemu-img, define/start,
   status patches and kopf event posting with timestamps; no operator code changes) for a few
   more VMs, and the time from create to Ready is split into phases.

Prints a table and one JSON line (prefix BENCH_VM_JSON). Asserts nothing about timing.
Other engineers' tests may share libvirtd and the CPU: figures are noisy.

    .venv/bin/python bench/bench_vm.py [--vms 20] [--defined 100] [--profile|--no-profile]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GROUP, VERSION, PLURAL = "k3svirt.io", "v1alpha1", "virtualmachines"
TARGET_RATIO = 1.3
BARE_DIR = Path("/var/lib/libvirt/images")


# ---------------------------------------------------------------------- small helpers
def pct(values: Iterable[float], p: float) -> float | None:
    xs = sorted(values)
    if not xs:
        return None
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def med(values: Iterable[float]) -> float | None:
    xs = list(values)
    return statistics.median(xs) if xs else None


def r3(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log(msg: str) -> None:
    print(f"[bench_vm {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def virsh(*args: str, check: bool = True) -> str:
    proc = subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise RuntimeError(f"virsh {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def testbed_env() -> dict[str, str]:
    proc = subprocess.run(
        ["bash", str(ROOT / "tests/harness/testbed.sh"), "start"], capture_output=True, text=True, timeout=1800
    )
    if proc.returncode != 0:
        sys.exit(f"the test bed did not come up:\n{proc.stderr[-3000:]}")
    return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)


def proc_memory(pid: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            num = int(val.split()[0])
            out[key] = num / 1024 if key != "Threads" else num
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, val = line.partition(":")
        if key == "Pss":
            out["Pss"] = int(val.split()[0]) / 1024
    return out


# ---------------------------------------------------------------------- operator subprocess
class Operator:
    def __init__(self, env: dict[str, str], log_path: Path, argv: list[str]) -> None:
        self.env, self.log_path, self.argv = env, log_path, argv
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import urllib.request

        out = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{self.env['K3SVIRT_METRICS_PORT']}/healthz"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited with {self.proc.returncode}; log: {self.log_path}")
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"operator did not come up; log: {self.log_path}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---------------------------------------------------------------------- watch of the bench namespace
class VMWatch(threading.Thread):
    """Records when each VM (by name) was first seen Ready=True, Stopped, and gone."""

    def __init__(self, api_client: Any, namespace: str, check: Callable[[], None]) -> None:
        super().__init__(daemon=True)
        self.api_client, self.namespace, self.check = api_client, namespace, check
        self.cond = threading.Condition()
        self.objs: dict[str, dict] = {}
        self.ready_at: dict[str, float] = {}
        self.stopped_at: dict[str, float] = {}
        self.gone_at: dict[str, float] = {}
        self._stop_flag = False

    def run(self) -> None:
        from kubernetes import client, watch

        api = client.CustomObjectsApi(self.api_client)
        while not self._stop_flag:
            try:
                w = watch.Watch()
                for ev in w.stream(
                    api.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.namespace,
                    PLURAL,
                    timeout_seconds=300,
                    _request_timeout=330,
                ):
                    self._handle(ev["type"], ev["object"], time.time())
                    if self._stop_flag:
                        w.stop()
            except Exception as exc:  # noqa: BLE001  (reconnect on any watch failure)
                if not self._stop_flag:
                    log(f"watch restarted after {type(exc).__name__}: {exc}")
                    time.sleep(0.5)

    def _handle(self, etype: str, obj: dict, now: float) -> None:
        name = obj["metadata"]["name"]
        with self.cond:
            if etype == "DELETED":
                self.objs.pop(name, None)
                self.gone_at.setdefault(name, now)
            else:
                self.objs[name] = obj
                self.gone_at.pop(name, None)
                st = obj.get("status") or {}
                if any(c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or []):
                    self.ready_at.setdefault(name, now)
                if st.get("printableStatus") == "Stopped" and st.get("domainName"):
                    self.stopped_at.setdefault(name, now)
            self.cond.notify_all()

    def wait(self, pred: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        checked = time.monotonic()
        with self.cond:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
                if time.monotonic() - checked > 5:
                    checked = time.monotonic()
                    self.check()
                self.cond.wait(min(left, 1.0))

    def stop(self) -> None:
        self._stop_flag = True


# ---------------------------------------------------------------------- the bench
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        import libvirt
        from kubernetes import client, config

        self.args = args
        self.tb = testbed_env()
        self.kubeconfig = self.tb["KUBECONFIG"]
        self.suffix = uuid.uuid4().hex[:8]
        self.ns = f"bench-vm-{self.suffix}"
        self.node = f"bench-vm-{self.suffix}"
        self.api_client = config.new_client_from_config(config_file=self.kubeconfig)
        self.core = client.CoreV1Api(self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)
        self.conn = libvirt.open(self.tb.get("LIBVIRT_DEFAULT_URI", "qemu:///system"))
        self.work = Path(f"/tmp/k3svirt-bench-vm-{self.suffix}")
        self.work.mkdir(parents=True)
        self.bare_dir = BARE_DIR / f"k3svirt-bench-{self.suffix}"
        self.bare_names: set[str] = set()
        self.operator: Operator | None = None
        self.watch: VMWatch | None = None
        self.results: dict[str, Any] = {"domainType": self.tb.get("K3SVIRT_DOMAIN_TYPE"), "namespace": self.ns}
        self.counter = 0

    # ------------------------------------------------------------------ plumbing
    def operator_env(self) -> dict[str, str]:
        env = {
            **os.environ,
            **self.tb,
            "K3SVIRT_NODE_NAME": self.node,
            "K3SVIRT_STOP_GRACE_SECONDS": "2",
            "K3SVIRT_METRICS_PORT": str(free_port()),
            "PYTHONUNBUFFERED": "1",
        }
        return {**env, **client_preload_env(self.args.client, self.args.client_path)}

    def start_operator(self, shim_trace: Path | None = None) -> None:
        if shim_trace is None:
            argv = [str(ROOT / ".venv/bin/k3svirt-operator")]
        else:
            argv = [str(ROOT / ".venv/bin/python"), str(Path(__file__).resolve()), "--operator-shim", str(shim_trace)]
        self.operator = Operator(self.operator_env(), self.work / "operator.log", argv)
        self.operator.start()

    def check_alive(self) -> None:
        """Fail fast when the namespace went away or the operator died (shared test bed)."""
        ns = self.core.read_namespace(self.ns)
        if ns.metadata.deletion_timestamp is not None:
            raise RuntimeError(f"namespace {self.ns} is being deleted by someone else (another test's cleanup?)")
        if self.operator is not None and not self.operator.alive():
            raise RuntimeError(f"the operator exited; log: {self.work / 'operator.log'}")

    def vm_body(self, name: str, run_strategy: str = "Always") -> dict:
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "VirtualMachine",
            "metadata": {"name": name},
            "spec": {
                "runStrategy": run_strategy,
                "nodeName": self.node,
                "cpu": {"cores": 1},
                "memory": {"size": "128Mi"},
                "boot": {
                    "kernel": {
                        "path": self.tb["K3SVIRT_GUEST_KERNEL"],
                        "initrdPath": self.tb["K3SVIRT_GUEST_INITRD"],
                        "cmdline": f"console=ttyS0 quiet no_timer_check k3svirt.hostname={name}",
                    }
                },
                "disks": [{"name": "scratch", "size": "64Mi", "source": {"blank": {}}}],
                "networks": [{"name": "default", "nat": {"network": "default"}}],
            },
        }

    def new_name(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.counter:03d}"

    def create(self, name: str, run_strategy: str = "Always") -> float:
        from kubernetes.client.rest import ApiException

        t0 = time.time()
        try:
            self.custom.create_namespaced_custom_object(
                GROUP, VERSION, self.ns, PLURAL, self.vm_body(name, run_strategy)
            )
        except ApiException as exc:
            self.check_alive()
            raise RuntimeError(f"creating {name}: {exc.status} {exc.reason}") from exc
        return t0

    def delete(self, names: list[str], timeout: float = 300) -> float:
        t0 = time.time()
        for n in names:
            with contextlib.suppress(Exception):
                self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, n)
        assert self.watch is not None
        self.watch.wait(lambda: all(n in self.watch.gone_at for n in names), timeout, f"deletion of {len(names)} VMs")
        return time.time() - t0

    def domain(self, vm: str) -> str:
        return f"{self.ns}_{vm}"

    # ------------------------------------------------------------------ bare twin of an operator domain
    def reconnect(self) -> None:
        import libvirt

        with contextlib.suppress(libvirt.libvirtError):
            if self.conn.isAlive():
                return
        with contextlib.suppress(libvirt.libvirtError):
            self.conn.close()
        deadline = time.monotonic() + 60
        while True:
            try:
                self.conn = libvirt.open(self.tb.get("LIBVIRT_DEFAULT_URI", "qemu:///system"))
                return
            except libvirt.libvirtError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def bare_xml(self, vm: str) -> tuple[str, str]:
        import libvirt

        dom = self.conn.lookupByName(self.domain(vm))
        root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        vm_dir = str(Path(self.tb.get("K3SVIRT_STORAGE_ROOT", "/var/lib/k3svirt")) / "vms" / self.ns / vm)
        bare = f"k3svirt-bench-bare-{self.suffix}-{vm}"
        bdir = self.bare_dir / vm
        bdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.bare_dir, 0o755)
        os.chmod(bdir, 0o755)
        root.find("name").text = bare  # type: ignore[union-attr]
        u = root.find("uuid")
        if u is not None:
            u.text = str(uuid.uuid4())
        md = root.find("metadata")
        if md is not None:
            root.remove(md)  # no k3svirt identity: the operator's stats must not claim the twin
        for mac in root.iter("mac"):
            if mac.get("address"):
                mac.set("address", "52:54:00:" + ":".join(f"{random.randrange(256):02x}" for _ in range(3)))
        for el in root.iter():
            for k, v in list(el.attrib.items()):
                if v.startswith(vm_dir):
                    el.set(k, str(bdir) + v[len(vm_dir) :])
        for disk in root.findall("devices/disk"):
            src = disk.find("source")
            drv = disk.find("driver")
            if src is not None and src.get("file", "").startswith(str(bdir)):
                fmt = drv.get("type", "qcow2") if drv is not None else "qcow2"
                subprocess.run(["qemu-img", "create", "-q", "-f", fmt, src.get("file"), "64M"], check=True)
        return bare, ET.tostring(root, encoding="unicode")

    def bare_virsh(self, bare: str, xml: str) -> float:
        path = self.work / f"{bare}.xml"
        path.write_text(xml)
        self.bare_names.add(bare)
        t0 = time.time()
        virsh("create", str(path))
        dt = time.time() - t0
        state = virsh("domstate", bare)
        if state != "running":
            raise RuntimeError(f"bare domain {bare} is {state!r} after virsh create")
        virsh("destroy", bare)
        return dt

    def bare_api(self, bare: str, xml: str) -> float:
        import libvirt

        t0 = time.time()
        dom = self.conn.createXML(xml, 0)
        dt = time.time() - t0
        if dom.state()[0] != libvirt.VIR_DOMAIN_RUNNING:
            raise RuntimeError(f"bare domain {bare} not running after createXML")
        dom.destroy()
        return dt

    def bare_api_persistent(self, bare: str, xml: str) -> float:
        """defineXML + create, as the operator does (persistent domain), warm connection."""
        t0 = time.time()
        dom = self.conn.defineXML(xml)
        dom.create()
        dt = time.time() - t0
        dom.destroy()
        dom.undefine()
        return dt

    # ------------------------------------------------------------------ phases
    def phase_sequential(self) -> None:
        assert self.watch is not None
        n = self.args.vms
        import libvirt

        op, bv, ba, bp, ratio_v, ratio_a, dels = [], [], [], [], [], [], []
        skipped = 0
        log(f"sequential: {n} VMs, each paired with a bare virsh create / createXML of its domain XML")
        for i in range(n):
            name = self.new_name("seq")
            t0 = self.create(name)
            self.watch.wait(lambda name=name: name in self.watch.ready_at, 300, f"{name} Ready")
            dt = self.watch.ready_at[name] - t0
            try:
                bare, xml = self.bare_xml(name)
                dels.append(self.delete([name]))
                v = self.bare_virsh(bare, xml)
                a = self.bare_api(bare, xml)
                p = self.bare_api_persistent(bare, xml)
            except (libvirt.libvirtError, RuntimeError) as exc:  # e.g. libvirtd restarted by another test
                log(f"  {i + 1}/{n}: pair skipped ({exc}); reconnecting")
                skipped += 1
                self.reconnect()
                with contextlib.suppress(Exception):
                    self.delete([name])
                continue
            bp.append(p)
            op.append(dt)
            bv.append(v)
            ba.append(a)
            ratio_v.append(dt / v)
            ratio_a.append(dt / a)
            log(
                f"  {i + 1}/{n}: create->Ready {dt:.3f} s, virsh create {v:.3f} s, createXML {a:.3f} s, "
                f"ratio {dt / v:.2f}"
            )
        self.results["sequential"] = {
            "n": len(op),
            "skippedPairs": skipped,
            "readyP50": r3(pct(op, 50)),
            "readyP95": r3(pct(op, 95)),
            "readyMin": r3(min(op)),
            "readyMax": r3(max(op)),
            "bareVirshP50": r3(pct(bv, 50)),
            "bareVirshP95": r3(pct(bv, 95)),
            "bareApiP50": r3(pct(ba, 50)),
            "bareApiP95": r3(pct(ba, 95)),
            "bareDefineStartP50": r3(pct(bp, 50)),
            "ratioVsVirshMedian": r3(med(ratio_v)),
            "ratioVsVirshP95": r3(pct(ratio_v, 95)),
            "ratioVsApiMedian": r3(med(ratio_a)),
            "deleteToGoneP50": r3(pct(dels, 50)),
        }

    def phase_kubectl(self, n: int = 5) -> None:
        assert self.watch is not None
        times = []
        log(f"kubectl apply: {n} VMs")
        for _ in range(n):
            name = self.new_name("kubectl")
            t0 = time.time()
            subprocess.run(
                ["kubectl", "--kubeconfig", self.kubeconfig, "apply", "-n", self.ns, "-f", "-"],
                input=json.dumps(self.vm_body(name)),
                text=True,
                check=True,
                capture_output=True,
            )
            self.watch.wait(lambda name=name: name in self.watch.ready_at, 300, f"{name} Ready")
            times.append(self.watch.ready_at[name] - t0)
            self.delete([name])
        self.results["kubectlApply"] = {"n": n, "readyP50": r3(pct(times, 50)), "readyMax": r3(max(times))}

    def phase_concurrent(self) -> list[str]:
        assert self.watch is not None
        n = self.args.vms
        log(f"concurrent: create {n} VMs, then wait for all")
        starts = {}
        for _ in range(n):
            name = self.new_name("conc")
            starts[name] = self.create(name)
        self.watch.wait(lambda: all(x in self.watch.ready_at for x in starts), 600, f"{n} concurrent VMs Ready")
        times = [self.watch.ready_at[x] - t for x, t in starts.items()]
        first = min(starts.values())
        self.results["concurrent"] = {
            "n": n,
            "readyP50": r3(pct(times, 50)),
            "readyP95": r3(pct(times, 95)),
            "readyMax": r3(max(times)),
            "allReadyAfter": r3(max(self.watch.ready_at[x] for x in starts) - first),
            "createCallsTook": r3(max(starts.values()) - first),
        }
        return list(starts)

    def phase_freshness(self, names: list[str], seconds: float) -> None:
        """Stats freshness over running VMs, sampled every second: now - sampledAt of the node endpoint's
        live figures (/stats, what `kubectl k3svirt stats` and the gateway show), and now -
        status.monitoring.updatedAt (written on a material change or every max-age, not every round)."""
        log(f"stats freshness: sampling /stats and status.monitoring of {len(names)} running VMs for {seconds:.0f} s")
        ages: list[float] = []
        live: list[float] = []
        missing = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            items = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL)["items"]
            now = time.time()
            for it in items:
                if it["metadata"]["name"] not in names:
                    continue
                mon = (it.get("status") or {}).get("monitoring") or {}
                upd = mon.get("updatedAt")
                if upd:
                    ages.append(now - datetime.fromisoformat(upd.replace("Z", "+00:00")).timestamp())
                else:
                    missing += 1
                if mon.get("endpoint"):
                    with contextlib.suppress(OSError, ValueError, KeyError):
                        with urllib.request.urlopen(mon["endpoint"], timeout=2) as r:
                            sampled = json.loads(r.read())["sampledAt"]
                        live.append(time.time() - datetime.fromisoformat(sampled.replace("Z", "+00:00")).timestamp())
            time.sleep(1.0)
        self.results["statsFreshness"] = {
            "samples": len(ages),
            "withoutUpdatedAt": missing,
            "liveAgeP50": r3(pct(live, 50)),
            "liveAgeP95": r3(pct(live, 95)),
            "liveAgeMax": r3(max(live)) if live else None,
            "statusAgeP50": r3(pct(ages, 50)),
            "statusAgeP95": r3(pct(ages, 95)),
            "statusAgeMax": r3(max(ages)) if ages else None,
            "note": "live = the node endpoint's sampledAt (K3SVIRT_STATS_INTERVAL); status = updatedAt, "
            "written on a material change or every K3SVIRT_STATUS_SUMMARY_MAX_AGE_SECONDS (300 s)",
        }

    def phase_drift(self, name: str, reps: int = 5) -> None:
        import libvirt

        log(f"drift: virsh destroy {self.domain(name)} x{reps}, time until running again")
        times = []
        for _ in range(reps):
            time.sleep(random.uniform(2.0, 4.0))  # jitter: the loop requeues every 3 s while no DHCP lease
            dom = self.conn.lookupByName(self.domain(name))
            virsh("destroy", self.domain(name))
            t0 = time.time()
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                with contextlib.suppress(libvirt.libvirtError):
                    if dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING:
                        break
                time.sleep(0.01)
            else:
                raise TimeoutError("destroyed domain was not started again within 120 s")
            times.append(time.time() - t0)
            log(f"  repaired in {times[-1]:.3f} s")
        self.results["driftRepair"] = {
            "n": reps,
            "median": r3(med(times)),
            "max": r3(max(times)),
            "all": [r3(t) for t in times],
        }

    def phase_defined(self) -> None:
        import libvirt

        assert self.watch is not None and self.operator is not None
        n = self.args.defined
        log(f"defined: {n} VMs with runStrategy Halted")
        starts = {}
        for _ in range(n):
            name = self.new_name("halt")
            starts[name] = self.create(name, "Halted")
        self.watch.wait(lambda: all(x in self.watch.stopped_at for x in starts), 900, f"{n} Halted VMs Stopped")
        first = min(starts.values())
        all_stopped = max(self.watch.stopped_at[x] for x in starts) - first
        defined = {self.domain(x) for x in starts} & set(self.conn.listDefinedDomains())
        log(f"  {len(defined)}/{n} domains defined after {all_stopped:.1f} s; settling 15 s")
        time.sleep(15)
        mem = proc_memory(self.operator.pid)
        active = [
            d
            for d in self.conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
            if d.name().startswith(self.ns + "_")
        ]
        self.results["defined"] = {
            "n": n,
            "domainsDefined": len(defined),
            "runningOfThem": len(active),
            "allStoppedAfter": r3(all_stopped),
            "rssMiB": round(mem["VmRSS"], 1),
            "pssMiB": round(mem["Pss"], 1),
            "hwmMiB": round(mem["VmHWM"], 1),
            "threads": mem["Threads"],
        }
        log(f"  operator RSS {mem['VmRSS']:.1f} MiB, PSS {mem['Pss']:.1f} MiB; deleting")
        self.results["defined"]["deleteAllTook"] = r3(self.delete(list(starts), 900))

    def idle_memory(self, key: str) -> None:
        assert self.operator is not None
        time.sleep(5)
        mem = proc_memory(self.operator.pid)
        self.results[key] = {
            "rssMiB": round(mem["VmRSS"], 1),
            "pssMiB": round(mem["Pss"], 1),
            "hwmMiB": round(mem["VmHWM"], 1),
            "threads": mem["Threads"],
        }

    # ------------------------------------------------------------------ profile (timing shim)
    def phase_profile(self, n: int) -> None:
        assert self.operator is not None and self.watch is not None
        trace = self.work / "shim-trace.jsonl"
        log(f"profile: restarting the operator under the timing shim, {n} sequential VMs")
        self.operator.stop()
        self.start_operator(trace)
        time.sleep(3)
        created: dict[str, tuple[float, float]] = {}
        for _ in range(n):
            name = self.new_name("prof")
            t0 = self.create(name)
            created[name] = (t0, time.time())
            self.watch.wait(lambda name=name: name in self.watch.ready_at, 300, f"{name} Ready")
            time.sleep(1.0)  # let the loop finish posting its events
            self.delete([name])
        recs = [json.loads(line) for line in trace.read_text().splitlines() if line.strip()]
        self.results["profile"] = summarize_trace(recs, created, self.watch.ready_at)

    # ------------------------------------------------------------------ cleanup
    def cleanup(self) -> None:
        import libvirt

        log("cleanup")
        with contextlib.suppress(Exception):
            self.reconnect()
        with contextlib.suppress(Exception):
            items = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL)["items"]
            names = [i["metadata"]["name"] for i in items]
            if names and self.operator is not None and self.operator.alive():
                with contextlib.suppress(Exception):
                    self.delete(names, 300)
            for i in self.custom.list_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL)["items"]:
                with contextlib.suppress(Exception):  # operator gone: strip finalizers
                    self.custom.patch_namespaced_custom_object(
                        GROUP, VERSION, self.ns, PLURAL, i["metadata"]["name"], {"metadata": {"finalizers": None}}
                    )
                    self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, i["metadata"]["name"])
        if self.operator is not None:
            self.operator.stop()
        if self.watch is not None:
            self.watch.stop()
        with contextlib.suppress(libvirt.libvirtError):
            for dom in self.conn.listAllDomains():
                if (
                    dom.name().startswith(self.ns + "_")
                    or dom.name() in self.bare_names
                    or dom.name().startswith(f"k3svirt-bench-bare-{self.suffix}")
                ):
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.destroy()
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.undefine()
        shutil.rmtree(self.bare_dir, ignore_errors=True)
        shutil.rmtree(
            Path(self.tb.get("K3SVIRT_STORAGE_ROOT", "/var/lib/k3svirt")) / "vms" / self.ns, ignore_errors=True
        )
        with contextlib.suppress(Exception):
            self.core.delete_namespace(self.ns)
        left = [
            d.name()
            for d in self.conn.listAllDomains()
            if d.name().startswith(self.ns + "_") or d.name().startswith(f"k3svirt-bench-bare-{self.suffix}")
        ]
        self.results["leftoverDomains"] = len(left)
        self.conn.close()

    # ------------------------------------------------------------------ main
    def run(self) -> dict[str, Any]:
        from kubernetes import client

        self.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=self.ns)))
        try:
            self.watch = VMWatch(self.api_client, self.ns, self.check_alive)
            self.watch.start()
            self.start_operator()
            log(
                f"operator pid {self.operator.pid if self.operator else '?'}, node {self.node}, "
                f"namespace {self.ns}, log {self.work / 'operator.log'}"
            )
            self.custom.list_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL)  # warm the connection
            self.results["client"] = self.args.client
            if self.args.memory_only:
                time.sleep(15)  # let start-up settle: the figure is the idle one
                self.idle_memory("idleBefore")
                self.phase_defined()
                self.idle_memory("idleAfter")
                return self.results
            self.idle_memory("idleBefore")
            self.results["importRssMiB"] = import_footprint()
            self.phase_sequential()
            self.phase_kubectl()
            names = self.phase_concurrent()
            self.phase_freshness(names, self.args.freshness_seconds)
            keep = names[0]
            self.results["concurrent"]["deleteTook"] = r3(self.delete(names[1:]))
            self.phase_drift(keep)
            self.delete([keep])
            self.phase_defined()
            self.idle_memory("idleAfter")
            ratio = self.results["sequential"]["ratioVsVirshMedian"]
            if self.args.profile or (self.args.profile is None and ratio is not None and ratio > TARGET_RATIO):
                self.phase_profile(self.args.profile_vms)
        finally:
            self.cleanup()
        return self.results


IMPORT_STEPS = ("python", "libvirt", "kubernetes", "kopf", "k3svirt_operator.handlers")
CLIENTS = ("layer", "kubernetes", "lightkube")


def add_client_args(ap: argparse.ArgumentParser, process: str) -> None:
    ap.add_argument(
        "--client",
        choices=CLIENTS,
        default="layer",
        help=f"make the {process} also load and use this client library (what it would cost)",
    )
    ap.add_argument("--client-path", help="an extra site dir holding --client's library (e.g. pip --target)")


def client_preload_env(client: str, path: str | None) -> dict[str, str]:
    """Environment that makes a Python process load and use another Kubernetes client library at start
    (bench/client_preload/sitecustomize.py): what the process would cost built on that library."""
    if client == "layer":
        return {}
    env = {
        "K3SVIRT_BENCH_CLIENT": client,
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT / "bench/client_preload"), os.environ.get("PYTHONPATH")) if p
        ),
    }
    if path:
        env["K3SVIRT_BENCH_CLIENT_PATH"] = path
    return env


def import_footprint() -> dict[str, float]:
    """VmRSS of a fresh interpreter after each cumulative import (what the operator pays before any VM)."""
    code = (
        "import importlib, json, sys\n"
        "def rss():\n"
        "    for l in open('/proc/self/status'):\n"
        "        if l.startswith('VmRSS:'): return int(l.split()[1]) / 1024\n"
        "out = {'python': rss()}\n"
        f"for m in {list(IMPORT_STEPS[1:])!r}:\n"
        "    importlib.import_module(m); out[m] = rss()\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run(
        [str(ROOT / ".venv/bin/python"), "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "K3SVIRT_NODE_NAME": "bench-import"},
    )
    if proc.returncode != 0:
        return {}
    return {k: round(v, 1) for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


# ---------------------------------------------------------------------- timing shim (runs inside the operator)
def run_operator_shim(trace_path: str) -> None:
    """Wraps operator functions with timestamps (JSON lines to trace_path), then runs the operator."""
    import functools

    import kopf
    from k3svirt_operator import domains, stats, storage, vm_reconciler
    from k3svirt_operator import main as opmain
    from k3svirt_operator.runtime import Runtime

    lock = threading.Lock()
    out = open(trace_path, "a", buffering=1)  # noqa: SIM115  (lives as long as the process)
    cur = threading.local()

    def rec(vm: str | None, phase: str, t0: float, t1: float) -> None:
        with lock:
            out.write(
                json.dumps({"vm": vm, "phase": phase, "t0": t0, "t1": t1, "thread": threading.current_thread().name})
                + "\n"
            )

    def wrap(owner: Any, attr: str, phase: str, vm_of: Callable[..., str | None] | None = None) -> None:
        fn = getattr(owner, attr)

        @functools.wraps(fn)
        def w(*a: Any, **k: Any) -> Any:
            t0 = time.time()
            try:
                return fn(*a, **k)
            finally:
                rec(vm_of(*a, **k) if vm_of else getattr(cur, "vm", None), phase, t0, time.time())

        setattr(owner, attr, w)

    reconcile = vm_reconciler.VMReconciler.reconcile

    @functools.wraps(reconcile)
    def reconcile_w(self: Any, body: Any, *args: Any) -> Any:
        cur.vm = body["metadata"]["name"]
        t0 = time.time()
        try:
            return reconcile(self, body, *args)
        finally:
            rec(cur.vm, "reconcile", t0, time.time())
            cur.vm = None

    vm_reconciler.VMReconciler.reconcile = reconcile_w  # type: ignore[method-assign]
    R = vm_reconciler.VMReconciler
    wrap(R, "_expand", "expand")
    wrap(R, "_provision", "provision")
    wrap(R, "_libvirt_version", "getLibVersion")
    wrap(R, "_build", "build_xml")
    wrap(R, "_apply_power", "apply_power")
    wrap(storage, "ensure_vm_dir", "ensure_vm_dir")
    wrap(storage, "ensure_disks", "ensure_disks")
    wrap(storage, "run_qemu_img", "qemu_img")
    wrap(domains, "observe", "observe")
    wrap(domains, "define", "virDomainDefineXML")
    wrap(domains, "start", "virDomainCreate")
    wrap(vm_reconciler, "_interfaces", "interfaces_leases")
    wrap(stats, "summarize", "stats_summarize", lambda st: None)
    wrap(Runtime, "patch_status", "patch_status", lambda self, plural, ns, name, status: name)
    wrap(kopf, "event", "kopf_event", lambda body, **_: body["metadata"]["name"])
    opmain.main()


def summarize_trace(
    recs: list[dict], created: dict[str, tuple[float, float]], ready_at: dict[str, float]
) -> dict[str, Any]:
    """Per VM: where the time from the create call to Ready (seen by the watch) went."""
    per_phase: dict[str, list[float]] = {}

    def add(k: str, v: float) -> None:
        per_phase.setdefault(k, []).append(v)

    for vm, (t_call, t_ret) in created.items():
        mine = sorted((r for r in recs if r["vm"] == vm), key=lambda r: r["t0"])
        recon = [r for r in mine if r["phase"] == "reconcile"]
        if not recon or vm not in ready_at:
            continue
        first = recon[0]
        # Phases nested in the first reconcile pass.
        inner: dict[str, float] = {}
        for r in mine:
            if r["phase"] != "reconcile" and first["t0"] <= r["t0"] and r["t1"] <= first["t1"]:
                inner[r["phase"]] = inner.get(r["phase"], 0.0) + r["t1"] - r["t0"]
        patches = [r for r in mine if r["phase"] == "patch_status" and r["t0"] >= first["t1"]]
        patch = patches[0] if patches else None
        add("1 create call (API round trip)", t_ret - t_call)
        add("2 create returned -> first reconcile starts (watch, kopf, daemon spawn, to_thread)", first["t0"] - t_ret)
        add("3 first reconcile pass (total)", first["t1"] - first["t0"])
        for k, v in inner.items():
            add(f"3.{k}", v)
        if patch:
            add("4 reconcile end -> status patch starts", patch["t0"] - first["t1"])
            add("5 status patch (PATCH /status)", patch["t1"] - patch["t0"])
            add("6 patch returned -> Ready seen by the watch", ready_at[vm] - patch["t1"])
        add("= create call -> Ready", ready_at[vm] - t_call)
        events = [r for r in mine if r["phase"] == "kopf_event" and r["t0"] >= first["t1"]]
        add("(kopf.event calls after the first pass, total)", sum(r["t1"] - r["t0"] for r in events))
        add("(kopf.event calls after the first pass, count)", len(events))
    return {k: {"median": r3(med(v)), "max": r3(max(v)), "n": len(v)} for k, v in sorted(per_phase.items())}


# ---------------------------------------------------------------------- report
def fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}{unit}" if unit == " s" else f"{v:.2f}{unit}"
    return f"{v}{unit}"


def report(res: dict[str, Any]) -> None:
    s, c, k = res.get("sequential", {}), res.get("concurrent", {}), res.get("kubectlApply", {})
    d, ib, ia = res.get("defined", {}), res.get("idleBefore", {}), res.get("idleAfter", {})
    dr, fr = res.get("driftRepair", {}), res.get("statsFreshness", {})
    rows = [
        ("domain type", res.get("domainType"), ""),
        (
            f"sequential create->Ready p50 / p95 (n={s.get('n')}, Python client)",
            f"{fmt(s.get('readyP50'), ' s')} / {fmt(s.get('readyP95'), ' s')}",
            "",
        ),
        (
            "bare `virsh create` p50 / p95 (CLI incl. process start)",
            f"{fmt(s.get('bareVirshP50'), ' s')} / {fmt(s.get('bareVirshP95'), ' s')}",
            "",
        ),
        ("bare createXML p50 (libvirt API, warm connection)", fmt(s.get("bareApiP50"), " s"), ""),
        ("bare defineXML+create p50 (API, persistent like the operator)", fmt(s.get("bareDefineStartP50"), " s"), ""),
        (
            "ratio operator / virsh create, median (p95)",
            f"{fmt(s.get('ratioVsVirshMedian'))} ({fmt(s.get('ratioVsVirshP95'))})",
            f"target <= {TARGET_RATIO}",
        ),
        ("ratio operator / createXML, median", fmt(s.get("ratioVsApiMedian")), ""),
        (f"kubectl apply -> Ready p50 (n={k.get('n')})", fmt(k.get("readyP50"), " s"), "incl. kubectl start"),
        (
            f"concurrent create->Ready p50 / p95 (n={c.get('n')})",
            f"{fmt(c.get('readyP50'), ' s')} / {fmt(c.get('readyP95'), ' s')}",
            "",
        ),
        ("concurrent: all Ready after first create", fmt(c.get("allReadyAfter"), " s"), ""),
        (
            "operator RSS / PSS idle, 0 VMs (start)",
            f"{fmt(ib.get('rssMiB'), ' MiB')} / {fmt(ib.get('pssMiB'), ' MiB')}",
            "target < 80 MiB",
        ),
        (
            f"operator RSS / PSS, {d.get('n')} Halted VMs defined",
            f"{fmt(d.get('rssMiB'), ' MiB')} / {fmt(d.get('pssMiB'), ' MiB')}",
            "target < 80 MiB",
        ),
        (
            "operator RSS / PSS idle, 0 VMs (after load)",
            f"{fmt(ia.get('rssMiB'), ' MiB')} / {fmt(ia.get('pssMiB'), ' MiB')}",
            "",
        ),
        (f"{d.get('n')} Halted VMs: all Stopped after", fmt(d.get("allStoppedAfter"), " s"), ""),
        (
            "drift repair (virsh destroy -> running) median / max",
            f"{fmt(dr.get('median'), ' s')} / {fmt(dr.get('max'), ' s')}",
            f"all: {dr.get('all')}",
        ),
        (
            "import footprint RSS (python / +libvirt / +kubernetes / +kopf / +operator)",
            " / ".join(fmt(v, "") for v in (res.get("importRssMiB") or {}).values()),
            "MiB",
        ),
        (
            "stats freshness, live /stats: now - sampledAt p50 / max",
            f"{fmt(fr.get('liveAgeP50'), ' s')} / {fmt(fr.get('liveAgeMax'), ' s')}",
            "",
        ),
        (
            "status.monitoring: now - updatedAt p50 / max",
            f"{fmt(fr.get('statusAgeP50'), ' s')} / {fmt(fr.get('statusAgeMax'), ' s')}",
            "",
        ),
    ]
    w = max(len(r[0]) for r in rows)
    print()
    for label, val, note in rows:
        print(f"{label:<{w}}  {val!s:<22} {note}")
    prof = res.get("profile")
    if prof:
        print("\nwhere create->Ready goes (timing shim, medians):")
        pw = max(len(x) for x in prof)
        for label, v in prof.items():
            unit = "" if label.endswith("count)") else " s"
            print(f"  {label:<{pw}}  {fmt(v['median'], unit)}  (max {fmt(v['max'], unit)}, n={v['n']})")
    print("\nBENCH_VM_JSON " + json.dumps(res, sort_keys=True))


def main() -> None:
    if len(sys.argv) >= 3 and sys.argv[1] == "--operator-shim":
        trace = sys.argv[2]
        del sys.argv[1:3]
        run_operator_shim(trace)
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--vms", type=int, default=20, help="VMs for the sequential and the concurrent runs")
    ap.add_argument("--defined", type=int, default=100, help="Halted VMs for the memory figure")
    ap.add_argument("--freshness-seconds", type=float, default=65.0)
    ap.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the timing-shim profile (default: only when the ratio misses the target)",
    )
    ap.add_argument("--profile-vms", type=int, default=8)
    ap.add_argument(
        "--memory-only", action="store_true", help="only the memory figures: idle, --defined Halted VMs, idle again"
    )
    add_client_args(ap, "operator")
    args = ap.parse_args()
    t0 = time.monotonic()
    res = Bench(args).run()
    res["benchSeconds"] = round(time.monotonic() - t0, 1)
    res["note"] = "shared 2-core box, other tests may run concurrently: figures are noisy"
    report(res)


if __name__ == "__main__":
    main()
