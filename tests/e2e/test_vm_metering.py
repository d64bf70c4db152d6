"""Usage metering end to end (docs/metering.md): a busy guest, buckets shortened to 15 s, an operator
killed (SIGKILL: no final write) and restarted in the middle. The persisted buckets add up to the live
CPU counter within 2 %, none is lost or doubled, and the Prometheus counters agree with libvirt's."""

from __future__ import annotations

import base64
import json
import re
import urllib.request

import pytest

from .conftest import Operator, get_json, kubectl, operator_env, tiny_vm, wait_until

BUCKET = 15
BUSY = "while :; do :; done\n"  # one vCPU kept busy by the guest's shell


def metrics(op: Operator) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{op.env['K3SVIRT_METRICS_PORT']}/metrics", timeout=5) as r:
        return r.read().decode()


def series(text: str, metric: str, ns: str, name: str) -> float | None:
    m = re.search(rf'^{metric}{{name="{name}",namespace="{ns}",node="[^"]*"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else None


def usage(kubeconfig: str, ns: str) -> dict:
    items = get_json(kubeconfig, "vmusages", "-n", ns)["items"]
    return items[0]["status"] if items else {}


@pytest.fixture
def metering_operator(testbed, tmp_path):
    ops: list[Operator] = []

    def start() -> Operator:
        env = operator_env(testbed, K3SVIRT_USAGE_BUCKET_SECONDS=str(BUCKET), K3SVIRT_USAGE_CHECKPOINT_SECONDS="3")
        op = Operator(env, tmp_path / f"operator-{len(ops)}.log")
        op.start()
        ops.append(op)
        return op

    yield start
    for op in ops:
        op.stop()


def test_busy_guest_buckets_match_the_counters_across_a_restart(kubeconfig, namespace, tiny_guest, metering_operator):
    ns, name = namespace, "busy"
    op = metering_operator()
    vm = tiny_vm(name, tiny_guest)
    vm["spec"]["boot"]["kernel"]["cmdline"] += f" k3svirt.run={base64.b64encode(BUSY.encode()).decode()}"
    kubectl(kubeconfig, "apply", "-n", ns, "-f", "-", stdin=json.dumps(vm))
    kubectl(kubeconfig, "wait", "-n", ns, "--for=condition=Ready", f"vm/{name}", "--timeout=180s")
    wait_until(lambda: len(usage(kubeconfig, ns).get("buckets") or []) >= 2, 120, "no completed buckets")

    # Killed without a last write: the next operator continues from the checkpoint (<= 3 s old).
    op.proc.kill()
    op.proc.wait()
    before = usage(kubeconfig, ns)
    op = metering_operator()
    wait_until(lambda: len(usage(kubeconfig, ns).get("buckets") or []) >= len(before["buckets"]) + 3, 180,
               "no buckets after the restart")  # fmt: skip

    status = usage(kubeconfig, ns)
    starts = [b["start"] for b in status["buckets"]]
    assert starts[: len(before["buckets"])] == [b["start"] for b in before["buckets"]]  # history kept as it was
    assert status["buckets"][: len(before["buckets"])] == before["buckets"]
    assert len(set(starts)) == len(starts) and starts == sorted(starts)  # none twice
    seconds = [int(s[11:13]) * 3600 + int(s[14:16]) * 60 + int(s[17:19]) for s in starts]
    assert all(b - a == BUCKET for a, b in zip(seconds, seconds[1:], strict=False)), starts  # none lost

    # The persisted records add up to the counter they were measured against (the checkpoint's).
    persisted = sum(b["cpuSeconds"] for b in status["buckets"]) + status["open"]["cpuSeconds"]
    live = status["baseline"]["cpuSeconds"]
    assert persisted == pytest.approx(live, rel=0.02), (persisted, live)
    # Each completed bucket of the busy guest holds CPU time, at most what the host's 2 CPUs give in a
    # bucket (how much depends on the machine's load: the guest runs emulated).
    assert all(0 < b["cpuSeconds"] <= 2.05 * BUCKET for b in status["buckets"][1:]), status["buckets"]
    assert all(b["memoryAllocatedGiBHours"] > 0 for b in status["buckets"][1:])

    # Prometheus: the usage counter and libvirt's CPU counter from one scrape.
    text = metrics(op)
    metered = series(text, "k3svirt_usage_cpu_seconds_total", ns, name)
    counter = series(text, "k3svirt_vmi_cpu_usage_seconds_total", ns, name)
    assert metered is not None and counter is not None, text[-2000:]
    assert metered == pytest.approx(counter, rel=0.02), (metered, counter)
    assert series(text, "k3svirt_usage_memory_allocated_gib_hours_total", ns, name) > 0

    kubectl(kubeconfig, "delete", "vm", name, "-n", ns, "--timeout=120s")
    assert usage(kubeconfig, ns)["buckets"], "the records outlive the VM"
