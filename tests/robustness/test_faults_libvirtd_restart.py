"""libvirtd restarted under running VMs: the operator reconnects, lifecycle events resume (a VM
destroyed right after the restart is started again well before the periodic resync could do it)
and every VM is still one running domain. Runs on a PRIVATE libvirtd (tests/harness/private-libvirt.sh)
so the shared one is never restarted.

Short form (CI): 3 VMs. K3SVIRT_ROBUSTNESS=full: 20 VMs.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import tiny_vm, wait_until

from .conftest import (
    FULL,
    FULL_TIMEOUT,
    ApiServer,
    conditions,
    count,
    drop_namespace,
    make_namespace,
    operator_env,
    start_operator,
)

REPO = Path(__file__).resolve().parents[2]
N_VMS = 20 if FULL else 3
RESYNC = 30  # the operator's safety-net resync (its default): a repair by events takes far less
REPAIR_WITHIN = 15.0


def _plv(*args: str) -> str:
    proc = subprocess.run(["bash", str(REPO / "tests/harness/private-libvirt.sh"), *args], capture_output=True,
                          text=True, timeout=180)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


@pytest.fixture
def private_libvirt(testbed, tmp_path_factory) -> Iterator[tuple[str, str]]:
    d = str(Path(testbed["K3SVIRT_STORAGE_ROOT"]).parent / f"{Path(testbed['K3SVIRT_STORAGE_ROOT']).name}-plv")
    uri = _plv("start", d)
    try:
        yield uri, d
    finally:
        _plv("stop", d)


@pytest.mark.timeout(FULL_TIMEOUT)
def test_libvirtd_restart_under_running_vms(testbed, apiserver: ApiServer, private_libvirt, tiny_guest, tmp_path):
    import libvirt

    uri, plv_dir = private_libvirt
    node = f"lvr-{uuid.uuid4().hex[:6]}"
    ns = make_namespace(apiserver, "rblvr")
    env = operator_env(testbed, node, LIBVIRT_DEFAULT_URI=uri, K3SVIRT_RESYNC_SECONDS=str(RESYNC))
    op = start_operator(env, tmp_path / "operator.log")
    names = [f"r{i:02d}" for i in range(N_VMS)]

    def items() -> dict[str, dict]:
        return {v["metadata"]["name"]: v for v in apiserver.request("GET", apiserver.vms(ns)).json()["items"]}

    def all_running() -> bool:
        vms = items()
        return len(vms) == N_VMS and all(conditions(v).get("Ready", {}).get("status") == "True" for v in vms.values())

    conn = libvirt.open(uri)
    try:
        for n in names:
            obj = tiny_vm(n, tiny_guest, nodeName=node, networks=[], memory={"size": "64Mi"})
            assert apiserver.request("POST", apiserver.vms(ns), json.dumps(obj).encode()).status_code == 201
        wait_until(all_running, 60 + 10 * N_VMS, f"VMs did not start; log:\n{op.tail(30)}", 1)
        pids = {d.name(): d.ID() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)}
        conn.close()

        t0 = time.monotonic()
        _plv("restart", plv_dir)
        restarted = time.monotonic() - t0
        conn = libvirt.open(uri)
        running = {d.name(): d.ID() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)}
        assert running == pids, "guests did not survive the libvirtd restart unchanged"

        victim = conn.lookupByName(f"{ns}_{names[0]}")
        wait_until(lambda: "reconnected to libvirt" in op.tail(200) or "connected to libvirt" in op.tail(5), 60,
                   f"the operator did not reconnect; log:\n{op.tail(30)}")  # fmt: skip
        t1 = time.monotonic()
        try:
            victim.destroy()
        except libvirt.libvirtError as err:  # down already: the repair by event is what is measured either way
            if err.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
                raise
            print(f"the victim was already down before its destroy: state {victim.state()}; log:\n{op.tail(30)}")
        wait_until(victim.isActive, 60, f"the destroyed VM was not started again; log:\n{op.tail(30)}", 0.5)
        repaired = time.monotonic() - t1
        assert repaired < REPAIR_WITHIN, f"repaired after {repaired:.1f} s: by the resync, not by an event"
        count("libvirtd restarts (VMs under it)", N_VMS)
        wait_until(all_running, 120, f"not every VM is Ready after the restart; log:\n{op.tail(30)}", 1)
        doms = [d for d in conn.listAllDomains(0) if d.name().startswith(ns + "_")]
        assert sorted(d.name() for d in doms) == sorted(f"{ns}_{n}" for n in names)
        print(f"libvirtd restart under {N_VMS} VMs took {restarted:.1f} s; a VM destroyed afterwards was "
              f"running again {repaired:.1f} s later (resync {RESYNC} s)")  # fmt: skip
        for n in names:
            apiserver.request("DELETE", apiserver.vms(ns, n))
        wait_until(lambda: items() == {}, 60 + 5 * N_VMS, f"VMs not finalized; log:\n{op.tail(30)}", 1)
        assert [d.name() for d in conn.listAllDomains(0) if d.name().startswith(ns + "_")] == []
    finally:
        op.stop()
        drop_namespace(apiserver, ns, Path(testbed["K3SVIRT_STORAGE_ROOT"]))
        try:
            for d in conn.listAllDomains(0):
                if d.isActive():
                    d.destroy()
                d.undefine()
            conn.close()
        except libvirt.libvirtError:
            pass
