"""Snapshot files on the node: full copies of a VM's disks under the VM's own directory.

    <root>/vms/<ns>/<vm>/snapshots/<snapshot>/<disk>.qcow2|.raw   one copy per disk
    <root>/vms/<ns>/<vm>/snapshots/<snapshot>/snapshot.json       which object (uid) and disks it holds
    <root>/vms/<ns>/<vm>/snapshots/.<snapshot>.tmp/               a copy under way (renamed when complete)

A copy is the disk file itself, sparse (`cp --sparse=always`): an overlay's copy is an overlay on the
same cached base image (the image cache's GC counts it as a user), a raw disk's holes stay holes. The
directory is renamed into place only when every disk is copied, so a snapshot is whole or absent.
A restore copies the snapshot's files next to the VM's disks first and renames them over the disks
only when every copy succeeded: a failed restore leaves the previous disks as they were.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import shutdown
from .hostfs import StorageError, ensure_dir
from .storage import DISK_MODE, VM_DIR_MODE, InsufficientStorage, QemuOwner, give_to_qemu, virtual_size, vm_dir

log = logging.getLogger(__name__)

CP = "cp"
COPY_TIMEOUT = 6 * 3600.0  # a 4 TiB disk at ~200 MB/s; the operator's stop kills it sooner
META = "snapshot.json"
PAUSED_MARK = ".paused-by-k3svirt"  # in the tmp dir while we hold the guest paused (crash recovery)


@dataclass(frozen=True)
class DiskFile:
    name: str
    path: Path
    format: str


@dataclass(frozen=True)
class CopiedDisk:
    name: str
    format: str
    size_bytes: int
    virtual_size_bytes: int | None


def snapshots_dir(namespace: str, vm: str, root: Path) -> Path:
    return vm_dir(namespace, vm, root) / "snapshots"


def snapshot_dir(namespace: str, vm: str, snapshot: str, root: Path) -> Path:
    return snapshots_dir(namespace, vm, root) / _component(snapshot)


def tmp_dir(namespace: str, vm: str, snapshot: str, root: Path) -> Path:
    return snapshots_dir(namespace, vm, root) / f".{_component(snapshot)}.tmp"


def _component(name: str) -> str:
    if not name or "/" in name or name.startswith(".") or "\0" in name:
        raise StorageError(f"invalid snapshot name {name!r}")
    return name


def allocated(path: Path) -> int:
    """Bytes a file really occupies (its blocks), what deleting it gives back."""
    try:
        return path.stat().st_blocks * 512
    except OSError:
        return 0


def dir_size(path: Path) -> int:
    return sum(allocated(p) for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def copy_file(src: Path, dst: Path) -> None:
    """A sparse copy of one disk file (cp keeps holes; qemu-img would need the image lock QEMU holds)."""
    try:
        proc = shutdown.run([CP, "--sparse=always", "--", str(src), str(dst)], timeout=COPY_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise StorageError(f"copying {src} timed out") from exc
    if proc.returncode != 0:
        raise StorageError(f"copying {src} to {dst} failed: {(proc.stderr or '').strip()}")


def check_room(need: int, where: Path, reserve: int) -> None:
    """The copies must not eat the node's free-space reserve (K3SVIRT_STORAGE_RESERVE_BYTES)."""
    free = shutil.disk_usage(where).free
    if free - need < reserve:
        raise InsufficientStorage(
            f"the copy needs {need} bytes, the node's storage has {free} bytes free and keeps {reserve} in reserve "
            f"(K3SVIRT_STORAGE_RESERVE_BYTES)"
        )


def read_meta(directory: Path) -> dict | None:
    try:
        return json.loads((directory / META).read_text())
    except (OSError, ValueError):
        return None


def begin(namespace: str, vm: str, snapshot: str, root: Path) -> Path:
    """A fresh, empty tmp directory for a snapshot's copies (a leftover of a crash is removed)."""
    parent = snapshots_dir(namespace, vm, root)
    ensure_dir(parent, VM_DIR_MODE)
    tmp = tmp_dir(namespace, vm, snapshot, root)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(mode=VM_DIR_MODE)
    return tmp


def copy_disks(disks: Sequence[DiskFile], into: Path) -> list[CopiedDisk]:
    """Copies every disk into `into` (the tmp dir); the guest must be paused or off meanwhile."""
    out = []
    for disk in disks:
        dst = into / disk.path.name
        copy_file(disk.path, dst)
        os.chmod(dst, 0o600)  # a snapshot is never opened by QEMU until it is restored
        out.append(CopiedDisk(disk.name, disk.format, allocated(dst), virtual_size(dst, disk.format)))
    return out


def commit(namespace: str, vm: str, snapshot: str, root: Path, uid: str, disks: Sequence[CopiedDisk]) -> Path:
    """Records what the tmp dir holds and renames it into place (replacing an older one of the name)."""
    tmp = tmp_dir(namespace, vm, snapshot, root)
    meta = {"uid": uid, "disks": [{"name": d.name, "format": d.format} for d in disks]}
    (tmp / META).write_text(json.dumps(meta))
    (tmp / PAUSED_MARK).unlink(missing_ok=True)
    final = snapshot_dir(namespace, vm, snapshot, root)
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    return final


def remove(path: Path) -> int:
    """Deletes a snapshot directory; returns the bytes given back."""
    if path.is_symlink() or not path.is_dir():
        return 0
    size = dir_size(path)
    shutil.rmtree(path)
    log.info("snapshot removed", extra={"path": str(path), "bytes": size})
    return size


def list_dirs(namespace: str, vm: str, root: Path) -> list[str]:
    parent = snapshots_dir(namespace, vm, root)
    try:
        return sorted(p.name for p in parent.iterdir() if p.is_dir() and not p.is_symlink())
    except OSError:
        return []


def stage(snapshot: Path, disks: Sequence[DiskFile], reserve: int) -> list[tuple[Path, Path]]:
    """Copies the snapshot's files next to the target disks (`.<file>.restore`), nothing replaced yet.
    Returns (staged, final) pairs; on any failure every staged file is removed and the error raised."""
    pairs = [(d.path.parent / f".{d.path.name}.restore", d.path) for d in disks]
    sources = [snapshot / d.path.name for d in disks]
    for src in sources:
        if not src.is_file():
            raise StorageError(f"the snapshot's file {src.name} is missing on this node")
    try:
        for d in disks:
            ensure_dir(d.path.parent, VM_DIR_MODE)
        check_room(sum(allocated(s) for s in sources), disks[0].path.parent, reserve)
        for src, (staged, _) in zip(sources, pairs, strict=True):
            staged.unlink(missing_ok=True)
            copy_file(src, staged)
    except BaseException:
        discard(pairs)
        raise
    return pairs


def discard(pairs: Sequence[tuple[Path, Path]]) -> None:
    for staged, _ in pairs:
        staged.unlink(missing_ok=True)


def swap_in(pairs: Sequence[tuple[Path, Path]], owner: QemuOwner) -> None:
    """Moves staged copies over the disks (each rename is atomic; the domain is off meanwhile)."""
    for staged, _ in pairs:
        give_to_qemu(staged, DISK_MODE, owner=owner)
    for staged, final in pairs:
        os.rename(staged, final)
