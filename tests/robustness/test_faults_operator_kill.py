"""The operator SIGKILLed at random points of create, update and delete: after every kill a new
operator process converges every VM - one domain per VM (never a duplicate), the spec applied,
deleted VMs leave no domain, disk, seed or finalizer behind. Each VM has what a kill can orphan: a
cloud-init seed, a disk from an image (the node's image cache: a download that must not stay partial)
and a blank scratch disk.

Short form (CI): 1 round of 3 kills. K3SVIRT_ROBUSTNESS=full: 10 rounds = 30 kills.
K3SVIRT_KILL_SEED fixes the random kill points (printed, so a failing run can be replayed).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.e2e.conftest import Operator, tiny_vm, wait_until

from .conftest import (
    FULL,
    FULL_TIMEOUT,
    ApiServer,
    conditions,
    count,
    drop_namespace,
    make_namespace,
    namespace_domains,
    operator_env,
    remove_domains,
)

ROUNDS = 10 if FULL else 1
MAX_DELAY = 3.0  # kill points are drawn from [0, MAX_DELAY) s after the request (covers provisioning)
CONVERGE = 240.0


def _domains_of(conn, ns: str, name: str) -> list:
    """Every libvirt domain whose metadata says it is this VM (by name or by our <k3svirt:vm>)."""
    out = []
    for dom in conn.listAllDomains(0):
        try:
            xml = dom.XMLDesc(0)
        except Exception:  # noqa: BLE001 - undefined meanwhile
            continue
        meta = ET.fromstring(xml).find("./metadata/{https://k3svirt.io/xmlns/domain/v1}vm")
        if dom.name() == f"{ns}_{name}" or (
            meta is not None and meta.get("namespace") == ns and meta.get("name") == name
        ):
            out.append(dom)
    return out


def _image_dir(tmp_path: Path) -> Path:
    """A node image directory (K3SVIRT_IMAGE_DIRS) with a small raw image for the VMs' image disks."""
    d = tmp_path / "images"
    d.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(d / "base.raw"), "16M"], check=True)
    return d


def _kill_after(op: Operator, delay: float) -> None:
    time.sleep(delay)
    assert op.proc is not None
    op.proc.send_signal(signal.SIGKILL)
    op.proc.wait(30)


@pytest.mark.timeout(FULL_TIMEOUT)
def test_operator_sigkilled_during_create_update_delete(testbed, apiserver: ApiServer, libvirt_conn, storage_root,
                                                        tiny_guest, tmp_path):  # fmt: skip
    seed = int(os.environ.get("K3SVIRT_KILL_SEED") or time.time())
    rnd = random.Random(seed)
    print(f"kill seed {seed} ({ROUNDS} rounds)")
    node = f"kill-{uuid.uuid4().hex[:6]}"
    ns = make_namespace(apiserver, "rbkill")
    images = _image_dir(tmp_path)
    env = operator_env(testbed, node, K3SVIRT_IMAGE_DIRS=str(images))
    op = Operator(env, tmp_path / "operator.log")
    op.start()
    restarts: list[float] = []

    def restart() -> None:
        t0 = time.monotonic()
        op.start()
        restarts.append(time.monotonic() - t0)

    def vm(name: str) -> dict | None:
        r = apiserver.request("GET", apiserver.vms(ns, name))
        return r.json() if r.status_code == 200 else None

    def converge(pred, name: str, after: str) -> None:
        try:
            wait_until(pred, CONVERGE, "", 1)
        except AssertionError:
            doms = [(d.name(), d.isActive()) for d in _domains_of(libvirt_conn, ns, name)]
            raise AssertionError(
                f"{name} did not converge within {CONVERGE:.0f} s after {after} (seed {seed}); VM: "
                f"{json.dumps(vm(name))[:3000]}\ndomains: {doms}\noperator log:\n{op.tail(30)}"
            ) from None

    try:
        for rnd_i in range(ROUNDS):
            name = f"k{rnd_i}"
            # --- create
            obj = tiny_vm(name, tiny_guest, nodeName=node,
                          cloudInit={"userData": f"#cloud-config\nruncmd:\n  - echo kill-round-{rnd_i}\n"})  # fmt: skip
            obj["spec"]["disks"].append({"name": "img", "source": {"image": {"url": f"file://{images}/base.raw"}}})
            delay = rnd.uniform(0, MAX_DELAY)
            assert apiserver.request("POST", apiserver.vms(ns), json.dumps(obj).encode()).status_code == 201
            _kill_after(op, delay)
            count("operator SIGKILLs")
            restart()

            def running(name: str = name) -> bool:
                v = vm(name)
                ready = conditions(v or {}).get("Ready", {})
                return bool(v) and ready.get("status") == "True" and v["status"].get("printableStatus") == "Running"

            converge(running, name, f"a kill {delay:.2f} s into create")
            doms = _domains_of(libvirt_conn, ns, name)
            assert len(doms) == 1 and doms[0].UUIDString() == vm(name)["metadata"]["uid"], [d.name() for d in doms]
            sources = {d.get("file") for d in ET.fromstring(doms[0].XMLDesc(0)).iterfind("./devices/disk/source")}
            vm_dir = storage_root / "vms" / ns / name
            assert any(str(s).startswith(str(vm_dir)) and "img" in str(s) for s in sources), sources
            assert any(str(s).endswith(".iso") for s in sources), f"no cloud-init seed attached: {sources}"

            # --- update: a new command line, applied by a restart request
            cmdline = f"console=ttyS0 quiet no_timer_check k3svirt.hostname={name} round={rnd_i}"
            request_id = f"restart/{uuid.uuid4()}"
            patch = {"metadata": {"annotations": {"k3svirt.io/action-request": request_id}},
                     "spec": {"boot": {"kernel": {**obj["spec"]["boot"]["kernel"], "cmdline": cmdline}}}}  # fmt: skip
            delay = rnd.uniform(0, MAX_DELAY)
            r = apiserver.request("PATCH", apiserver.vms(ns, name), json.dumps(patch).encode(),
                                  "application/merge-patch+json")  # fmt: skip
            assert r.status_code == 200, r.text
            _kill_after(op, delay)
            count("operator SIGKILLs")
            restart()

            def updated(name: str = name, cmdline: str = cmdline, request_id: str = request_id) -> bool:
                v = vm(name) or {}
                st = v.get("status") or {}
                doms = _domains_of(libvirt_conn, ns, name)
                if len(doms) != 1 or not doms[0].isActive():
                    return False
                live = ET.fromstring(doms[0].XMLDesc(0)).findtext("./os/cmdline")
                restart_required = conditions(v).get("RestartRequired", {}).get("status")
                return live == cmdline and st.get("lastActionRequest") == request_id and restart_required == "False"

            converge(updated, name, f"a kill {delay:.2f} s into an update")

            # --- delete
            delay = rnd.uniform(0, MAX_DELAY)
            assert apiserver.request("DELETE", apiserver.vms(ns, name)).status_code == 200
            _kill_after(op, delay)
            count("operator SIGKILLs")
            restart()
            converge(lambda name=name: vm(name) is None, name, f"a kill {delay:.2f} s into delete")
            assert _domains_of(libvirt_conn, ns, name) == [], f"{name}: domain left after delete"
            assert not (storage_root / "vms" / ns / name).exists(), f"{name}: disks/seed left after delete"
        # nothing of the namespace is left anywhere
        assert [d.name() for d in namespace_domains(libvirt_conn, ns)] == []
        left = list((storage_root / "vms" / ns).glob("*")) if (storage_root / "vms" / ns).exists() else []
        assert left == [], f"orphaned VM directories: {left}"
        assert list((storage_root / "images").glob("*.part")) == [], "partial downloads left"
        print(f"operator restarts after SIGKILL: {len(restarts)}, healthy again in "
              f"{min(restarts):.1f}-{max(restarts):.1f} s")  # fmt: skip
    finally:
        op.stop()
        remove_domains(libvirt_conn, ns)
        drop_namespace(apiserver, ns, storage_root)
        Path(tmp_path / "seed").write_text(str(seed))
