"""Snapshots and restore against real libvirt and the tiny guest (docs/snapshots.md).

The guest's boot script reads a generation marker from the start of its disk (/dev/vda), prints it on
the serial console, writes the next one and syncs: a first boot writes GEN-1. Whenever the disk's size
changes (a live grow from the host) it prints the new size and writes the next generation: that is the
guest overwriting its disk without a reboot. A boot after a restore of a snapshot taken at GEN-1 reads
GEN-1 again. (Few boots: under software emulation on a loaded machine one boot can take minutes.)

The same VM goes through the users' tools too, at no extra boot: `kubectl k3svirt snapshot/restore
--wait` and the REST gateway's /vms/{name}/snapshots routes (under gunicorn, as deployed).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.gateway_proc import gateway

from .conftest import Operator, free_port, get_json, kubectl, tiny_vm, wait_until
from .test_kubectl_plugin import plugin

GUEST_SCRIPT = r"""
gen() {
  v=$(dd if=/dev/vda bs=16 count=1 2>/dev/null | tr -dc 'A-Z0-9-')
  echo "K3SVIRT-DISK-READ ${v:-EMPTY}"
  n=${v#GEN-}; case "$n" in ''|*[!0-9]*) n=0;; esac; n=$((n+1))
  printf 'GEN-%s\n' "$n" | dd of=/dev/vda bs=16 count=1 conv=notrunc 2>/dev/null; sync
  echo "K3SVIRT-DISK-WROTE GEN-$n"
}
gen
last=$(cat /sys/block/vda/size); echo "K3SVIRT-DISK-SIZE $last"
while sleep 1; do
  s=$(cat /sys/block/vda/size)
  if [ "$s" != "$last" ]; then echo "K3SVIRT-DISK-SIZE $s"; last=$s; gen; fi
done
"""


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A node image directory (K3SVIRT_IMAGE_DIRS) with a 32 MiB raw image: a marker, then zeros."""
    d = tmp_path_factory.mktemp("images")
    img = d / "base.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(img), "32M"], check=True)
    with open(img, "r+b") as fh:
        fh.write(b"K3SVIRT-IMAGE-DATA " * 50000)  # ~1 MiB of a repeated text: compresses well
    return d


@pytest.fixture(scope="module")
def operator(testbed: dict[str, str], image_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The e2e operator (tests/e2e/conftest.py) with a file:// image directory for the compression test."""
    env = {
        **os.environ,
        **testbed,
        "K3SVIRT_STOP_GRACE_SECONDS": "3",
        "K3SVIRT_METRICS_PORT": str(free_port()),
        "K3SVIRT_STATS_INTERVAL": "1",
        "K3SVIRT_IMAGE_DIRS": str(image_dir),
        "PYTHONUNBUFFERED": "1",
    }
    if os.environ.get("K3SVIRT_TESTBED_NODE") == "0":
        env["K3SVIRT_RESERVATIONS"] = "off"
    op = Operator(env, tmp_path_factory.mktemp("operator") / "operator.log")
    op.start()
    yield op
    op.stop()
    print(f"\n--- operator log tail ---\n{op.tail()}")


@pytest.fixture
def rest(kubeconfig: str, namespace: str, tmp_path: Path) -> Iterator[tuple[str, dict[str, dict[str, str]]]]:
    """The production gateway (gunicorn) on this cluster: its base URL and the headers of an operate and
    an admin key, both for the test's namespace only."""
    keyfile = tmp_path / "api-keys"
    auth = {}
    for role in ("operate", "admin"):
        add = [sys.executable, "-m", "k3svirt_gateway.keys", "add", f"snap-{role}", "--role", role,
               "--namespaces", namespace, "--file", str(keyfile)]  # fmt: skip
        key = subprocess.run(add, check=True, capture_output=True, text=True).stdout.strip()
        auth[role] = {"Authorization": f"Bearer {key}"}
    env = {"KUBECONFIG": kubeconfig, "K3SVIRT_API_KEYS_FILE": str(keyfile), "K3SVIRT_API_KEYS_SECRET": ""}
    with gateway(env, tmp_path / "gateway.log") as (url, _proc):
        yield f"{url}/api/v1", auth


def _marker_vm(name: str, guest, **overrides):
    script = base64.b64encode(GUEST_SCRIPT.encode()).decode()
    vm = tiny_vm(name, guest, **overrides)
    vm["spec"]["boot"]["kernel"]["cmdline"] += f" k3svirt.run={script}"
    return vm


def _apply(kubeconfig: str, namespace: str, obj: dict) -> None:
    kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=json.dumps(obj))


def _snapshot(name: str, vm: str) -> dict:
    return {"apiVersion": "k3svirt.io/v1alpha1", "kind": "VirtualMachineSnapshot", "metadata": {"name": name},
            "spec": {"vmName": vm}}  # fmt: skip


def _restore(name: str, snapshot: str, target: str | None = None) -> dict:
    spec: dict = {"snapshotName": snapshot, **({"target": {"name": target}} if target else {})}
    return {"apiVersion": "k3svirt.io/v1alpha1", "kind": "VirtualMachineRestore", "metadata": {"name": name},
            "spec": spec}  # fmt: skip


def _phase(kubeconfig: str, kind: str, name: str, namespace: str, want: str, timeout: float = 600) -> dict:
    def done() -> dict | None:
        obj = get_json(kubeconfig, kind, name, "-n", namespace)
        phase = (obj.get("status") or {}).get("phase")
        if phase == "Failed" and want != "Failed":
            raise AssertionError(f"{kind}/{name} failed: {obj['status']}")
        return obj if phase == want else None

    return wait_until(done, timeout, f"{kind}/{name} never reached {want}", interval=2)


def _console(kubeconfig: str, namespace: str, vm: str) -> Path:
    status = wait_until(lambda: get_json(kubeconfig, "vm", vm, "-n", namespace).get("status", {}).get("consoleLog"),
                        60, "no consoleLog")  # fmt: skip
    return Path(status)


def _lines(console: Path, prefix: str) -> list[str]:
    """The values after `prefix` on the console, in order (the shell's prompt may share the line)."""
    text = console.read_text(errors="replace") if console.exists() else ""
    return [ln[ln.index(prefix) + len(prefix) :].strip() for ln in text.splitlines() if prefix in ln]


def _wait_line(console: Path, prefix: str, value: str, count: int = 1, timeout: float = 600) -> None:
    try:
        wait_until(lambda: _lines(console, prefix).count(value) >= count, timeout, "", interval=1)
    except AssertionError:
        text = console.read_text(errors="replace")[-2000:] if console.exists() else "(no console log)"
        raise AssertionError(f"never saw {count} x {prefix}{value}; console:\n{text}") from None


def _ready_vm(kubeconfig: str, namespace: str, name: str) -> None:
    def ready() -> bool:
        conds = (get_json(kubeconfig, "vm", name, "-n", namespace).get("status") or {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)

    wait_until(ready, 600, f"vm/{name} never became Ready", interval=2)


def _grow(kubeconfig: str, namespace: str, vm: str, size: str, op: str = "replace") -> None:
    patch = json.dumps([{"op": op, "path": "/spec/disks/0/size", "value": size}])
    kubectl(kubeconfig, "patch", "-n", namespace, f"vm/{vm}", "--type=json", "-p", patch)


def _condition(kubeconfig: str, namespace: str, vm: str, ctype: str) -> dict:
    conds = (get_json(kubeconfig, "vm", vm, "-n", namespace).get("status") or {}).get("conditions") or []
    return next((c for c in conds if c["type"] == ctype), {})


@pytest.mark.timeout(1800)  # three boots of a software-emulated guest: minutes each on a loaded machine
def test_snapshot_overwrite_restore_clone_and_delete(kubeconfig, namespace, operator, tiny_guest, storage_root,
                                                      rest):  # fmt: skip
    name = "marked"
    _apply(kubeconfig, namespace, _marker_vm(name, tiny_guest))
    _ready_vm(kubeconfig, namespace, name)
    console = _console(kubeconfig, namespace, name)
    _wait_line(console, "K3SVIRT-DISK-WROTE ", "GEN-1")
    vdir = storage_root / "vms" / namespace / name
    disk = vdir / "scratch.qcow2"

    # A running VM: paused for the copy, crash-consistent. Taken with the kubectl plugin.
    out = plugin(kubeconfig, "-n", namespace, "snapshot", name, "--name", "at-gen1", "--wait", timeout=660).stdout
    snap = get_json(kubeconfig, "vmsnap", "at-gen1", "-n", namespace)["status"]
    assert snap["phase"] == "Ready", snap  # --wait returned once it was
    assert f"at-gen1 ready ({snap['size']}, CrashConsistent)" in out, out
    assert snap["consistency"] == "CrashConsistent" and snap["wasRunning"] is True
    assert snap["sizeBytes"] > 0 and snap["size"] and snap["creationTime"] and snap["node"]
    assert snap["disks"][0]["name"] == "scratch" and snap["disks"][0]["virtualSizeBytes"] == 64 << 20
    assert (vdir / "snapshots" / "at-gen1" / "scratch.qcow2").is_file()
    assert get_json(kubeconfig, "vm", name, "-n", namespace)["status"]["printableStatus"] == "Running"

    # Live grow (libvirt block resize): the running guest sees 96 MiB and overwrites its marker (GEN-2).
    _grow(kubeconfig, namespace, name, "96Mi")
    _wait_line(console, "K3SVIRT-DISK-SIZE ", str(96 << 11))
    _wait_line(console, "K3SVIRT-DISK-WROTE ", "GEN-2")
    assert _condition(kubeconfig, namespace, name, "RestartRequired")["status"] == "False"  # applied live

    # A restore that fails (the snapshot lost its file on the node) leaves the disk and the VM alone.
    _apply(kubeconfig, namespace, _snapshot("doomed", name))
    _phase(kubeconfig, "vmsnap", "doomed", namespace, "Ready")
    (vdir / "snapshots" / "doomed" / "scratch.qcow2").unlink()
    inode = disk.stat().st_ino
    _apply(kubeconfig, namespace, _restore("broken", "doomed"))
    bad = _phase(kubeconfig, "vmrestore", "broken", namespace, "Failed")["status"]
    assert bad["conditions"][0]["reason"] == "RestoreFailed" and "untouched" in bad["conditions"][0]["message"]
    assert disk.stat().st_ino == inode and not list(vdir.glob(".*.restore"))
    assert get_json(kubeconfig, "vm", name, "-n", namespace)["status"]["printableStatus"] == "Running"
    assert _lines(console, "K3SVIRT-DISK-READ ") == ["EMPTY", "GEN-1"]  # no reboot: never stopped

    # Restore in place with the plugin: stopped for it, started again, the first marker is back.
    out = plugin(kubeconfig, "-n", namespace, "restore", name, "at-gen1", "--wait", "--timeout", "600", timeout=660)
    out = out.stdout
    found = re.search(r"virtualmachinerestore\.k3svirt\.io/(\S+) succeeded \(target marked\)", out)
    assert found, out
    restore = get_json(kubeconfig, "vmrestore", found[1], "-n", namespace)["status"]
    assert restore["phase"] == "Succeeded", restore
    assert restore["targetName"] == name and restore["restoredDisks"] == ["scratch"] and not restore["clone"]
    assert disk.stat().st_ino != inode
    _wait_line(console, "K3SVIRT-DISK-READ ", "GEN-1", count=2)  # the grow read it, and the boot after the restore
    assert len(_lines(console, "K3SVIRT-GUEST-READY")) == 2
    _ready_vm(kubeconfig, namespace, name)

    # Into a new VM, through the REST gateway: a clone from the same snapshot reads GEN-1 from its own
    # copy of the disk.
    api, keys = rest
    q, auth, admin = {"namespace": namespace}, keys["operate"], keys["admin"]
    url = f"{api}/vms/{name}/snapshots/at-gen1/restore"
    r = requests.post(url, params=q, headers=auth, json={"name": "clone-it", "target": "cloned"}, timeout=30)
    assert r.status_code == 403, r.text  # a restore replaces disks or makes a VM: role admin
    r = requests.post(url, params=q, headers=admin, json={"name": "clone-it", "target": "cloned"}, timeout=30)
    assert r.status_code == 202 and r.json()["spec"]["target"] == {"name": "cloned"}, r.text
    restore = _phase(kubeconfig, "vmrestore", "clone-it", namespace, "Succeeded")["status"]
    assert restore["clone"] is True and restore["targetName"] == "cloned"
    clone = get_json(kubeconfig, "vm", "cloned", "-n", namespace)
    assert clone["metadata"]["annotations"]["k3svirt.io/restored-from"] == f"{namespace}/at-gen1"
    assert clone["metadata"]["uid"] != get_json(kubeconfig, "vm", name, "-n", namespace)["metadata"]["uid"]
    _ready_vm(kubeconfig, namespace, "cloned")
    _wait_line(_console(kubeconfig, namespace, "cloned"), "K3SVIRT-DISK-READ ", "GEN-1")

    # A stopped VM: no pause, consistency Stopped.
    kubectl(
        kubeconfig, "patch", "-n", namespace, f"vm/{name}", "--type=merge", "-p", '{"spec":{"runStrategy":"Halted"}}'
    )
    wait_until(lambda: get_json(kubeconfig, "vm", name, "-n", namespace)["status"]["printableStatus"] == "Stopped",
               300, "the VM did not stop", interval=2)  # fmt: skip
    # Through the REST gateway: taken, read back Ready (one and in the VM's list), deleted.
    r = requests.post(f"{api}/vms/{name}/snapshots", params=q, headers=auth, json={"name": "stopped"}, timeout=30)
    assert r.status_code == 201 and r.headers["Location"].endswith(
        f"/vms/{name}/snapshots/stopped?namespace={namespace}"
    )

    def rest_ready() -> dict | None:
        got = requests.get(f"{api}/vms/{name}/snapshots/stopped", params=q, headers=auth, timeout=30)
        assert got.status_code == 200, got.text
        status = got.json().get("status") or {}
        assert status.get("phase") != "Failed", status
        return status if status.get("phase") == "Ready" else None

    stopped = wait_until(rest_ready, 300, "the REST snapshot never became Ready", interval=1)
    assert stopped["consistency"] == "Stopped" and stopped["wasRunning"] is False and stopped["pausedMilliseconds"] == 0
    listed = requests.get(f"{api}/vms/{name}/snapshots", params=q, headers=auth, timeout=30).json()["items"]
    mine = {s["name"]: s for s in listed}
    assert set(mine) == {"at-gen1", "doomed", "stopped"}, listed
    assert mine["stopped"]["phase"] == "Ready" and mine["stopped"]["consistency"] == "Stopped"
    assert mine["stopped"]["sizeBytes"] == stopped["sizeBytes"] and mine["at-gen1"]["consistency"] == "CrashConsistent"

    # Deleting a snapshot returns its space.
    stopped_dir = vdir / "snapshots" / "stopped"
    held = sum(p.stat().st_blocks * 512 for p in stopped_dir.iterdir())
    assert held >= stopped["sizeBytes"] > 0
    r = requests.delete(f"{api}/vms/{name}/snapshots/stopped", params=q, headers=admin, timeout=30)
    assert r.status_code == 202, r.text
    wait_until(lambda: not stopped_dir.exists(), 120, "the deleted snapshot's files stayed", interval=1)
    gone = requests.get(f"{api}/vms/{name}/snapshots/stopped", params=q, headers=auth, timeout=30)
    assert gone.status_code == 404, gone.text

    # The VM deleted (deletionPolicy Delete): its snapshots go with it; the clone keeps its own disks.
    kubectl(kubeconfig, "delete", "-n", namespace, f"vm/{name}", "--wait=false")
    wait_until(lambda: kubectl(kubeconfig, "get", "-n", namespace, "vmsnap/at-gen1", check=False).returncode != 0,
               300, "the deleted VM's snapshot object stayed", interval=2)  # fmt: skip
    assert not vdir.exists()
    assert (storage_root / "vms" / namespace / "cloned" / "scratch.qcow2").is_file()
    kubectl(kubeconfig, "delete", "-n", namespace, "vm/cloned", "--wait=false")


def test_retained_vm_keeps_its_snapshots(kubeconfig, namespace, operator, tiny_guest, storage_root):
    """deletionPolicy Retain: deleting the VM keeps its disks, and its snapshots with them (objects and
    files). A stopped VM: no boot needed."""
    name = "kept"
    _apply(kubeconfig, namespace, tiny_vm(name, tiny_guest, runStrategy="Halted", deletionPolicy="Retain"))
    vdir = storage_root / "vms" / namespace / name
    wait_until((vdir / "scratch.qcow2").is_file, 300, "the disk was not created", interval=1)
    _apply(kubeconfig, namespace, _snapshot("kept-snap", name))
    assert _phase(kubeconfig, "vmsnap", "kept-snap", namespace, "Ready")["status"]["consistency"] == "Stopped"
    try:
        kubectl(kubeconfig, "delete", "-n", namespace, f"vm/{name}", "--wait=true", "--timeout=180s")
        # The VM is gone, so its deletion handler (which deletes a Delete VM's snapshots) has run.
        snap = get_json(kubeconfig, "vmsnap", "kept-snap", "-n", namespace)
        assert not snap["metadata"].get("deletionTimestamp") and snap["status"]["phase"] == "Ready"
        assert (vdir / "scratch.qcow2").is_file() and (vdir / "snapshots" / "kept-snap" / "scratch.qcow2").is_file()
    finally:
        # Retained storage is the owner's to remove: no VM is left to sweep it.
        kubectl(kubeconfig, "delete", "-n", namespace, "vmsnap/kept-snap", "--wait=false", check=False)
        shutil.rmtree(vdir, ignore_errors=True)
        with contextlib.suppress(OSError):
            vdir.parent.rmdir()  # the namespace's directory, when nothing else is left in it


def test_refusals_name_the_reason_and_disks_never_shrink(kubeconfig, namespace, operator, tiny_guest, storage_root):
    # A raw volume is refused with the reason (the VM itself need not even provision).
    vol = tiny_vm("withvol", tiny_guest, runStrategy="Halted",
                  disks=[{"name": "data", "format": "raw", "source": {"volume": {"path": "/dev/null"}}}])  # fmt: skip
    _apply(kubeconfig, namespace, vol)
    _apply(kubeconfig, namespace, _snapshot("vol", "withvol"))
    ready = _phase(kubeconfig, "vmsnap", "vol", namespace, "Failed")["status"]["conditions"][0]
    assert ready["reason"] == "VolumeNotSnapshottable" and "spec.disks[0].source.volume" in ready["message"]

    # A smaller size is refused, naming the field; the disk keeps its size.
    _apply(kubeconfig, namespace, tiny_vm("small", tiny_guest, runStrategy="Halted"))
    disk = storage_root / "vms" / namespace / "small" / "scratch.qcow2"
    wait_until(disk.is_file, 300, "the disk was not created", interval=1)
    _grow(kubeconfig, namespace, "small", "32Mi")

    def refused() -> bool:
        prov = _condition(kubeconfig, namespace, "small", "Provisioned")
        message = prov.get("message", "")
        return prov.get("status") == "False" and "spec.disks[0].size" in message and "shrink" in message

    wait_until(refused, 300, "shrinking was not refused", interval=2)
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(disk)], capture_output=True, text=True)
    assert json.loads(out.stdout)["virtual-size"] == 64 << 20
    kubectl(kubeconfig, "delete", "-n", namespace, "vm/small", "vm/withvol", "--wait=false")


def test_compressed_image_copy_and_offline_grow(kubeconfig, namespace, operator, tiny_guest, storage_root, image_dir):
    disk = {"name": "img", "source": {"image": {"url": f"file://{image_dir}/base.raw", "clone": "copy"}},
            "qcow2": {"compression": "zstd"}}  # fmt: skip
    vm = tiny_vm("packed", tiny_guest, runStrategy="Halted", disks=[disk])
    _apply(kubeconfig, namespace, vm)
    path = storage_root / "vms" / namespace / "packed" / "img.qcow2"
    wait_until(path.is_file, 300, "the compressed copy was not created", interval=1)

    def info() -> dict:
        return json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)],
                                         capture_output=True, text=True, check=True).stdout)  # fmt: skip

    got = info()
    assert got["format-specific"]["data"]["compression-type"] == "zstd"
    assert got["actual-size"] < 512 << 10  # ~1 MiB of image data, compressed
    # Stopped: grown offline by qemu-img.
    _grow(kubeconfig, namespace, "packed", "48Mi", op="add")
    wait_until(lambda: info()["virtual-size"] == 48 << 20, 300, "the stopped VM's disk did not grow", interval=1)
    kubectl(kubeconfig, "delete", "-n", namespace, "vm/packed", "--wait=false")
