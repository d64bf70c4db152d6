"""Dedicated-core choice on fixture topologies (sysfs trees written here) and on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from k3svirt_operator import cputopo

from tests.sysfs_fixture import HYBRID_2P8E, write_sys


def fake_sys(root: Path, l2_groups: list[list[int]], p_cores: list[int] | None = None,
             e_cores: list[int] | None = None, **more: Any) -> Path:  # fmt: skip
    """A /sys with cpuN/cache/index2/shared_cpu_list for every CPU of `l2_groups` (tests/sysfs_fixture.py)."""
    return write_sys(root, l2_groups, p_cores=p_cores, e_cores=e_cores, **more)


@pytest.fixture
def n305(tmp_path):
    """Intel N305: 8 E-cores, no SMT, two 4-core modules with one L2 each."""
    return cputopo.read(fake_sys(tmp_path / "n305", [[0, 1, 2, 3], [4, 5, 6, 7]]))


@pytest.fixture
def hybrid(tmp_path):
    """A P+E part (i5-1240P-like): 4 P-cores with 2 threads each (L2 per core: 0-1, 2-3, 4-5, 6-7) and
    8 E-cores in two 4-core modules (8-11, 12-15)."""
    groups = [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
    return cputopo.read(fake_sys(tmp_path / "hybrid", groups, p_cores=list(range(8)), e_cores=list(range(8, 16))))


@pytest.fixture
def two_core(tmp_path):
    """A plain 2-vCPU VM (this test machine): two CPUs, an L2 each."""
    return cputopo.read(fake_sys(tmp_path / "two", [[0], [1]]))


def test_reads_clusters_and_kinds(hybrid):
    assert cputopo.l2_groups(hybrid) == {
        "P": [[0, 1], [2, 3], [4, 5], [6, 7]],
        "E": [[8, 9, 10, 11], [12, 13, 14, 15]],
    }


def test_n305_four_cores_get_one_whole_module(n305):
    assert cputopo.choose(n305, range(8), 4) == [0, 1, 2, 3]
    # With CPU 1 taken by someone, the other module, whole.
    assert cputopo.choose(n305, [0, 2, 3, 4, 5, 6, 7], 4) == [4, 5, 6, 7]
    # Housekeeping on CPU 0 (kubelet reserved): still the untouched module.
    assert cputopo.choose(n305, range(1, 8), 4) == [4, 5, 6, 7]


def test_n305_small_requests_keep_whole_modules_whole(n305):
    # Module 1 is partly used (5 taken): two cores go there, not into the whole module 0.
    assert cputopo.choose(n305, [0, 1, 2, 3, 4, 6, 7], 2) == [4, 6]
    assert cputopo.choose(n305, range(8), 8) == list(range(8))
    assert cputopo.choose(n305, range(8), 6) == [0, 1, 2, 3, 4, 5]
    assert cputopo.choose(n305, range(3), 4) is None


def test_hybrid_does_not_mix_core_kinds(hybrid):
    # Four: one whole E-module (one L2) rather than two P-cores (two L2s, also unshared).
    assert cputopo.choose(hybrid, range(16), 4) == [8, 9, 10, 11]
    # With the P-cores busy, one whole E-module.
    assert cputopo.choose(hybrid, range(4, 16), 4) == [8, 9, 10, 11]
    # Two: one whole P-core (its two threads share its L2 and nothing else).
    assert cputopo.choose(hybrid, range(16), 2) == [0, 1]
    # More than one kind has free: never a mix while one kind alone can serve.
    six = cputopo.choose(hybrid, [6, 7, *range(8, 16)], 6)
    assert set(six) <= set(range(8, 16))


def test_two_core(two_core):
    assert cputopo.choose(two_core, [1], 1) == [1]  # CPU 0 is the housekeeping core
    assert cputopo.choose(two_core, [1], 2) is None
    assert cputopo.choose(two_core, [0, 1], 2) == [0, 1]


def test_this_machine():
    cpus = cputopo.read()
    ids = [c.id for c in cpus]
    assert ids and all(c.id in c.l2 for c in cpus)
    assert cputopo.choose(cpus, ids, len(ids)) == sorted(ids)
    assert cputopo.choose(cpus, ids, len(ids) + 1) is None


def test_housekeeping_is_the_top_of_the_last_cluster(n305, hybrid, two_core):
    # N305: the kubelet packs from CPU 0, so module 0-3 stays whole when housekeeping sits in 4-7.
    assert cputopo.housekeeping(n305) == [7]
    assert cputopo.housekeeping(n305, 2) == [6, 7]
    assert cputopo.fmt(cputopo.housekeeping(n305, 2)) == "6-7"
    assert cputopo.housekeeping(two_core) == [1]
    assert cputopo.housekeeping(hybrid) == [15]  # the last E-module
    # More than the last cluster holds: it continues below, from the top down.
    assert cputopo.housekeeping(n305, 5) == [3, 4, 5, 6, 7]
    assert cputopo.housekeeping(n305, 0) == [] and cputopo.housekeeping([], 1) == []


def test_housekeeping_takes_whole_smt_cores(tmp_path):
    # 2 cores x 2 threads, Intel numbering (siblings 0/2 and 1/3), an L2 per core.
    smt = cputopo.read(fake_sys(tmp_path, [[0, 2], [1, 3]], cores=[[0, 2], [1, 3]]))
    assert {c.id: sorted(c.siblings) for c in smt} == {0: [0, 2], 1: [1, 3], 2: [0, 2], 3: [1, 3]}
    assert cputopo.housekeeping(smt) == [1, 3]  # the core of CPU 3, both threads


def test_the_2p_8e_hybrid_fixture(tmp_path):
    cpus = cputopo.read(write_sys(tmp_path, **HYBRID_2P8E))
    assert cputopo.l2_groups(cpus) == {"P": [[0, 1], [2, 3]], "E": [[4, 5, 6, 7], [8, 9, 10, 11]]}
    assert cputopo.housekeeping(cpus) == [11]
    assert cputopo.choose(cpus, range(11), 4) == [4, 5, 6, 7]  # one whole E-module
    assert cputopo.choose(cpus, range(11), 2) == [0, 1]  # one whole P-core


def test_cpuset_format():
    assert cputopo.fmt([5, 0, 1, 2]) == "0-2,5"
    assert cputopo.fmt([]) == "" and cputopo.fmt([3]) == "3"
