#!/usr/bin/env python3
"""Python example: create a VM from a template, start/stop it, read stats, deploy a container and
expose it. Env: GATEWAY_URL (default http://127.0.0.1:8080), API_KEY, NAMESPACE (default "default")."""

from __future__ import annotations

import os
import sys

import requests

URL = os.environ.get("GATEWAY_URL", "http://127.0.0.1:8080").rstrip("/")
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


def main() -> None:
    call("POST", "/templates", data=TEMPLATE, headers={"Content-Type": "application/yaml"})
    call(
        "POST", "/vms", json={"name": "py-vm", "template": {"name": "py-small"}, "overrides": {"runStrategy": "Halted"}}
    )
    call("POST", "/vms/py-vm/start")
    call("POST", "/vms/py-vm/stop")
    print("summary:", [v for v in call("GET", "/vms").json()["items"] if v["name"] == "py-vm"])
    call("GET", "/vms/py-vm/stats", ok=(200, 409, 503))  # 409 until the operator reports it Running
    call("POST", "/deployments", json={"name": "py-web", "image": "nginx:1.27-alpine", "ports": [{"port": 80}]})
    call("POST", "/services", json={"name": "py-web", "deployment": "py-web", "ports": [{"port": 80}]})
    call("POST", "/deployments/py-web/scale", json={"replicas": 2})


if __name__ == "__main__":
    main()
