"""Carries out the snapshots and restores of one VM, inside that VM's loop (so no reconcile pass runs
meanwhile): take pending snapshots, perform pending restores, return the space of deleted ones.

Decisions are snapshots.py's (pure), files snapshot_store.py's; this module orders the steps, talks to
libvirt through domains.py and writes the objects' status through the callables it is given.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import libvirt
from k3svirt_common import names, templates
from k3svirt_common.kube import ApiError

from . import domains, shutdown, storage
from . import snapshot_store as store
from .config import Settings
from .hostfs import StorageError
from .libvirt_conn import LibvirtConnection
from .snapshots import (
    Refusal,
    RestorePhase,
    SnapPhase,
    clone_object,
    human_size,
    orphaned,
    plan_restore,
    refusal,
    restore_needs_work,
    restore_status,
    snapshot_needs_work,
    snapshot_status,
)
from .vm_reconciler import Event, stop_grace_seconds

log = logging.getLogger(__name__)

StatusWriter = Callable[[str, str, str, Mapping[str, Any]], None]  # (plural, namespace, name, status)
VMGetter = Callable[[str, str], Mapping[str, Any] | None]
VMCreator = Callable[[Mapping[str, Any]], None]
TemplateGetter = Callable[[str, str], Mapping[str, Any] | None]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Posted:
    """An Event to post on a snapshot or restore object."""

    obj: Mapping[str, Any]
    event: Event


class SnapshotWorker:
    def __init__(self, settings: Settings, conn: LibvirtConnection, get_template: TemplateGetter,
                 write_status: StatusWriter, get_vm: VMGetter, create_vm: VMCreator) -> None:  # fmt: skip
        self.settings = settings
        self.conn = conn
        self.get_template = get_template
        self.write_status = write_status
        self.get_vm = get_vm
        self.create_vm = create_vm

    @property
    def root(self) -> Path:
        return self.settings.storage_root

    @property
    def node(self) -> str:
        return self.settings.node_name

    # ------------------------------------------------------------------ one pass
    def process(self, vm: Mapping[str, Any], snaps: Sequence[Mapping[str, Any]],
                restores: Sequence[Mapping[str, Any]], busy: bool = False) -> list[Posted]:  # fmt: skip
        """One pass for the VM: deleted snapshots' files removed, pending snapshots taken, pending
        restores performed (not while a stop of the VM is under way: `busy`)."""
        meta = vm["metadata"]
        ns, name = meta["namespace"], meta["name"]
        posted: list[Posted] = []
        for gone in orphaned(store.list_dirs(ns, name, self.root), [s["metadata"]["name"] for s in snaps]):
            store.remove(store.snapshots_dir(ns, name, self.root) / gone)
        if meta.get("deletionTimestamp"):
            return posted
        for snap in snaps:
            if snapshot_needs_work(snap, self.node):
                self._guarded(lambda snap=snap: self._take(vm, snap, posted), snap)
        by_name = {s["metadata"]["name"]: s for s in snaps}
        for restore in restores:
            if restore_needs_work(restore, self.node) and not busy:
                snap = by_name.get((restore.get("spec") or {}).get("snapshotName"))
                self._guarded(lambda r=restore, s=snap: self._restore(vm, s, r, posted), restore)
        return posted

    @staticmethod
    def _guarded(work: Callable[[], None], obj: Mapping[str, Any]) -> None:
        """A status write the API server refuses (the object was deleted or changed meanwhile) must not
        stop the VM's loop; an API server that does not answer is the loop's to retry."""
        try:
            work()
        except ApiError as exc:
            if not exc.answered or exc.status >= 500 or exc.status == 429:
                raise
            meta = obj.get("metadata") or {}
            log.warning("snapshot/restore status not written",
                        extra={"object": f"{meta.get('namespace')}/{meta.get('name')}", "error": str(exc)})  # fmt: skip

    # ------------------------------------------------------------------ helpers
    def _expand(self, vm: Mapping[str, Any]) -> dict[str, Any]:
        ns, status = vm["metadata"]["namespace"], vm.get("status") or {}
        return templates.expand(
            vm.get("spec") or {},
            lambda n: self.get_template(ns, n),
            resolved_template=status.get("resolvedTemplate"),
            resolved_presets=status.get("resolvedPresets") or (),
        ).spec

    def _disks(self, ns: str, name: str, spec: Mapping[str, Any]) -> list[store.DiskFile]:
        plans = storage.plan_disks(ns, name, spec.get("disks") or [], self.root)
        return [store.DiskFile(p.name, p.path, p.format or "qcow2") for p in plans if p.owned]

    def _snap_write(self, snap: Mapping[str, Any], phase: SnapPhase, reason: str, message: str,
                    posted: list[Posted] | None = None, warning: bool = False, **fields: Any) -> None:  # fmt: skip
        meta = snap["metadata"]
        status = snapshot_status(phase, self.node, reason, message, old=snap.get("status"), **fields)
        self.write_status(names.VMSNAPSHOT_PLURAL, meta["namespace"], meta["name"], status)
        if posted is not None:
            posted.append(Posted(snap, Event("Warning" if warning else "Normal", reason, message)))

    def _restore_write(self, restore: Mapping[str, Any], phase: RestorePhase, reason: str, message: str,
                       posted: list[Posted] | None = None, warning: bool = False, **fields: Any) -> None:  # fmt: skip
        meta = restore["metadata"]
        status = restore_status(phase, self.node, reason, message, old=restore.get("status"), **fields)
        self.write_status(names.VMRESTORE_PLURAL, meta["namespace"], meta["name"], status)
        if posted is not None:
            posted.append(Posted(restore, Event("Warning" if warning else "Normal", reason, message)))

    # ------------------------------------------------------------------ snapshot
    def _take(self, vm: Mapping[str, Any], snap: Mapping[str, Any], posted: list[Posted]) -> None:
        meta = vm["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        sname, suid = snap["metadata"]["name"], snap["metadata"]["uid"]
        try:
            spec = self._expand(vm)
            refused = refusal(spec)
            if refused is None:
                disks = self._disks(ns, name, spec)
                if not disks:
                    refused = Refusal("NoDisks", "spec.disks: the VM has no disk the operator created")
        except (templates.TemplateError, storage.StorageSpecError) as exc:
            refused = Refusal("InvalidSpec", str(exc))
        if refused is not None:
            self._snap_write(snap, SnapPhase.FAILED, refused.reason, refused.message, posted, warning=True)
            return
        if not all(d.path.exists() for d in disks):
            if (snap.get("status") or {}).get("phase") is None:
                self._snap_write(snap, SnapPhase.PENDING, "WaitingForDisks", "the VM's disks are not created yet")
            return
        final = store.snapshot_dir(ns, name, sname, self.root)
        done = store.read_meta(final)
        if done is not None and done.get("uid") == suid and (snap.get("status") or {}).get("sizeBytes"):
            return  # taken before a crash that lost nothing but this pass
        self._snap_write(snap, SnapPhase.IN_PROGRESS, "Copying", f"copying {len(disks)} disk(s)")
        dom = domains.find(self.conn.get(), ns, name, uid)
        self._resume_if_left_paused(dom, store.tmp_dir(ns, name, sname, self.root))
        try:
            tmp = store.begin(ns, name, sname, self.root)
            store.check_room(sum(store.allocated(d.path) for d in disks), tmp, self.settings.space.reserve_bytes)
            running = dom is not None and bool(dom.isActive())
            pause = running and dom.state()[0] != libvirt.VIR_DOMAIN_PAUSED
            created = _now()
            started = time.monotonic()
            if pause:
                (tmp / store.PAUSED_MARK).touch()
                dom.suspend()  # QEMU stops the vCPUs and flushes its block layer: the files are consistent
            try:
                copied = store.copy_disks(disks, tmp)
            finally:
                if pause:
                    dom.resume()
            paused_ms = int((time.monotonic() - started) * 1000) if pause else 0
            store.commit(ns, name, sname, self.root, suid, copied)
        except (StorageError, libvirt.libvirtError, OSError) as exc:
            shutil.rmtree(store.tmp_dir(ns, name, sname, self.root), ignore_errors=True)
            reason = "InsufficientStorage" if isinstance(exc, storage.InsufficientStorage) else "SnapshotFailed"
            message = exc.get_error_message() if isinstance(exc, libvirt.libvirtError) else str(exc)
            self._snap_write(snap, SnapPhase.FAILED, reason, f"the snapshot was not taken: {message}", posted, True)
            return
        size = sum(d.size_bytes for d in copied)
        consistency = "CrashConsistent" if running else "Stopped"
        message = f"{len(copied)} disk(s), {human_size(size)}; " + (
            f"crash-consistent, the guest was paused {paused_ms} ms" if running else "the VM was shut off"
        )
        self._snap_write(snap, SnapPhase.READY, "SnapshotTaken", message, posted, vmUID=uid, creationTime=created,
                         consistency=consistency, wasRunning=running, pausedMilliseconds=paused_ms, sizeBytes=size,
                         size=human_size(size), vmSpec=dict(spec),
                         disks=[{"name": d.name, "format": d.format, "sizeBytes": d.size_bytes,
                                 **({"virtualSizeBytes": d.virtual_size_bytes} if d.virtual_size_bytes else {})}
                                for d in copied])  # fmt: skip
        log.info(
            "snapshot taken", extra={"vm": f"{ns}/{name}", "snapshot": sname, "bytes": size, "pausedMs": paused_ms}
        )

    @staticmethod
    def _resume_if_left_paused(dom: libvirt.virDomain | None, tmp: Path) -> None:
        """An operator that died while it held the guest paused for a copy left the mark: resume it."""
        if dom is None or not (tmp / store.PAUSED_MARK).exists():
            return
        try:
            if dom.isActive() and dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                dom.resume()
        except libvirt.libvirtError as exc:
            log.warning("could not resume a guest left paused", extra={"error": exc.get_error_message()})

    # ------------------------------------------------------------------ restore
    def _restore(self, vm: Mapping[str, Any], snap: Mapping[str, Any] | None, restore: Mapping[str, Any],
                 posted: list[Posted]) -> None:  # fmt: skip
        meta = vm["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        try:
            spec = self._expand(vm)
            current = self._disks(ns, name, spec)
        except (templates.TemplateError, storage.StorageSpecError) as exc:
            self._restore_write(restore, RestorePhase.FAILED, "InvalidSpec", str(exc), posted, True)
            return
        target = ((restore.get("spec") or {}).get("target") or {}).get("name") or name
        exists = target != name and self.get_vm(ns, target) is not None
        plan = plan_restore(restore, snap, name, uid, [d.name for d in current], exists)
        if plan.refused is None and snap is not None and not plan.clone:
            formats = {d["name"]: d.get("format") for d in (snap.get("status") or {}).get("disks") or []}
            changed = [d.name for d in current if d.name in plan.disks and formats.get(d.name) != d.format]
            if changed:
                plan_refused = Refusal("DisksChanged", f"the format of disk(s) {', '.join(changed)} changed since")
                plan = type(plan)(plan.target, plan.clone, plan.disks, plan_refused)
        if plan.refused is not None or snap is None:
            refused = plan.refused or Refusal("SnapshotNotFound", "the snapshot is gone")
            self._restore_write(restore, RestorePhase.FAILED, refused.reason, refused.message, posted, True,
                                targetName=plan.target, completionTime=_now())  # fmt: skip
            return
        started = (restore.get("status") or {}).get("startTime") or _now()
        self._restore_write(restore, RestorePhase.IN_PROGRESS, "Restoring", f"restoring into {plan.target}",
                            targetName=plan.target, clone=plan.clone, startTime=started)  # fmt: skip
        snapdir = store.snapshot_dir(ns, name, snap["metadata"]["name"], self.root)
        try:
            if plan.clone:
                self._clone(snap, snapdir, plan.target, plan.disks)
                how = f"created VM {plan.target} from the snapshot"
            else:
                how = self._in_place(vm, spec, snapdir, [d for d in current if d.name in plan.disks])
        except (StorageError, libvirt.libvirtError, OSError, RestoreRefused) as exc:
            message = exc.get_error_message() if isinstance(exc, libvirt.libvirtError) else str(exc)
            reason = exc.reason if isinstance(exc, RestoreRefused) else "RestoreFailed"
            self._restore_write(restore, RestorePhase.FAILED, reason,
                                f"{message}; the target's previous disks are untouched", posted, True,
                                completionTime=_now())  # fmt: skip
            return
        self._restore_write(restore, RestorePhase.SUCCEEDED, "Restored", how, posted, targetName=plan.target,
                            clone=plan.clone, restoredDisks=list(plan.disks), completionTime=_now())  # fmt: skip
        log.info("restored", extra={"vm": f"{ns}/{name}", "target": plan.target, "snapshot": snap["metadata"]["name"]})

    def _in_place(self, vm: Mapping[str, Any], spec: Mapping[str, Any], snapdir: Path,
                  disks: Sequence[store.DiskFile]) -> str:  # fmt: skip
        """Stages the copies, stops the VM, swaps the disks in, starts it again if it ran."""
        meta = vm["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        pairs = store.stage(snapdir, disks, self.settings.space.reserve_bytes)
        try:
            dom = domains.find(self.conn.get(), ns, name, uid)
            was_running = dom is not None and bool(dom.isActive())
            if was_running:
                grace = stop_grace_seconds(spec, self.settings.stop_grace_seconds)
                domains.power_off(dom, grace, shutdown.stopping)
                shutdown.check(f"restoring {ns}/{name}")
            store.swap_in(pairs, self.settings.qemu_owner)
        except BaseException:
            store.discard(pairs)
            raise
        if was_running:
            domains.start(dom)
            return f"{len(disks)} disk(s) restored; the VM was stopped for it and started again"
        return f"{len(disks)} disk(s) restored into the stopped VM"

    def _clone(self, snap: Mapping[str, Any], snapdir: Path, target: str, disk_names: Sequence[str]) -> None:
        ns = snap["metadata"]["namespace"]
        tdir = storage.vm_dir(ns, target, self.root)
        if tdir.exists() and any(tdir.iterdir()):
            raise RestoreRefused("TargetStorageExists", f"the node still holds storage of an earlier VM {target!r} "
                                                        f"({tdir}); choose another name or remove it")  # fmt: skip
        formats = {d["name"]: d.get("format") or "qcow2" for d in snap["status"].get("disks") or []}
        disks = [store.DiskFile(n, tdir / f"{n}.{formats[n]}", formats[n]) for n in disk_names]
        tdir.mkdir(parents=True, exist_ok=True, mode=storage.VM_DIR_MODE)
        try:
            pairs = store.stage(snapdir, disks, self.settings.space.reserve_bytes)
            store.swap_in(pairs, self.settings.qemu_owner)
            try:
                self.create_vm(clone_object(snap, target, self.node, names.API_VERSION, names.VM_KIND))
            except ApiError as exc:
                reason = "TargetExists" if exc.status == 409 else "CloneNotCreated"
                raise RestoreRefused(reason, f"the VM {target!r} could not be created: {exc.message}") from exc
        except BaseException:
            shutil.rmtree(tdir, ignore_errors=True)  # ours: it was empty or absent before
            raise


class RestoreRefused(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
