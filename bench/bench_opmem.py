#!/usr/bin/env python3
"""Operator memory by what the cluster holds: RSS/PSS of the real operator (a subprocess, its own node
name, K3SVIRT_RESERVATIONS=off: no kubelet serves that node) idle with 0 VMs, with --own VMs of its node
(Halted: domains defined, not running), with --foreign VMs pinned to another node (what the gateway
bench leaves in the cluster), and with --running tiny guests of its own booted and paused.

Side by side with a baseline: `--baseline-src DIR` runs another revision's operator the same way
(`git archive REV operator common crds | tar -x -C DIR`), each phase measured for both, one after the other.
Also the import footprint of a fresh interpreter (python, libvirt, kopf, ...), the operator's CPU
seconds over each settle window, and with --tracemalloc the operator's top allocation sites at the end
(bench/tracemalloc_dump/sitecustomize.py: a SIGUSR2 writes them).

    K3SVIRT_RESERVATIONS=off .venv/bin/python bench/bench_opmem.py [--own 50,100] [--foreign 1000]
        [--running 3] [--settle 40] [--baseline-src DIR] [--tracemalloc]

Prints figures only (a table and one BENCH_OPMEM_JSON line); asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench_vm import ROOT, Operator, free_port, proc_memory, testbed_env
from k3svirt_common.kube import ApiError, Client, core_path, group_path, load_config

GROUP, VERSION, PLURAL = "k3svirt.io", "v1alpha1", "virtualmachines"
IMPORTS = ("libvirt", "prometheus_client", "jsonschema", "aiohttp", "kopf", "k3svirt_operator.handlers")


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def import_footprint() -> list[tuple[str, float]]:
    """RSS of a fresh interpreter after each import, as the operator's entry point imports (no `kubernetes`)."""
    code = (
        "import importlib, json, sys\n"
        "sys.modules.setdefault('kubernetes', None)\n"
        "def rss():\n"
        "    return int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0]) / 1024\n"
        "out = [('python', rss())]\n"
        f"for m in {list(IMPORTS)!r}:\n"
        "    importlib.import_module(m); out.append((m, rss()))\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "K3SVIRT_NODE_NAME": "bench-import"},
    )
    return (
        [(m, round(v, 1)) for m, v in json.loads(proc.stdout.strip().splitlines()[-1])] if proc.returncode == 0 else []
    )


def vm_body(name: str, node: str, tb: dict[str, str], run: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "runStrategy": "Always" if run else "Halted",
        "nodeName": node,
        "memory": {"size": "128Mi"},
        "cpu": {"cores": 1},
    }
    if run:
        spec["boot"] = {
            "kernel": {
                "path": tb["K3SVIRT_GUEST_KERNEL"],
                "initrdPath": tb["K3SVIRT_GUEST_INITRD"],
                "cmdline": f"console=ttyS0 quiet no_timer_check k3svirt.hostname={name}",
            }
        }
        spec["disks"] = [{"name": "scratch", "size": "64Mi", "source": {"blank": {}}}]
        spec["networks"] = [{"name": "default", "nat": {"network": "default"}}]
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VirtualMachine", "metadata": {"name": name}, "spec": spec}


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tb = testbed_env()
        self.api = Client(load_config(self.tb["KUBECONFIG"]), timeout=60.0, user_agent="bench-opmem")
        self.ns = f"bench-opmem-{uuid.uuid4().hex[:6]}"
        self.node = f"opmem-{uuid.uuid4().hex[:4]}"
        self.work = Path(f"/tmp/{self.ns}")
        self.work.mkdir(parents=True)
        self.path = group_path(GROUP, VERSION, PLURAL, self.ns)
        self.own: list[str] = []
        self.running: list[str] = []
        self.foreign = 0

    # ------------------------------------------------------------------ plumbing
    def create(self, names: list[str], node: str, run: bool = False) -> None:
        def one(n: str) -> None:
            for attempt in range(5):
                try:
                    self.api.create(self.path, vm_body(n, node, self.tb, run))
                    return
                except ApiError as exc:
                    if exc.status == 409 or attempt == 4:
                        if exc.status == 409:
                            return
                        raise
                    time.sleep(1 + attempt)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, names))

    def statuses(self) -> dict[str, str]:
        items, _ = self.api.list_all(self.path, page=500)
        return {o["metadata"]["name"]: (o.get("status") or {}).get("printableStatus", "") for o in items}

    def wait_settled(self, timeout: float = 600) -> float:
        """Until every own VM reports Stopped (Halted) or Running (--running): seconds taken."""
        t0 = time.monotonic()
        want = {n: "Stopped" for n in self.own} | {n: "Running" for n in self.running}
        while time.monotonic() - t0 < timeout:
            st = self.statuses()
            if all(st.get(n) in (w, "Paused") for n, w in want.items()):
                return time.monotonic() - t0
            time.sleep(2)
        raise RuntimeError(f"own VMs not settled after {timeout:.0f} s")

    def pause_running(self) -> None:
        for n in self.running:
            subprocess.run(
                ["virsh", "-c", self.tb["LIBVIRT_DEFAULT_URI"], "suspend", f"{self.ns}_{n}"],
                capture_output=True,
                timeout=60,
            )

    def start_operator(self, src: str | None, tag: str) -> Operator:
        env = {
            **os.environ,
            **self.tb,
            "K3SVIRT_NODE_NAME": self.node,
            "K3SVIRT_STOP_GRACE_SECONDS": "2",
            "K3SVIRT_METRICS_PORT": str(free_port()),
            "K3SVIRT_RESERVATIONS": "off",
            "PYTHONUNBUFFERED": "1",
        }
        paths = [f"{src}/operator", f"{src}/common"] if src else []
        if src:
            env["K3SVIRT_CRDS_DIR"] = f"{src}/crds"  # the schemas that revision validates with
        if self.args.tracemalloc:
            paths.insert(0, str(ROOT / "bench/tracemalloc_dump"))
            env["PYTHONTRACEMALLOC"] = "1"
        if paths:
            env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        argv = [sys.executable, "-c", "from k3svirt_operator.main import main; main()"]
        op = Operator(env, self.work / f"operator-{tag}.log", argv)
        op.start()
        return op

    def measure(self, op: Operator, what: str) -> dict[str, Any]:
        """Settle (every own VM reached its state, then --settle s: a heap trim runs every 30 s), then sample."""
        assert op.proc is not None
        took = self.wait_settled()
        cpu0, t0 = cpu_seconds(op.proc.pid), time.monotonic()
        time.sleep(self.args.settle)
        cpu = (cpu_seconds(op.proc.pid) - cpu0) / (time.monotonic() - t0) * 100
        mem = proc_memory(op.proc.pid)
        row = {
            "phase": what,
            "own": len(self.own),
            "running": len(self.running),
            "foreign": self.foreign,
            "rssMiB": round(mem["VmRSS"], 1),
            "pssMiB": round(mem["Pss"], 1),
            "hwmMiB": round(mem["VmHWM"], 1),
            "threads": int(mem["Threads"]),
            "cpuPct": round(cpu, 2),
            "settledS": round(took, 1),
            "load": loadavg(),
        }
        if self.args.tracemalloc:  # a snapshot per phase (bench/tracemalloc_dump/sitecustomize.py)
            os.kill(op.proc.pid, signal.SIGUSR2)
        print(
            f"  {what:<28} RSS {row['rssMiB']:6.1f}  PSS {row['pssMiB']:6.1f}  HWM {row['hwmMiB']:6.1f} MiB  "
            f"CPU {row['cpuPct']:5.2f} %  threads {row['threads']}  [load {row['load']}]",
            flush=True,
        )
        return row

    # ------------------------------------------------------------------ one operator through every phase
    def run_one(self, src: str | None, tag: str) -> list[dict[str, Any]]:
        print(f"{tag}: operator {'from ' + src if src else 'of this checkout'}, node {self.node}", flush=True)
        op = self.start_operator(src, tag)
        rows = []
        try:
            time.sleep(5)
            rows.append(self.measure(op, "idle, 0 VMs"))
            for target in self.args.own_steps:
                names = [f"own-{i:03d}" for i in range(len(self.own), target)]
                self.create(names, self.node)
                self.own += names
                rows.append(self.measure(op, f"{target} own Halted"))
            if self.args.running:
                names = [f"run-{i:02d}" for i in range(self.args.running)]
                self.create(names, self.node, run=True)
                self.running += names
                self.wait_settled()
                self.pause_running()
                rows.append(self.measure(op, f"+{self.args.running} running (paused)"))
            if self.args.foreign:
                far = f"{self.node}-elsewhere"
                self.create([f"far-{i:04d}" for i in range(self.args.foreign)], far)
                self.foreign = self.args.foreign
                rows.append(self.measure(op, f"+{self.args.foreign} foreign"))
            if self.args.tracemalloc:
                time.sleep(5)  # the last snapshot is written
        finally:
            self.cleanup(op)
        return rows

    def cleanup(self, op: Operator) -> None:
        """Own VMs deleted while the operator runs (it holds their finalizers), then the rest."""
        for n in self.own + self.running:
            with contextlib.suppress(ApiError):
                self.api.delete(group_path(GROUP, VERSION, PLURAL, self.ns, n))
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and any(n in self.statuses() for n in self.own + self.running):
            time.sleep(2)
        op.stop()
        for n in [f"far-{i:04d}" for i in range(self.foreign)]:
            with contextlib.suppress(ApiError):
                self.api.delete(group_path(GROUP, VERSION, PLURAL, self.ns, n))
        self.own, self.running, self.foreign = [], [], 0

    def run(self) -> dict[str, Any]:
        self.api.create(
            core_path("namespaces"), {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.ns}}
        )
        out: dict[str, Any] = {"imports": import_footprint(), "load": loadavg()}
        print("import footprint (RSS MiB after each):", out["imports"], flush=True)
        try:
            if not self.args.baseline_only:
                out["this"] = self.run_one(None, "this")
            if self.args.baseline_src:
                out["baseline"] = self.run_one(self.args.baseline_src, "baseline")
        finally:
            with contextlib.suppress(ApiError):
                self.api.delete(core_path("namespaces", name=self.ns))
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--own", default="50,100", help="comma-separated counts of own Halted VMs, one phase each")
    ap.add_argument("--foreign", type=int, default=1000, help="VMs pinned to another node (0 = skip)")
    ap.add_argument("--running", type=int, default=0, help="own tiny guests started, then paused (0 = skip)")
    ap.add_argument("--settle", type=float, default=40.0, help="seconds after a phase settled before sampling")
    ap.add_argument("--baseline-src", help="another revision's tree (operator/ and common/) run the same way")
    ap.add_argument("--baseline-only", action="store_true", help="measure only --baseline-src")
    ap.add_argument("--tracemalloc", action="store_true", help="the operator's top allocation sites at the end")
    args = ap.parse_args()
    args.own_steps = [int(x) for x in args.own.split(",") if x.strip()]
    res = Bench(args).run()
    print("BENCH_OPMEM_JSON " + json.dumps(res))


if __name__ == "__main__":
    main()
