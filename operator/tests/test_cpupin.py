"""Dedicated cores: the kubelet's exclusive CPUs read from a pod's cpuset cgroup (fixture trees in
the v1 and v2 layouts, below /kubepods and below a kubelet's cgroupRoot), the exclusivity check, the
emulator's CPUs, the pinning, and the topology preference on the N305 fixture."""

from __future__ import annotations

from pathlib import Path

import pytest
from k3svirt_operator import cpupin, cputopo
from test_cputopo import fake_sys  # the sysfs fixture writer (test modules sit on sys.path)

UID = "3f1c5a9e-0000-4000-8000-000000000001"
CID = "a" * 64


def pod(running: bool = True) -> dict:
    state = {"running": {"startedAt": "now"}} if running else {"waiting": {"reason": "ContainerCreating"}}
    return {"metadata": {"uid": UID}, "status": {"containerStatuses": [
        {"name": "reserve", "containerID": f"containerd://{CID}", "state": state}]}}  # fmt: skip


def cgroup_tree(root: Path, parent: str, pod_cpus: str, container_cpus: str, v2: bool = False) -> Path:
    base = root if v2 else root / "cpuset"
    d = base / parent / f"pod{UID}" / CID
    d.mkdir(parents=True)
    name = "cpuset.cpus.effective" if v2 else "cpuset.cpus"
    (d.parent / name).write_text(pod_cpus + "\n")
    (d / name).write_text(container_cpus + "\n")
    return root


@pytest.mark.parametrize(("parent", "v2"), [("kubepods", False), ("k3svirt-n1/kubepods", False), ("kubepods", True)])
def test_the_containers_cpuset_is_read_below_kubepods_or_a_cgroup_root(tmp_path, parent, v2):
    root = cgroup_tree(tmp_path, parent, "0-7", "4-7", v2=v2)
    got = cpupin.read_assignment(pod(), root)
    assert got == cpupin.Assignment([4, 5, 6, 7], [0, 1, 2, 3, 4, 5, 6, 7])
    assert cpupin.check(got, 4) == [4, 5, 6, 7]


def test_nothing_is_read_before_the_container_runs(tmp_path):
    root = cgroup_tree(tmp_path, "kubepods", "0-1", "1")
    assert cpupin.read_assignment(pod(running=False), root) is None
    assert cpupin.read_assignment({"metadata": {"uid": UID}}, root) is None


def test_a_kubelet_without_the_static_policy_gives_no_exclusive_cpus():
    # The container may use the whole pod set: shared CPUs, however many there are.
    with pytest.raises(cpupin.NotExclusive, match="cpuManagerPolicy: static"):
        cpupin.check(cpupin.Assignment([0, 1], [0, 1]), 2)
    with pytest.raises(cpupin.NotExclusive):
        cpupin.check(cpupin.Assignment([1], [0, 1]), 2)  # fewer than asked


def test_emulator_threads_go_to_the_housekeeping_cpus_else_to_the_rest():
    a = cpupin.Assignment([1], [0, 1])
    assert cpupin.emulator_cpus(a, "0") == "0"
    assert cpupin.emulator_cpus(a, "") == "0"
    assert cpupin.emulator_cpus(cpupin.Assignment([0, 1], [0, 1]), "") == "0,1"


def test_the_assignment_becomes_the_specs_pinning():
    spec = {"cpu": {"cores": 2, "dedicatedCores": 2}, "memory": {"size": "1Gi"}}
    pinned = cpupin.with_pins(spec, [5, 4], "0")
    assert pinned["cpu"] == {"cores": 2, "dedicatedCpuSet": "4,5", "emulatorCpuSet": "0"}
    assert spec["cpu"]["dedicatedCores"] == 2  # the input is not changed


def test_the_l2_preference_says_when_the_kubelet_split_a_module(tmp_path):
    n305 = cputopo.read(fake_sys(tmp_path, [[0, 1, 2, 3], [4, 5, 6, 7]]))
    everything = list(range(8))
    assert cpupin.preference_note(n305, cpupin.Assignment([0, 1, 2, 3], everything), "7") is None
    # Housekeeping on CPU 0: the kubelet hands out 1-4 (tests/test_kubelet_cpu_allocation.py); the
    # note names the cause and the layout that avoids it.
    note = cpupin.preference_note(n305, cpupin.Assignment([1, 2, 3, 4], everything), "0")
    assert note is not None and "span 2 L2 clusters where 1 would do" in note
    assert "housekeeping CPUs 0 are not the top of the last L2 cluster" in note
    assert "K3SVIRT_HOUSEKEEPING_CPUS 7" in note
    # The right layout, but a smaller exclusive allocation holds part of module 0.
    note = cpupin.preference_note(n305, cpupin.Assignment([2, 3, 4, 5], everything), "6-7")
    assert note is not None and "smaller exclusive allocations hold part of the lower cluster" in note
    assert cpupin.preference_note(n305, cpupin.Assignment([2, 3, 4, 5], everything)) is not None  # housekeeping unknown


def test_the_housekeeping_advice(tmp_path):
    n305 = cputopo.read(fake_sys(tmp_path, [[0, 1, 2, 3], [4, 5, 6, 7]]))
    assert cpupin.housekeeping_advice(n305, "7") is None and cpupin.housekeeping_advice(n305, "6-7") is None
    assert cpupin.housekeeping_advice(n305, "") is None
    advice = cpupin.housekeeping_advice(n305, "0-1") or ""
    assert "make reservedSystemCPUs and K3SVIRT_HOUSEKEEPING_CPUS 6-7" in advice
    # An L2 per core (this test machine): no module to keep whole, whatever the housekeeping CPU.
    two = cputopo.read(fake_sys(tmp_path / "two", [[0], [1]]))
    assert cpupin.housekeeping_advice(two, "0") is None


def test_the_l2_layout_for_the_event(tmp_path):
    n305 = cputopo.read(fake_sys(tmp_path, [[0, 1, 2, 3], [4, 5, 6, 7]]))
    assert cpupin.l2_layout(n305, [0, 1, 2, 3]) == "one whole L2 cluster (0-3)"
    assert cpupin.l2_layout(n305, [1, 2, 3, 4]) == "L2 clusters 0-3 (3 of 4), 4-7 (1 of 4)"
    assert cpupin.l2_layout(n305, [4, 5]) == "L2 cluster 4-7 (2 of 4)"


def test_this_machine_has_a_readable_topology():
    cpus = cputopo.read()
    assert cpus and cpupin.preference_note(cpus, cpupin.Assignment([cpus[-1].id], [c.id for c in cpus])) is None


@pytest.mark.parametrize(
    ("raw", "got"),
    [("6-7", "6-7"), (" 0,2-3 ", "0,2-3"), ("", ""), ("abc", ""), ("7-6", ""), ("1,", ""), ("-1", ""),
     ("1-", ""), ("9000", ""), ("0-3;rm", ""), ("1" * 50, "")],
)  # fmt: skip
def test_a_malformed_housekeeping_setting_is_left_out(raw, got):
    from k3svirt_operator.config import Settings

    assert Settings.from_env({"K3SVIRT_HOUSEKEEPING_CPUS": raw}).housekeeping_cpus == got
