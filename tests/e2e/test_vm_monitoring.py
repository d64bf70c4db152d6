"""Live figures of a real guest: node endpoint, Prometheus /metrics, status summary, gateway proxy."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.polling import wait_until

from .conftest import get_json, kubectl, tiny_vm

# Runs in the guest: burn CPU and write to the scratch disk, forever.
BURN = (
    "while true; do i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; "
    "dd if=/dev/zero of=/dev/vda bs=64k count=16 conv=fsync 2>/dev/null; done"
)


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_running_guest_reports_cpu_disk_and_network(kubeconfig, namespace, operator, tiny_guest, tmp_path):
    run = base64.b64encode(BURN.encode()).decode()
    vm = tiny_vm("busy", tiny_guest)
    vm["spec"]["boot"]["kernel"]["cmdline"] += f" k3svirt.run={run}"
    vm["spec"]["disks"][0]["format"] = "raw"
    kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=json.dumps(vm))
    kubectl(kubeconfig, "wait", "-n", namespace, "--for=condition=Ready", "vm/busy", "--timeout=120s")

    endpoint = wait_until(
        lambda: (
            (get_json(kubeconfig, "vm", "busy", "-n", namespace).get("status") or {})
            .get("monitoring", {})
            .get("endpoint")
        ),
        30,
        "no status.monitoring.endpoint",
    )

    def busy_stats() -> dict | None:
        code, body = _get(endpoint)
        if code != 200:
            return None
        st = json.loads(body)
        disk_writes = sum((d.get("writeBytesPerSec") or 0) for d in st.get("disks", []))
        rx = sum((i.get("rxBytes") or 0) for i in st.get("interfaces", []))
        return st if st["cpu"]["usagePercent"] and disk_writes > 0 and rx > 0 else None

    stats = wait_until(busy_stats, 90, f"CPU, disk writes and network bytes never all moved at {endpoint}", 1)
    assert stats["cpu"]["usagePercent"] > 0

    metrics_url = endpoint.split("/stats/")[0] + "/metrics"
    code, text = _get(metrics_url)
    assert code == 200
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    cpu = families["k3svirt_vmi_cpu_usage_seconds"]
    mine = [s for s in cpu.samples if s.labels.get("namespace") == namespace and s.labels.get("name") == "busy"]
    assert mine and mine[0].value > 0

    # The summary lands in status (every K3SVIRT_STATUS_SUMMARY_SECONDS=5 in these tests).
    wait_until(
        lambda: (get_json(kubeconfig, "vm", "busy", "-n", namespace)["status"].get("monitoring") or {}).get(
            "cpuPercent"
        ),
        30,
        "no status.monitoring.cpuPercent",
    )

    # The gateway finds the node endpoint through the VM's status and proxies it.
    keys = tmp_path / "keys"
    key = subprocess.run(
        [sys.executable, "-m", "k3svirt_gateway.keys", "add", "t", "--role", "read", "--file", str(keys)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    from k3svirt_gateway.app import create_app

    client = create_app({"API_KEYS_FILE": str(keys), "KUBECONFIG": kubeconfig}).test_client()
    r = client.get(f"/api/v1/vms/busy/stats?namespace={namespace}", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["cpu"]["usagePercent"] is not None

    # A stopped VM has no stale rates: the node answers 404 and the gateway 409.
    kubectl(kubeconfig, "patch", "-n", namespace, "vm/busy", "--type=merge", "-p", '{"spec":{"runStrategy":"Halted"}}')
    wait_until(lambda: _get(endpoint)[0] == 404, 60, "stopped VM still has stats")
    wait_until(
        lambda: (
            client.get(
                f"/api/v1/vms/busy/stats?namespace={namespace}", headers={"Authorization": f"Bearer {key}"}
            ).status_code
            == 409
        ),
        60,
        "gateway did not answer 409 for a stopped VM",
    )
    kubectl(kubeconfig, "delete", "-n", namespace, "vm/busy", "--timeout=60s")
