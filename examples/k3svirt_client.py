#!/usr/bin/env python3
"""Python example: create a VM from a template, start/stop it, read stats; deploy a container, expose
it, wait until it runs and print its answer through the Service's ClusterIP (run this on the node),
its log and its figures, then scale it.
Env: GATEWAY_URL (default http://127.0.0.1:8080), API_KEY, NAMESPACE (default "default"),
IMAGE (an image imported on the node; default the http-echo test app), TIMEOUT (seconds, default 120)."""

from __future__ import annotations

import os
import sys
import time

import requests

URL = os.environ.get("GATEWAY_URL", "http://127.0.0.1:8080").rstrip("/")
IMAGE = os.environ.get("IMAGE", "localhost/k3svirt/http-echo:1.0")
TIMEOUT = float(os.environ.get("TIMEOUT", "120"))
NS = os.environ.get("NAMESPACE", "default")
S = requests.Session()
S.headers["Authorization"] = f"Bearer {os.environ['API_KEY']}"

TEMPLATE = """\
apiVersion: k3svirt.io/v1alpha1
kind: VMTemplate
metadata: {name: py-small}
spec:
  kind: Template
  versions:
    - version: 1.0.0
      vm: {cpu: {cores: 1}, memory: {size: 256Mi}}
"""


def call(method: str, path: str, ok: tuple[int, ...] = (200, 201, 202), **kw) -> requests.Response:
    r = S.request(method, f"{URL}/api/v1{path}", params={"namespace": NS, **kw.pop("params", {})}, timeout=30, **kw)
    print(method, path, r.status_code, r.text[:200].replace("\n", " "))
    if r.status_code not in ok:
        sys.exit(f"unexpected {r.status_code}: {r.text}")
    return r


def wait_running(app: str, count: int) -> list[dict]:
    """Poll the app's pods until `count` run and are ready; print every new status with its reason."""
    deadline, last = time.monotonic() + TIMEOUT, None
    while True:
        pods = S.get(f"{URL}/api/v1/pods", params={"namespace": NS, "labelSelector": f"app={app}"}, timeout=30)
        items = pods.json()["items"]
        state = [(p["name"], p["status"], p["statusMessage"]) for p in items]
        if state != last:
            print("pods:", state)
            last = state
        if len(items) == count and all(p["status"] == "Running" and p["ready"] for p in items):
            return items
        if time.monotonic() > deadline:
            sys.exit(f"the pods of {app} did not run within {TIMEOUT:.0f} s: {state}")
        time.sleep(2)


def answer(ip: str) -> str:
    for _ in range(15):  # kube-proxy may need a moment to program a new ClusterIP
        try:
            r = requests.get(f"http://{ip}/", timeout=5)
            r.raise_for_status()
            return r.text.strip()
        except requests.RequestException:
            time.sleep(1)
    sys.exit(f"no answer from the Service at http://{ip}/")


def main() -> None:
    call("POST", "/templates", data=TEMPLATE, headers={"Content-Type": "application/yaml"})
    call(
        "POST", "/vms", json={"name": "py-vm", "template": {"name": "py-small"}, "overrides": {"runStrategy": "Halted"}}
    )
    call("POST", "/vms/py-vm/start")
    call("POST", "/vms/py-vm/stop")
    print("summary:", [v for v in call("GET", "/vms").json()["items"] if v["name"] == "py-vm"])
    call("GET", "/vms/py-vm/stats", ok=(200, 409, 503))  # 409 until the operator reports it Running

    app = {
        "name": "py-web",
        "image": IMAGE,
        "ports": [{"port": 8080}],
        "env": {"MESSAGE": "hello from python", "PORT": "8080"},
        "resources": {"requests": {"cpu": "50m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
    }
    call("POST", "/deployments", json=app)
    svc = call(
        "POST",
        "/services",
        json={"name": "py-web", "deployment": "py-web", "ports": [{"port": 80, "targetPort": 8080}]},
    )
    (pod,) = wait_running("py-web", 1)
    print("answer:", answer(svc.json()["clusterIP"]))
    call("GET", f"/pods/{pod['name']}/logs", params={"tailLines": 5})
    call("GET", f"/pods/{pod['name']}/stats", ok=(200, 503))  # 503: the kubelet has not measured it yet
    call("PATCH", "/deployments/py-web", json={"replicas": 2})
    wait_running("py-web", 2)


if __name__ == "__main__":
    main()
