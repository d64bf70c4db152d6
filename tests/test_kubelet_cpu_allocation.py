"""The kubelet's own CPU manager on fixture topologies, against k3svirt's reference choice.

tests/harness/controlplane/cpualloc (Go, built from the same k8s.io/kubernetes module as the test
bed's kubelet) reads a fixture /sys with cadvisor's topology discovery, builds the CPU manager's
topology from it and admits Guaranteed pods (the shape of a reservation pod) with the static
policy. What these tests pin, for this kubelet version:

* cadvisor drops an L2 shared by a 4-core module (it keeps level 1-2 caches only when one core owns
  them, and reports level-3+ caches as "uncore" only when they cover part of a socket), so
  `prefer-align-cpus-by-uncorecache` sees one uncore cache on the N305 and changes nothing;
* on a single-socket part the static policy hands out the lowest free CPUs, so with the housekeeping
  CPUs (reservedSystemCPUs) at CPU 0 a 4-core request straddles both N305 modules, and with them at
  the top of the last module (cputopo.housekeeping) it gets module 0 whole, as cputopo.choose would;
* what that layout does not guarantee: smaller exclusive requests are packed into module 0 first.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from k3svirt_operator import cputopo

from tests.sysfs_fixture import HYBRID_2P8E, N305, SPLIT_L3, TWO_CORE, write_sys

REPO = Path(__file__).resolve().parents[1]
MODULE = REPO / "tests/harness/controlplane"
SOURCE = MODULE / "cpualloc/main.go"


@pytest.fixture(scope="module")
def cpualloc() -> Path:
    """The program, built once per source and module version into the shared cache (the kubelet
    packages come from the Go build cache the test bed's kubelet build filled)."""
    go = shutil.which("go")
    assert go, "Go is missing: tests/harness/deps.sh installs it (it builds the test bed's kubelet too)"
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in (MODULE / "go.mod", MODULE / "go.sum", SOURCE)))
    cache = Path(os.environ.get("K3SVIRT_CACHE") or Path.home() / ".cache/k3svirt")
    binary = cache / f"cpualloc-{digest.hexdigest()[:12]}" / "cpualloc"
    if not binary.exists():
        binary.parent.mkdir(parents=True, exist_ok=True)
        tmp = binary.with_suffix(".tmp")
        subprocess.run([go, "build", "-trimpath", "-o", str(tmp), "./cpualloc"], cwd=MODULE, check=True,
                       timeout=1800)  # fmt: skip
        tmp.rename(binary)
    return binary


def kubelet(binary: Path, root: Path, reserved: str, steps: list[dict[str, Any]],
            options: dict[str, str] | None = None, uncore_from_l2: bool = False) -> dict[str, Any]:  # fmt: skip
    request = {"root": str(root), "reserved": reserved, "options": options or {}, "uncoreFromL2": uncore_from_l2,
               "steps": steps}  # fmt: skip
    done = subprocess.run([str(binary)], input=json.dumps(request), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def picks(result: dict[str, Any]) -> list[list[int] | str]:
    return [s.get("cpus") or s.get("error") or [] for s in result["steps"]]


def machine(tmp_path: Path, name: str, layout: dict[str, Any]) -> tuple[Path, list[cputopo.Cpu]]:
    root = write_sys(tmp_path / name, **layout)
    return root, cputopo.read(root)


def test_cadvisor_sees_no_uncore_cache_on_the_n305(cpualloc, tmp_path):
    root, _ = machine(tmp_path, "n305", N305)
    got = kubelet(cpualloc, root, "7", [])
    # Every core keeps only its own L1d/L1i; the module's L2 (4 CPUs) is dropped; the L3 is the node's.
    assert {tuple(c["cacheLevels"]) for c in got["cadvisor"]} == {(1, 1)}
    assert all(c["uncoreCaches"] == [] for c in got["cadvisor"])
    assert got["nodeCacheLevels"] == [3]
    topo = got["topology"]
    assert topo["numUncoreCache"] == 1 and {c["uncore"] for c in topo["cpus"].values()} == {0}  # the socket
    assert (topo["numCPUs"], topo["numCores"], topo["numSockets"], topo["cpusPerCore"]) == (8, 8, 1, 1)


def test_cadvisor_reports_a_split_l3_as_uncore_caches(cpualloc, tmp_path):
    # The case the kubelet's uncore option is made for: an L3 per 4-core cluster.
    root, _ = machine(tmp_path, "split", SPLIT_L3)
    got = kubelet(cpualloc, root, "7", [{"pod": "a", "cpus": 4}], {"prefer-align-cpus-by-uncorecache": "true"})
    assert got["topology"]["numUncoreCache"] == 2
    assert picks(got) == [[0, 1, 2, 3]]


@pytest.mark.parametrize("options", [{}, {"prefer-align-cpus-by-uncorecache": "true"}])
def test_n305_housekeeping_on_cpu_0_splits_the_modules(cpualloc, tmp_path, options):
    root, cpus = machine(tmp_path, "n305", N305)
    got = kubelet(cpualloc, root, "0", [{"pod": "vm", "cpus": 4}], options)
    assert picks(got) == [[1, 2, 3, 4]]  # the lowest free CPUs: both modules
    assert cputopo.choose(cpus, range(1, 8), 4) == [4, 5, 6, 7]  # the reference: module 1, whole


@pytest.mark.parametrize("count", [1, 2])
@pytest.mark.parametrize("options", [{}, {"strict-cpu-reservation": "true"}])
def test_n305_housekeeping_on_top_gives_a_whole_module(cpualloc, tmp_path, count, options):
    root, cpus = machine(tmp_path, "n305", N305)
    housekeeping = cputopo.housekeeping(cpus, count)
    assert housekeeping == list(range(8 - count, 8))
    steps = [{"pod": "vm", "cpus": 4}, {"pod": "small", "cpus": 2}, {"pod": "vm", "release": True},
             {"pod": "vm2", "cpus": 4}]  # fmt: skip
    got = picks(kubelet(cpualloc, root, cputopo.fmt(housekeeping), steps, options))
    pool = set(range(8)) - set(housekeeping)
    assert got[0] == [0, 1, 2, 3] == cputopo.choose(cpus, pool, 4)  # module 0, whole
    assert got[1] == [4, 5] == cputopo.choose(cpus, pool - {0, 1, 2, 3}, 2)  # beside the housekeeping
    assert got[3] == [0, 1, 2, 3]  # released and taken again: still whole


def test_n305_what_the_layout_does_not_guarantee(cpualloc, tmp_path):
    root, cpus = machine(tmp_path, "n305", N305)
    got = picks(kubelet(cpualloc, root, "7", [{"pod": "small", "cpus": 2}, {"pod": "vm", "cpus": 4}]))
    # A smaller exclusive request made first is packed into module 0, where cputopo would have kept
    # it beside the housekeeping CPU; the 4-core VM then finds no whole module (none is left).
    assert got[0] == [0, 1] and cputopo.choose(cpus, range(7), 2) == [4, 5]
    assert got[1] == [2, 3, 4, 5]
    reference = cputopo.choose(cpus, set(range(7)) - {0, 1}, 4) or []
    assert len({cpus[c].l2 for c in reference}) == 2  # no whole module was left for anyone


def test_the_kubelet_would_align_to_modules_if_cadvisor_saw_them(cpualloc, tmp_path):
    # What-if (the program puts each core's L2 into its UncoreCaches): the kubelet's uncore code
    # then does what cputopo.choose does, even with housekeeping on CPU 0. Only cadvisor's cache
    # classification is missing.
    root, cpus = machine(tmp_path, "n305", N305)
    opts = {"prefer-align-cpus-by-uncorecache": "true"}
    steps = [{"pod": "vm", "cpus": 4}, {"pod": "small", "cpus": 2}]
    got = kubelet(cpualloc, root, "0", steps, opts, uncore_from_l2=True)
    assert got["topology"]["numUncoreCache"] == 2
    assert picks(got) == [[4, 5, 6, 7], [1, 2]]
    assert cputopo.choose(cpus, range(1, 8), 4) == [4, 5, 6, 7]


def test_hybrid_2p_8e(cpualloc, tmp_path):
    root, cpus = machine(tmp_path, "hybrid", HYBRID_2P8E)
    got = kubelet(cpualloc, root, "11", [{"pod": "vm", "cpus": 4}, {"pod": "small", "cpus": 2}])
    topo = got["topology"]
    # 12 threads on 10 cores: the kubelet's CPUs-per-core is 1, so it takes single-thread E-cores
    # first and never counts a P-core with both threads free as a free core.
    assert (topo["numCPUs"], topo["numCores"], topo["cpusPerCore"], topo["numUncoreCache"]) == (12, 10, 1, 1)
    assert cputopo.housekeeping(cpus) == [11]
    vm, small = picks(got)
    assert vm == [4, 5, 6, 7] == cputopo.choose(cpus, range(11), 4)  # one whole E-module
    assert small == [8, 9]  # E-cores; cputopo.choose would give a whole P-core
    assert cputopo.choose(cpus, set(range(11)) - set(vm), 2) == [0, 1]
    # With housekeeping on CPU 0 the kubelet even hands out the reserved CPU: P-core 0 has one free
    # thread = "CPUs per core", so it counts as a free core and is taken whole (kubernetes#140495).
    assert picks(kubelet(cpualloc, root, "0", [{"pod": "vm", "cpus": 4}])) == [[0, 1, 4, 5]]


def test_two_core_machine(cpualloc, tmp_path):
    root, cpus = machine(tmp_path, "two", TWO_CORE)
    housekeeping = cputopo.fmt(cputopo.housekeeping(cpus))
    assert housekeeping == "1"
    got = picks(kubelet(cpualloc, root, housekeeping, [{"pod": "vm", "cpus": 1}, {"pod": "second", "cpus": 1}]))
    assert got[0] == [0] == cputopo.choose(cpus, [0], 1)
    assert "not enough cpus" in str(got[1])


def test_this_machine_is_read_like_the_fixtures(cpualloc, tmp_path):
    """The program on this machine's own /sys: the same CPUs cputopo reads, and the kubelet's first
    exclusive CPU under the housekeeping layout is the lowest one outside it."""
    cpus = cputopo.read()
    housekeeping = cputopo.housekeeping(cpus)
    if len(cpus) < 2:
        pytest.skip("one CPU: nothing is left for exclusive use")
    got = kubelet(cpualloc, Path("/sys"), cputopo.fmt(housekeeping), [{"pod": "vm", "cpus": 1}])
    assert sorted(int(c) for c in got["topology"]["cpus"]) == [c.id for c in cpus]
    assert picks(got) == [[min(c.id for c in cpus if c.id not in housekeeping)]]
