"""Snapshot/restore decisions (snapshots.py) and the snapshot files (snapshot_store.py), on real files."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from k3svirt_common import names
from k3svirt_operator import snapshot_store as store
from k3svirt_operator import snapshots as s
from k3svirt_operator.hostfs import StorageError
from k3svirt_operator.storage import InsufficientStorage, QemuOwner, remove_vm_storage


def _snap(name="s1", vm="web", phase="Ready", **status):
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.VMSNAPSHOT_KIND,
        "metadata": {"name": name, "namespace": "ns", "uid": "snap-uid"},
        "spec": {"vmName": vm},
        "status": {"phase": phase, "vmUID": "vm-uid", "disks": [{"name": "root", "format": "qcow2"}], **status},
    }


def _restore(snapshot="s1", target=None):
    spec = {"snapshotName": snapshot, **({"target": {"name": target}} if target else {})}
    return {"metadata": {"name": "r1", "namespace": "ns"}, "spec": spec, "status": {}}


# ------------------------------------------------------------------------------ refusals
def test_passthrough_and_volumes_are_refused_with_the_field_named():
    assert s.refusal({"disks": [{"name": "root", "source": {"blank": {}}, "size": "1Gi"}]}) is None
    ref = s.refusal({"hostDevices": [{"name": "gpu", "passthrough": "gpu0"}]})
    assert (
        ref is not None and ref.reason == "HostDevicesNotSnapshottable" and ref.message.startswith("spec.hostDevices")
    )
    ref = s.refusal({"disks": [{"name": "a"}, {"name": "data", "source": {"volume": {"path": "/dev/sdb"}}}]})
    assert ref is not None and ref.reason == "VolumeNotSnapshottable"
    assert ref.message.startswith("spec.disks[1].source.volume: the raw volume /dev/sdb")


def test_needs_work_skips_finished_deleted_and_other_nodes_objects():
    assert s.snapshot_needs_work({"metadata": {}, "status": {}}, "n1")
    assert s.snapshot_needs_work({"metadata": {}, "status": {"phase": "InProgress", "node": "n1"}}, "n1")
    assert not s.snapshot_needs_work({"metadata": {}, "status": {"phase": "Ready"}}, "n1")
    assert not s.snapshot_needs_work({"metadata": {}, "status": {"phase": "Failed"}}, "n1")
    assert not s.snapshot_needs_work({"metadata": {}, "status": {"phase": "InProgress", "node": "n2"}}, "n1")
    assert not s.snapshot_needs_work({"metadata": {"deletionTimestamp": "x"}, "status": {}}, "n1")
    assert not s.restore_needs_work({"metadata": {}, "status": {"phase": "Succeeded"}}, "n1")


def test_human_size():
    assert [s.human_size(n) for n in (0, 512, 1024, 12800, 3 << 20, int(1.25 * (1 << 30)))] == [
        "0", "512", "1Ki", "12.5Ki", "3Mi", "1.25Gi"]  # fmt: skip


def test_status_carries_phase_node_and_a_ready_condition():
    st = s.snapshot_status(s.SnapPhase.READY, "n1", "SnapshotTaken", "ok", sizeBytes=5, size=None)
    assert st["phase"] == "Ready" and st["node"] == "n1" and st["sizeBytes"] == 5 and "size" not in st
    assert st["conditions"][0]["type"] == "Ready" and st["conditions"][0]["status"] == "True"
    failed = s.snapshot_status(s.SnapPhase.FAILED, "n1", "VolumeNotSnapshottable", "no", old=st)
    assert (
        failed["conditions"][0]["status"] == "False" and failed["conditions"][0]["reason"] == "VolumeNotSnapshottable"
    )


# ------------------------------------------------------------------------------ restore plans
def test_restore_in_place_and_its_refusals():
    plan = s.plan_restore(_restore(), _snap(), "web", "vm-uid", ["root", "extra"], False)
    assert plan.refused is None and not plan.clone and plan.target == "web" and plan.disks == ("root",)
    assert s.plan_restore(_restore(), None, "web", "vm-uid", ["root"], False).refused.reason == "SnapshotNotFound"
    not_ready = s.plan_restore(_restore(), _snap(phase="InProgress"), "web", "vm-uid", ["root"], False)
    assert not_ready.refused.reason == "SnapshotNotReady"
    other = s.plan_restore(_restore(), _snap(), "web", "new-uid", ["root"], False)
    assert other.refused.reason == "SnapshotOfAnotherVM"
    assert s.plan_restore(_restore(), _snap(), "web", "vm-uid", ["data"], False).refused.reason == "DisksChanged"


def test_restore_into_a_new_vm_needs_a_free_name_and_the_vm_spec():
    snap = _snap(vmSpec={"memory": {"size": "64Mi"}})
    plan = s.plan_restore(_restore(target="web2"), snap, "web", "vm-uid", [], False)
    assert plan.refused is None and plan.clone and plan.target == "web2"
    assert s.plan_restore(_restore(target="web2"), snap, "web", "vm-uid", [], True).refused.reason == "TargetExists"
    assert (
        s.plan_restore(_restore(target="web2"), _snap(), "web", "x", [], False).refused.reason == "SnapshotIncomplete"
    )


def test_clone_object_runs_on_this_node_without_fixed_macs():
    spec = {"nodeSelector": {"a": "b"}, "networks": [{"name": "n", "macAddress": "52:54:00:00:00:01"}]}
    obj = s.clone_object(_snap(vmSpec=spec), "web2", "n1", names.API_VERSION, names.VM_KIND)
    assert obj["metadata"] == {"name": "web2", "namespace": "ns",
                               "annotations": {names.ANNOTATION_RESTORED_FROM: "ns/s1"}}  # fmt: skip
    assert obj["spec"] == {"nodeName": "n1", "networks": [{"name": "n"}]}
    assert spec["networks"][0]["macAddress"]  # the snapshot's own record is not changed


def test_orphaned_directories_are_those_without_a_snapshot_object():
    assert s.orphaned(["s1", "s2", ".s3.tmp", ".s1.tmp"], ["s1"]) == [".s3.tmp", "s2"]


def test_a_deleted_vms_snapshots_go_with_delete_and_stay_with_retain():
    snaps = [_snap("s2"), _snap("s1"), _snap("s1")]  # the index may hold an object twice
    assert s.deleted_with_vm({}, snaps) == ["s1", "s2"]  # Delete is the default
    assert s.deleted_with_vm({"deletionPolicy": "Delete"}, snaps) == ["s1", "s2"]
    assert s.deleted_with_vm({"deletionPolicy": "Retain"}, snaps) == []
    assert s.deleted_with_vm({"deletionPolicy": "Delete"}, []) == []


def test_retained_storage_keeps_the_snapshot_files_a_later_vm_finds(tmp_path):
    """deletionPolicy Retain: the VM's directory stays, snapshots included; a later VM of the same name
    whose objects still name them sweeps nothing."""
    root = tmp_path / "root"
    vdir = root / "vms" / "ns" / "web"
    vdir.mkdir(parents=True)
    disk = vdir / "root.qcow2"
    _qcow2(disk, pattern="0x41")
    tmp = store.begin("ns", "web", "s1", root)
    final = store.commit(
        "ns", "web", "s1", root, "uid-1", store.copy_disks([store.DiskFile("root", disk, "qcow2")], tmp)
    )
    remove_vm_storage("ns", "web", root, keep=True)
    assert (final / "root.qcow2").is_file() and store.list_dirs("ns", "web", root) == ["s1"]
    assert s.orphaned(store.list_dirs("ns", "web", root), ["s1"]) == []
    remove_vm_storage("ns", "web", root, keep=False)
    assert not vdir.exists()


# ------------------------------------------------------------------------------ files
def _qcow2(path: Path, size: str = "8M", pattern: str | None = None) -> None:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    if pattern:
        subprocess.run(["qemu-io", "-c", f"write -P {pattern} 0 1M", str(path)], check=True, capture_output=True)


def _read(path: Path) -> bytes:
    out = subprocess.run(["qemu-io", "-c", "read -v 0 16", str(path)], check=True, capture_output=True, text=True)
    return out.stdout.encode()


def test_snapshot_copy_commit_stage_and_swap_on_real_files(tmp_path):
    root = tmp_path / "root"
    vdir = root / "vms" / "ns" / "web"
    vdir.mkdir(parents=True)
    disk = vdir / "root.qcow2"
    _qcow2(disk, pattern="0x41")
    disks = [store.DiskFile("root", disk, "qcow2")]

    tmp = store.begin("ns", "web", "s1", root)
    copied = store.copy_disks(disks, tmp)
    final = store.commit("ns", "web", "s1", root, "uid-1", copied)
    assert final == vdir / "snapshots" / "s1" and not tmp.exists()
    assert store.read_meta(final) == {"uid": "uid-1", "disks": [{"name": "root", "format": "qcow2"}]}
    assert copied[0].virtual_size_bytes == 8 << 20 and 0 < copied[0].size_bytes < 8 << 20  # sparse
    assert store.list_dirs("ns", "web", root) == ["s1"]

    subprocess.run(["qemu-io", "-c", "write -P 0x42 0 1M", str(disk)], check=True, capture_output=True)
    assert b"42 42" in _read(disk)
    pairs = store.stage(final, disks, reserve=0)
    assert b"42 42" in _read(disk)  # staged only: the disk is untouched until the swap
    store.swap_in(pairs, QemuOwner(user="nobody-such-user"))
    assert b"41 41" in _read(disk) and not pairs[0][0].exists()

    freed = store.remove(final)
    assert freed > 0 and not final.exists() and store.list_dirs("ns", "web", root) == []


def test_a_failed_stage_leaves_the_disks_and_no_staged_files(tmp_path):
    root = tmp_path / "root"
    vdir = root / "vms" / "ns" / "web"
    vdir.mkdir(parents=True)
    a, b = vdir / "a.qcow2", vdir / "b.qcow2"
    _qcow2(a, pattern="0x41")
    _qcow2(b, pattern="0x41")
    snap = vdir / "snapshots" / "s1"
    snap.mkdir(parents=True)
    store.copy_file(a, snap / "a.qcow2")  # b's copy is missing
    with pytest.raises(StorageError, match="b.qcow2 is missing"):
        store.stage(snap, [store.DiskFile("a", a, "qcow2"), store.DiskFile("b", b, "qcow2")], reserve=0)
    store.copy_file(b, snap / "b.qcow2")
    with pytest.raises(InsufficientStorage):
        store.stage(snap, [store.DiskFile("a", a, "qcow2"), store.DiskFile("b", b, "qcow2")], reserve=1 << 62)
    assert sorted(p.name for p in vdir.iterdir()) == ["a.qcow2", "b.qcow2", "snapshots"]


def test_snapshot_names_never_leave_the_snapshots_directory(tmp_path):
    for bad in ("", "../x", ".hidden", "a/b", "a\0b"):
        with pytest.raises(StorageError):
            store.snapshot_dir("ns", "web", bad, tmp_path)
