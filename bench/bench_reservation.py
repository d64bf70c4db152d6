#!/usr/bin/env python3
"""Benchmark: what a VM's reservation pod costs (docs/accounting.md) — memory, idle CPU, and the time
it adds to create -> Ready, side by side with reservations off.

Needs a kubelet node: the test bed's (`bash tests/harness/testbed.sh start`) or a node instance
(`K3SVIRT_NODE_INSTANCE=1 tests/harness/node.sh start`, then --node <its name>). Runs the real
operator (as tests/e2e/conftest.py does: a free metrics port) twice at once, K3SVIRT_RESERVATIONS=on
for the node and =off as node <node>-off, and removes what it created.

1. create -> Ready=True, --vms VMs per mode one after the other (each deleted before the next),
   interleaved on/off so the machine's load falls on both alike; with reservations also when the
   pod was first seen created, bound and admitted. Polled every 20 ms on a kept-alive connection.
2. With reservations on, --running VMs at once (cpu.request 100m): per reservation pod, RSS and PSS
   of its processes (the sandbox's and the container's pause, found in the pod's cgroup) and of the
   containerd shim that parents them (/proc/<pid>/smaps_rollup), and their CPU over --idle seconds.

Prints a table and one JSON line (prefix BENCH_RESERVATION_JSON). Asserts nothing.

    .venv/bin/python bench/bench_reservation.py [--vms 10] [--running 5] [--idle 30] [--node NAME]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from k3svirt_common import names  # noqa: E402
from k3svirt_common import reservation as rsv  # noqa: E402
from k3svirt_common.kube import ApiError, Client, core_path, group_path, load_config  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[bench_reservation {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def testbed_env() -> dict[str, str]:
    proc = subprocess.run(
        ["bash", str(ROOT / "tests/harness/testbed.sh"), "start"], capture_output=True, text=True, timeout=1800
    )
    if proc.returncode != 0:
        sys.exit(f"the test bed did not come up:\n{proc.stderr[-3000:]}")
    return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)


def vm_body(name: str, env: dict[str, str], node: str) -> dict[str, Any]:
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.VM_KIND,
        "metadata": {"name": name},
        "spec": {
            "runStrategy": "Always",
            "nodeName": node,
            "cpu": {"cores": 1, "request": "100m"},
            "memory": {"size": "128Mi"},
            "boot": {
                "kernel": {
                    "path": env["K3SVIRT_GUEST_KERNEL"],
                    "initrdPath": env["K3SVIRT_GUEST_INITRD"],
                    "cmdline": f"console=ttyS0 quiet no_timer_check k3svirt.hostname={name}",
                }
            },
            "disks": [{"name": "scratch", "size": "64Mi", "source": {"blank": {}}}],
            "networks": [{"name": "default", "nat": {"network": "default"}}],
        },
    }


class Bed:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.node = env["K3SVIRT_NODE_NAME"]
        os.environ["KUBECONFIG"] = env["KUBECONFIG"]
        self.api = Client(load_config(), timeout=30.0)

    def vm_path(self, ns: str, name: str | None = None) -> str:
        return group_path(names.GROUP, names.VERSION, names.VM_PLURAL, ns, name)

    def ready(self, ns: str, name: str) -> bool:
        try:
            vm = self.api.get(self.vm_path(ns, name))
        except ApiError:
            return False
        conds = (vm.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)

    def pod(self, ns: str, name: str) -> dict[str, Any] | None:
        try:
            return self.api.get(core_path("pods", ns, name))
        except ApiError:
            return None

    def wait(self, what: str, pred, timeout: float = 180.0, every: float = 0.02) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return time.time()
            time.sleep(every)
        raise RuntimeError(f"timed out waiting for {what}")

    def timeline(self, ns: str, name: str, *, reservation: bool, timeout: float = 180.0) -> dict[str, float]:
        """Polls (every 20 ms) until the VM is Ready; when each step was first seen: the reservation
        pod created, bound by the scheduler, admitted by the kubelet (status.startTime), the VM's
        status naming the reservation as admitted, Ready."""
        seen: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if reservation and "admitted" not in seen:
                p = self.pod(ns, rsv.pod_name(name))
                now = time.time()
                if p is not None:
                    seen.setdefault("pod_created", now)
                    if (p.get("spec") or {}).get("nodeName"):
                        seen.setdefault("pod_bound", now)
                    if (p.get("status") or {}).get("startTime"):
                        seen.setdefault("admitted", now)
            if self.ready(ns, name):
                seen["ready"] = time.time()
                return seen
            time.sleep(0.02)
        raise RuntimeError(f"timed out waiting for {ns}/{name} to be Ready ({sorted(seen)} seen)")

    def gone(self, ns: str, name: str) -> bool:
        try:
            self.api.get(self.vm_path(ns, name))
        except ApiError as exc:
            return exc.status == 404
        return False


class Operator:
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env, self.log_path = env, log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import urllib.request

        out = self.log_path.open("ab")
        self.proc = subprocess.Popen([str(ROOT / ".venv/bin/k3svirt-operator")], env=self.env, stdout=out,
                                     stderr=subprocess.STDOUT)  # fmt: skip
        url = f"http://127.0.0.1:{self.env['K3SVIRT_METRICS_PORT']}/healthz"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"operator did not come up; log: {self.log_path}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def kubectl(env: dict[str, str], *args: str) -> None:
    subprocess.run(["kubectl", "--kubeconfig", env["KUBECONFIG"], *args], check=True, capture_output=True,
                   timeout=300)  # fmt: skip


# ---------------------------------------------------------------------- processes of a pod
def pod_pids(pod_uid: str) -> list[int]:
    """The processes in the pod's cgroup (cgroup v1 pids controller, or v2)."""
    pids: set[int] = set()
    # Below /kubepods, or below a node instance's cgroupRoot (tests/harness/node.sh).
    for base in (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup")):
        for f in [*base.glob(f"kubepods/**/pod{pod_uid}/**/cgroup.procs"),
                  *base.glob(f"k3svirt-*/kubepods/**/pod{pod_uid}/**/cgroup.procs")]:  # fmt: skip
            pids |= {int(x) for x in f.read_text().split()}
    return sorted(pids)


def parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def mem_kib(pid: int) -> tuple[int, int]:
    rss = pss = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, val = line.partition(":")
        if key == "Rss":
            rss = int(val.split()[0])
        elif key == "Pss":
            pss = int(val.split()[0])
    return rss, pss


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


# ---------------------------------------------------------------------- the runs
def timing_run(bed: Bed, env: dict[str, str], vms: int, tmp: Path) -> dict[str, Any]:
    """Both modes side by side, interleaved (on, off, off, on, ...) so that the load of this shared
    machine falls on both alike. The operator without reservations runs as node <node>-off (no
    kubelet needed there), so each VM is run by exactly one of the two operators."""
    ns = f"bench-rsv-{uuid.uuid4().hex[:6]}"
    kubectl(env, "create", "namespace", ns)
    nodes = {"on": bed.node, "off": f"{bed.node}-off"}
    ops = {}
    for mode in ("on", "off"):
        op_env = {**os.environ, **env, "K3SVIRT_METRICS_PORT": str(free_port()), "K3SVIRT_STOP_GRACE_SECONDS": "2",
                  "K3SVIRT_STATS_INTERVAL": "1", "K3SVIRT_RESERVATIONS": mode,
                  "K3SVIRT_NODE_NAME": nodes[mode]}  # fmt: skip
        ops[mode] = Operator(op_env, tmp / f"operator-{mode}.log")
        ops[mode].start()
    ready: dict[str, list[float]] = {"on": [], "off": []}
    phases: dict[str, list[float]] = {}
    try:
        for i in range(vms + 1):  # the first pair warms caches (image, templates): not counted
            for mode in ("on", "off") if i % 2 == 0 else ("off", "on"):
                name = f"{mode}{i}"
                t0 = time.time()
                bed.api.create(bed.vm_path(ns), vm_body(name, env, nodes[mode]))
                seen = bed.timeline(ns, name, reservation=mode == "on")
                if i:
                    ready[mode].append(seen["ready"] - t0)
                    if mode == "on":
                        for phase, t in seen.items():
                            phases.setdefault(phase, []).append(t - t0)
                bed.api.delete(bed.vm_path(ns, name))
                bed.wait("deleted", lambda name=name: bed.gone(ns, name), every=0.1)
                log(f"{name}: create->Ready {seen['ready'] - t0:.3f} s")
    finally:
        for op in ops.values():
            op.stop()
        kubectl(env, "delete", "namespace", ns, "--wait=false")
    out: dict[str, Any] = {}
    for mode in ("on", "off"):
        all_s = [round(x, 3) for x in ready[mode]]
        out[mode] = {"ready_median_s": statistics.median(ready[mode]), "ready_all_s": all_s}
    # Paired: each on-VM against the off-VM run right next to it.
    out["added_paired_median_s"] = statistics.median(a - b for a, b in zip(ready["on"], ready["off"], strict=True))
    out["on"]["admitted_median_s"] = statistics.median(phases["admitted"])
    out["on"]["phases_median_s"] = {k: round(statistics.median(v), 3) for k, v in phases.items()}
    return out


def memory_run(bed: Bed, env: dict[str, str], running: int, idle: float, tmp: Path) -> dict[str, Any]:
    ns = f"bench-rsv-mem-{uuid.uuid4().hex[:6]}"
    kubectl(env, "create", "namespace", ns)
    op_env = {**os.environ, **env, "K3SVIRT_METRICS_PORT": str(free_port()), "K3SVIRT_STOP_GRACE_SECONDS": "2",
              "K3SVIRT_STATS_INTERVAL": "1"}  # fmt: skip
    op = Operator(op_env, tmp / "operator-mem.log")
    op.start()
    try:
        for i in range(running):
            bed.api.create(bed.vm_path(ns), vm_body(f"m{i}", env, bed.node))
        for i in range(running):
            bed.wait("Ready", lambda i=i: bed.ready(ns, f"m{i}"), timeout=300, every=0.2)
        per_pod = []
        for i in range(running):
            pod = bed.pod(ns, rsv.pod_name(f"m{i}"))
            assert pod is not None
            pids = pod_pids(pod["metadata"]["uid"])
            shims = sorted({parent(p) for p in pids})
            procs = pids + shims
            before = {p: cpu_ticks(p) for p in procs}
            per_pod.append({"pids": pids, "shims": shims, "before": before})
        t0 = time.monotonic()
        time.sleep(idle)
        took = time.monotonic() - t0
        rows = []
        for entry in per_pod:
            pause = [mem_kib(p) for p in entry["pids"]]
            shim = [mem_kib(p) for p in entry["shims"]]
            ticks = sum(cpu_ticks(p) - t for p, t in entry["before"].items())
            rows.append({
                "pause_processes": len(entry["pids"]),
                "pause_rss_kib": sum(r for r, _ in pause), "pause_pss_kib": sum(p for _, p in pause),
                "shim_rss_kib": sum(r for r, _ in shim), "shim_pss_kib": sum(p for _, p in shim),
                "cpu_percent": 100.0 * ticks / CLK_TCK / took,
            })  # fmt: skip
    finally:
        # The VMs go while the operator runs (it holds their finalizers and their domains).
        for i in range(running):
            with contextlib.suppress(ApiError):
                bed.api.delete(bed.vm_path(ns, f"m{i}"))
        for i in range(running):
            bed.wait("deleted", lambda i=i: bed.gone(ns, f"m{i}"), timeout=120, every=0.2)
        op.stop()
        kubectl(env, "delete", "namespace", ns, "--wait=false")

    def avg(key: str) -> float:
        return round(statistics.mean(r[key] for r in rows), 3)

    return {k: avg(k) for k in rows[0]} | {"pods": len(rows)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vms", type=int, default=10)
    ap.add_argument("--running", type=int, default=5)
    ap.add_argument("--idle", type=float, default=30.0)
    ap.add_argument("--node", help="the node to run on (default: the test bed's; e.g. a node instance)")
    args = ap.parse_args()
    env = testbed_env()
    if args.node:
        env["K3SVIRT_NODE_NAME"] = args.node
    bed = Bed(env)
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-reservation-{uuid.uuid4().hex[:6]}"
    tmp.mkdir(parents=True)
    result: dict[str, Any] = {}
    result.update(timing_run(bed, env, args.vms, tmp))
    result["memory"] = memory_run(bed, env, args.running, args.idle, tmp)
    on, off, mem = result["on"], result["off"], result["memory"]
    added = 1000 * result["added_paired_median_s"]
    print(f"create -> Ready, median of {args.vms}: reservations off {off['ready_median_s'] * 1000:.0f} ms, "
          f"on {on['ready_median_s'] * 1000:.0f} ms (added, median of the pairs {added:.0f} ms; "
          f"create -> reservation admitted {on['admitted_median_s'] * 1000:.0f} ms)")  # fmt: skip
    print(f"per reservation pod ({mem['pods']} pods): pause x{mem['pause_processes']:.0f} RSS "
          f"{mem['pause_rss_kib'] / 1024:.2f} MiB PSS {mem['pause_pss_kib'] / 1024:.2f} MiB; shim RSS "
          f"{mem['shim_rss_kib'] / 1024:.2f} MiB PSS {mem['shim_pss_kib'] / 1024:.2f} MiB; "
          f"idle CPU {mem['cpu_percent']:.3f} %")  # fmt: skip
    print("BENCH_RESERVATION_JSON " + json.dumps(result))
    log(f"operator logs in {tmp}")


if __name__ == "__main__":
    main()
