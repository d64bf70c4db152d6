#!/usr/bin/env python3
"""Benchmark the gateway (gunicorn, 1 worker x 4 threads) against the real API server:
requests/s and p50/p99 latency of GET /vms with 200 VMs, and of POST /vms, plus the gateway worker's
RSS. Prints figures only. `--list-cache off` measures the direct-list path (K3SVIRT_LIST_CACHE=off) for
comparison with the default watch-backed cache.

    KUBECONFIG=~/.local/state/k3svirt/kubeconfig .venv/bin/python bench/bench_gateway.py [--vms 200]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from bench_vm import add_client_args, client_preload_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(fn, n: int, concurrency: int) -> tuple[float, list[float], list[int]]:
    def one(i: int) -> tuple[float, int]:
        t = time.perf_counter()
        code = fn(i)
        return time.perf_counter() - t, code

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        res = list(pool.map(one, range(n)))
    return time.perf_counter() - t0, [r[0] for r in res], [r[1] for r in res]


def report(name: str, total: float, lat: list[float], codes: list[int]) -> None:
    lat = sorted(lat)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    print(
        f"{name:<28} {len(lat) / total:8.1f} req/s   p50 {statistics.median(lat) * 1000:7.1f} ms   "
        f"p99 {p99 * 1000:7.1f} ms   codes {sorted(set(codes))}"
    )


def rss(pid: int) -> str:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return "?"
    return text.split("VmRSS:")[1].split("\n")[0].strip()


def rss_kib(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/status").read_text().split("VmRSS:")[1].split()[0])
    except (OSError, IndexError, ValueError):
        return 0


def workers(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def bare_baseline(
    s: requests.Session, url: str, kubeconfig: str, ns: str, spec: dict, args: argparse.Namespace
) -> None:
    """The same POSTs and list straight to the API server (the project's own client, kept-alive
    connections, same concurrency, no decoding of the list): what the gateway adds is the ratio."""
    from k3svirt_common.kube import Client, load_config

    api = Client(load_config(kubeconfig), timeout=60.0, user_agent="bench-bare")
    bare_ns = ns + "-bare"
    s.post(f"{url}/api/v1/namespaces", json={"name": bare_ns}).raise_for_status()
    path = f"/apis/k3svirt.io/v1alpha1/namespaces/{bare_ns}/virtualmachines"
    try:

        def post(i: int) -> int:
            body = {"apiVersion": "k3svirt.io/v1alpha1", "kind": "VirtualMachine",
                    "metadata": {"name": f"vm-{i}", "namespace": bare_ns}, "spec": spec}  # fmt: skip
            api.create(path, body)
            return 201

        total, lat, codes = run(post, args.vms, args.concurrency)
        report(f"bare POST to API server ({args.vms})", total, lat, codes)

        def get(_: int) -> int:
            api.request("GET", path, raw=True)
            return 200

        run(get, 5, 2)
        total, lat, codes = run(get, args.requests, args.concurrency)
        report(f"bare LIST from API server ({args.vms})", total, lat, codes)
    finally:
        s.delete(f"{url}/api/v1/namespaces/{bare_ns}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vms", type=int, default=200)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--bare", action=argparse.BooleanOptionalAction, default=True,
                    help="also POST and list the same VMs straight to the API server (the bare baseline)")  # fmt: skip
    ap.add_argument("--list-cache", choices=("on", "off"), default="on", help="K3SVIRT_LIST_CACHE for the gateway")
    add_client_args(ap, "gateway")
    ap.add_argument(
        "--gateway-src",
        help="run the k3svirt_gateway package found in this directory instead "
        "(e.g. an older revision: git archive REV rest-gateway | tar -x -C DIR)",
    )
    args = ap.parse_args()
    kubeconfig = os.environ.get("KUBECONFIG") or str(Path.home() / ".local/state/k3svirt/kubeconfig")
    tmp = Path(tempfile.mkdtemp())
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
        "KUBECONFIG": kubeconfig,
        "K3SVIRT_API_KEYS_FILE": str(keyfile),
        "K3SVIRT_LOG_LEVEL": "WARNING",
        "K3SVIRT_LIST_CACHE": args.list_cache,
        **client_preload_env(args.client, args.client_path),
    }
    if args.gateway_src:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (args.gateway_src, env.get("PYTHONPATH")) if p)
    exe = Path(sys.executable).with_name("k3svirt-gateway")
    proc = subprocess.Popen([str(exe), "--bind", f"127.0.0.1:{port}"], env=env)
    url = f"http://127.0.0.1:{port}"
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {key}"
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=args.concurrency)
    s.mount("http://", adapter)
    ns = f"bench-{uuid.uuid4().hex[:6]}"
    try:
        for _ in range(100):
            try:
                if s.get(url + "/healthz", timeout=1).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        s.post(f"{url}/api/v1/namespaces", json={"name": ns}).raise_for_status()
        # Pinned to a node no operator runs for: a local k3svirt-up operator must not claim them.
        spec = {"memory": {"size": "64Mi"}, "runStrategy": "Halted", "nodeName": f"{ns}-no-operator"}

        def post(i: int) -> int:
            return s.post(
                f"{url}/api/v1/vms", params={"namespace": ns}, json={"name": f"vm-{i}", "spec": spec}
            ).status_code

        total, lat, codes = run(post, args.vms, args.concurrency)
        report(f"POST /vms ({args.vms} VMs)", total, lat, codes)

        def check(_: int) -> int:
            r = s.get(f"{url}/api/v1/vms", params={"namespace": ns})
            assert len(r.json()["items"]) == args.vms
            return r.status_code

        def get(_: int) -> int:  # timed: no JSON decoding here, it would measure this client
            r = s.get(f"{url}/api/v1/vms", params={"namespace": ns})
            sizes.append(len(r.content))
            return r.status_code

        sizes: list[int] = []
        before = {w: rss_kib(w) for w in workers(proc.pid)}  # no informer yet: the first list starts it
        run(check, 10, 2)  # warm-up, and every item is there
        time.sleep(1.0)
        run(check, 10, 2)
        after = {w: rss_kib(w) for w in workers(proc.pid)}
        total, lat, codes = run(get, args.requests, args.concurrency)
        report(f"GET /vms ({args.vms} VMs, cache {args.list_cache})", total, lat, codes)
        grown = [after[w] - before[w] for w in before if w in after]
        if grown and args.list_cache == "on":
            print(
                f"list cache: worker RSS +{grown[0] / 1024:.1f} MiB after the first list of {args.vms} VMs "
                f"({grown[0] / args.vms:.2f} KiB per VM, informer + encoded answer of {sizes[0] / 1024:.0f} KiB)"
            )
        if args.bare:
            bare_baseline(s, url, kubeconfig, ns, spec, args)
        worker = ", ".join(f"worker {rss(w)}" for w in workers(proc.pid)) or "worker ?"
        print(
            f"gateway RSS ({args.client}{', ' + args.gateway_src if args.gateway_src else ''}): "
            f"master {rss(proc.pid)}, {worker}; machine: {os.cpu_count()} cores"
        )
    finally:
        s.delete(f"{url}/api/v1/namespaces/{ns}")
        proc.terminate()
        proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
