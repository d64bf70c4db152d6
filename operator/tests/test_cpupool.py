"""The shared CPU pool (cpupool.py): which CPUs are exclusive (pinned domain definitions, the
kubelet's CPU manager checkpoint, read as the kubelet writes it and refused when it is not), what
is left for ordinary VMs, and what must move on a running domain. The live re-pinning on real
domains is tests/e2e/test_dedicated_cores.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from k3svirt_operator import cpupool
from k3svirt_operator.domain_xml import DomainContext, VMRef, build_domain

REF = VMRef("ns1", "vm1", "6f1c1a52-8b5e-4a4e-9d3c-2c0d8a0e7b11", 1)
MEM = {"memory": {"size": "128Mi"}}
# As kubelet 1.31-1.33 writes it (pkg/kubelet/cm/cpumanager/state/checkpoint.go, CPUManagerCheckpointV2).
STATE = {
    "policyName": "static",
    "defaultCpuSet": "0,3-7",
    "entries": {
        "0c0e7b53-1111-4000-8000-000000000001": {"reserve": "1-2"},  # a dedicated VM's reservation
        "0c0e7b53-2222-4000-8000-000000000002": {"app": "6", "sidecar": "7"},  # a Guaranteed pod
    },
    "checksum": 1234567890,
}


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("0-3,6\n", {0, 1, 2, 3, 6}), ("5", {5}), ("", set()), ("  \n", set()), ("0-8191", set(range(8192)))],
)
def test_cpu_lists_are_read(text, cpus):
    assert cpupool.parse_list(text) == cpus


@pytest.mark.parametrize("text", ["3-1", "0-9999", "1,,2", "a", "-1", "1-", "0x3", "1 2", "1;rm -rf", "12345"])
def test_hostile_cpu_lists_are_refused(text):
    assert cpupool.parse_list(text) is None


def test_the_kubelets_exclusive_cpus_are_its_entries():
    assert cpupool.kubelet_exclusive(json.dumps(STATE)) == {1, 2, 6, 7}
    # The none policy, and a static one with no Guaranteed pod: nothing exclusive.
    assert cpupool.kubelet_exclusive('{"policyName":"none","defaultCpuSet":"","checksum":1}') == set()
    assert cpupool.kubelet_exclusive(json.dumps({**STATE, "entries": {}})) == set()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[]",
        '{"entries": []}',
        json.dumps({**STATE, "entries": {"uid": ["1"]}}),
        json.dumps({**STATE, "entries": {"uid": {"c": 1}}}),
        json.dumps({**STATE, "entries": {"uid": {"c": "0-99999"}}}),
    ],
)
def test_a_checkpoint_that_is_not_one_is_not_read(text):
    assert cpupool.kubelet_exclusive(text) is None


def test_the_pool_is_what_nobody_holds_exclusively():
    assert cpupool.shared_pool(range(8), {1, 2, 6, 7}) == frozenset({0, 3, 4, 5})
    assert cpupool.shared_pool(range(2), {0}) == frozenset({1})  # this machine: CPU 0 dedicated
    assert cpupool.shared_pool(range(8), set()) is None  # nothing exclusive: every CPU
    assert cpupool.shared_pool(range(2), {5}) is None  # an offline CPU takes nothing from the pool
    assert cpupool.shared_pool(range(2), {0, 1}) is None  # never no CPU at all


def test_pins_and_the_pool_are_read_back_from_a_definition():
    ordinary = build_domain(REF, {**MEM, "cpu": {"cores": 2}}, DomainContext(shared_cpus="0,3-5")).xml
    dedicated = build_domain(REF, {**MEM, "cpu": {"cores": 2, "dedicatedCpuSet": "1-2", "emulatorCpuSet": "7"}},
                             DomainContext(shared_cpus="0,3-5")).xml  # fmt: skip
    unconfined = build_domain(REF, {**MEM, "cpu": {"cores": 2}}, DomainContext()).xml
    assert cpupool.pinned_cpus(ordinary) == set() and cpupool.vcpu_cpuset(ordinary) == {0, 3, 4, 5}
    assert cpupool.pinned_cpus(dedicated) == {1, 2} and cpupool.vcpu_cpuset(dedicated) is None
    assert cpupool.pinned_cpus(unconfined) == set() and cpupool.vcpu_cpuset(unconfined) is None
    # As libvirt formats an unpinned definition, and a foreign domain pinned by hand.
    assert cpupool.vcpu_cpuset("<domain><vcpu placement='static'>1</vcpu></domain>") is None
    foreign = "<domain><cputune><vcpupin vcpu='0' cpuset='3'/><vcpupin vcpu='1' cpuset='4-5'/></cputune></domain>"
    assert cpupool.pinned_cpus(foreign) == {3, 4, 5}
    # What a sync keeps of each running domain: pins, whether it is a k3svirt VM, its emulator pin.
    assert cpupool.Seen.of(ordinary) == cpupool.Seen(frozenset(), True, False)
    assert cpupool.Seen.of(dedicated) == cpupool.Seen(frozenset({1, 2}), True, True)
    assert cpupool.Seen.of(foreign) == cpupool.Seen(frozenset({3, 4, 5}), False, False)


def test_only_what_differs_is_moved():
    pool = cpupool.cpumap({1}, 2)
    every = cpupool.cpumap({0, 1}, 2)
    floating = cpupool.Ordinary("d", {0: every, 1: every}, every, {1: every})
    assert cpupool.repin(floating, pool) == cpupool.Repin([0, 1], True, [1])
    moved = cpupool.Ordinary("d", {0: pool, 1: pool}, pool, {1: pool})
    assert not cpupool.repin(moved, pool)
    # Back to every CPU when the dedicated VM stops; an emulator its spec pins is left alone.
    assert cpupool.repin(cpupool.Ordinary("d", {0: pool}, None), every) == cpupool.Repin([0], False, [])
    # libvirt's maps are as wide as the host: trailing CPUs that are not set compare equal.
    assert not cpupool.repin(cpupool.Ordinary("d", {0: (False, True, False, False)}, None), pool)


def test_the_node_files_are_read(tmp_path: Path):
    (tmp_path / "sys/devices/system/cpu").mkdir(parents=True)
    (tmp_path / "sys/devices/system/cpu/online").write_text("0-3\n")
    kubelet = tmp_path / "kubelet"
    kubelet.mkdir()
    pool = cpupool.SharedPool(tmp_path / "sys", kubelet)
    assert pool.online() == {0, 1, 2, 3}
    assert pool.kubelet() == set()  # no checkpoint (no kubelet, or not the static policy yet)
    (kubelet / "cpu_manager_state").write_text(json.dumps(STATE))
    assert pool.kubelet() == {1, 2, 6, 7}
    (kubelet / "cpu_manager_state").write_text('{"entries": {"x": {"c": "0-"}}}')
    assert pool.kubelet() == set()  # not understood: ignored (and logged), never a crash
    assert cpupool.SharedPool(tmp_path / "sys", None).kubelet() == set()
    assert pool.cpuset() is None  # nothing computed yet: every CPU
