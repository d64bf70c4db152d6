"""Free hugepages before a start (hugepages.py), against fixture sysfs trees."""

from __future__ import annotations

from pathlib import Path

import pytest
from k3svirt_operator.hugepages import Pool, read_pools, shortage

MI2, GI1 = 2 << 20, 1 << 30


def _pool(root: Path, kib: int, total: int, free: int, resv: int = 0, nodes: dict[int, int] | None = None) -> None:
    d = root / f"kernel/mm/hugepages/hugepages-{kib}kB"
    d.mkdir(parents=True)
    for name, value in (("nr_hugepages", total), ("free_hugepages", free), ("resv_hugepages", resv)):
        (d / name).write_text(f"{value}\n")
    for node, node_free in (nodes or {}).items():
        nd = root / f"devices/system/node/node{node}/hugepages/hugepages-{kib}kB"
        nd.mkdir(parents=True)
        (nd / "free_hugepages").write_text(f"{node_free}\n")


def test_read_pools_from_a_sysfs_tree(tmp_path: Path):
    _pool(tmp_path, 2048, 512, 300, resv=20, nodes={0: 200, 1: 100})
    _pool(tmp_path, 1048576, 4, 4, nodes={0: 4})
    pools = read_pools(tmp_path)
    assert pools[MI2] == Pool(MI2, 512, 300, 20, {0: 200, 1: 100}) and pools[MI2].available == 280
    assert pools[GI1].available == 4 and pools[GI1].per_node_free == {0: 4}
    assert read_pools(tmp_path / "absent") == {}


def test_the_hosts_own_counters_read_the_same_as_the_kernel_says():
    real = Path("/sys/kernel/mm/hugepages/hugepages-2048kB")
    if not real.is_dir():
        pytest.skip("this kernel has no 2 MiB hugepage pool")
    assert read_pools(Path("/sys"))[MI2].total == int((real / "nr_hugepages").read_text())


def spec(size: str, page: str | None) -> dict:
    return {"memory": {"size": size, **({"hugepages": {"pageSize": page}} if page else {})}}


@pytest.mark.parametrize(
    ("vm", "pools", "want"),
    [
        (spec("64Mi", None), {}, None),  # no hugepages: nothing to check
        (spec("64Mi", "2Mi"), {MI2: Pool(MI2, 32, 32)}, None),  # exactly enough
        (spec("64Mi", "2Mi"), {MI2: Pool(MI2, 40, 33, 2)}, "needs 32 free 2Mi hugepages"),  # 31 available
        (spec("4Gi", "1Gi"), {MI2: Pool(MI2, 4096, 4096)}, "no 1Gi hugepage pool"),
        (spec("4Gi", "1Gi"), {GI1: Pool(GI1, 0, 0)}, "hugepagesz=1G"),
    ],
)
def test_shortage(vm, pools, want):
    got = shortage(vm, pools, "n305")
    if want is None:
        assert got is None
    else:
        assert got is not None and got.field == "spec.memory.hugepages.pageSize" and want in got.message, got


def test_the_message_says_what_is_free_where_and_what_to_do():
    pools = {MI2: Pool(MI2, 100, 30, 0, {0: 10, 1: 20})}
    msg = shortage(spec("128Mi", "2Mi"), pools, "n305").message
    assert "64 free 2Mi hugepages (128Mi" in msg and "has 30 available of 100" in msg
    assert "node0: 10 free, node1: 20 free" in msg and "K3SVIRT_HUGEPAGES" in msg and "nr_hugepages" in msg
