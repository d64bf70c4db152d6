"""Node-local VM disk storage: pure planning (spec -> qemu-img argv) plus a small idempotent executor.

Layout, all under one storage root (Settings.storage_root: ``K3SVIRT_STORAGE_ROOT``, default
``/var/lib/k3svirt``)::

    <root>/images/<sha256(url)>.img (+ .json sidecar, .lock)   shared base-image cache (image_cache.py)
    <root>/vms/<namespace>/<name>/<disk>.qcow2|.raw             disks we create
    <root>/vms/<namespace>/<name>/seed.iso                      NoCloud seed (cloudinit.py)
    <root>/vms/<namespace>/<name>/console.log                   serial console log (written by libvirt)

Permissions (the choice, documented): we do NOT depend on libvirt's ``dynamic_ownership`` but stay
compatible with it. Directories are 0755 (root, images/, vms/, vms/<ns>/) and 0711 for a VM dir
(QEMU can traverse to the files it is given, other users cannot list them). Disks we create are
0660 and chowned to the QEMU user (``K3SVIRT_QEMU_USER``, default ``libvirt-qemu``, group ``kvm``)
when that user exists and we run as root; otherwise they stay root-owned and libvirt's
``dynamic_ownership`` (on by default) relabels them at domain start. Cached base images are 0644
root-owned: QEMU only ever opens them read-only as backing files, so a guest can never write them.

Sizes: quantities are parsed to bytes and rounded UP to a multiple of 512 (qemu-img does the same;
we do it in the plan so the argv is exact).
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from k3svirt_common.quantity import parse_quantity

from . import image_cache
from .filelock import locked
from .hostfs import (
    QEMU_IMG,
    QEMU_IMG_TIMEOUT,
    InsufficientStorage,
    StorageError,
    ensure_dir,
    qemu_img_info,
    run_qemu_img,
)
from .image_fetch import FetchPolicy

log = logging.getLogger(__name__)

DEFAULT_STORAGE_ROOT = "/var/lib/k3svirt"

VM_DIR_MODE = 0o711
DISK_MODE = 0o660

THICK_PREALLOCATION = "full"  # CRD: thick = "preallocation full unless qcow2.preallocation says otherwise"


class StorageSpecError(ValueError):
    """The disk spec is invalid; the message starts with the offending field path."""


@dataclass(frozen=True)
class SpaceRules:
    """What one VM author may take from the node's disk (the node admin sets these)."""

    max_disk_bytes: int = 4 << 40  # K3SVIRT_DISK_MAX_BYTES, one disk's virtual size
    reserve_bytes: int = 2 << 30  # K3SVIRT_STORAGE_RESERVE_BYTES, free space never handed out


@dataclass(frozen=True)
class QemuOwner:
    """Who our disks are handed to (see the module doc): K3SVIRT_QEMU_USER, K3SVIRT_QEMU_GROUP."""

    user: str = "libvirt-qemu"
    group: str = "kvm"


def bytes_written_now(plan: DiskPlan) -> int:
    """Bytes creating the disk allocates at once: its size when preallocated, the image for a copy;
    thin disks and overlays start (almost) empty and grow as the guest writes."""
    virtual = plan.size or (plan.base.virtual_size if plan.base is not None else 0)
    if plan.preallocation in ("falloc", "full"):
        return virtual
    if plan.kind == "image" and plan.image is not None and plan.image.clone == "copy":
        return plan.base.virtual_size if plan.base is not None else virtual
    return 0


def check_space(plan: DiskPlan, root: Path, rules: SpaceRules) -> None:
    fp = f"spec.disks[{plan.index}]"
    virtual = plan.size or (plan.base.virtual_size if plan.base is not None else 0)
    if virtual > rules.max_disk_bytes:
        raise InsufficientStorage(
            f"{fp}.size: {virtual} bytes is more than this node allows for one disk "
            f"({rules.max_disk_bytes} bytes, K3SVIRT_DISK_MAX_BYTES)"
        )
    need = bytes_written_now(plan)
    free = shutil.disk_usage(root).free
    if free - need < rules.reserve_bytes:
        raise InsufficientStorage(
            f"{fp}: creating it needs {need} bytes now, the node's storage has {free} bytes free and keeps "
            f"{rules.reserve_bytes} in reserve (K3SVIRT_STORAGE_RESERVE_BYTES); it is retried when space returns"
        )


# ---------------------------------------------------------------------------------------------
# quantities
def quantity_bytes(value: Any, field_path: str) -> int:
    """A k8s quantity (``"10Gi"``) in bytes; the CRD's pattern and rules have checked its form."""
    try:
        return parse_quantity(value, field=field_path)
    except ValueError as e:
        raise StorageSpecError(str(e)) from e


def _round512(n: int) -> int:
    return (n + 511) // 512 * 512


# ---------------------------------------------------------------------------------------------
# paths
def _check_component(value: str, what: str) -> str:
    if not value or "/" in value or value in (".", "..") or "\0" in value:
        raise StorageSpecError(f"{what}: invalid path component {value!r}")
    return value


def vm_dir(namespace: str, name: str, root: Path) -> Path:
    vms = Path(root) / "vms"
    return vms / _check_component(namespace, "metadata.namespace") / _check_component(name, "metadata.name")


def seed_path(namespace: str, name: str, root: Path) -> Path:
    return vm_dir(namespace, name, root) / "seed.iso"


def console_log_path(namespace: str, name: str, root: Path) -> Path:
    return vm_dir(namespace, name, root) / "console.log"


# ---------------------------------------------------------------------------------------------
# plan
@dataclass(frozen=True)
class ImageRef:
    url: str
    checksum: str | None  # "sha256:<hex>" or None
    clone: str  # overlay | copy


@dataclass(frozen=True)
class BaseImage:
    """What planning needs to know about a cached base image (image_cache.CachedImage satisfies it)."""

    path: Path
    format: str
    virtual_size: int


@dataclass(frozen=True)
class DiskPlan:
    index: int
    name: str
    kind: str  # blank | image | volume
    path: Path  # final disk path (the volume path itself for kind == volume)
    format: str | None  # None only for a volume whose format is detected at execution
    size: int | None  # bytes, rounded up to 512; None = take it from the image
    tmp_path: Path | None  # commands write here; renamed to `path` on success (None for volumes)
    commands: tuple[tuple[str, ...], ...]  # exact qemu-img argvs; empty for volumes / unresolved images
    image: ImageRef | None = None
    base: BaseImage | None = None  # resolved cached image (image kind only)
    preallocation: str = "off"
    options: str = ""  # the qemu-img -o string for disks we create
    compressed: bool = False  # qcow2.compression: the image's data is written as compressed clusters
    owned: bool = True  # False for volumes: never created, never deleted by us

    @property
    def needs_image(self) -> bool:
        """True when this is an image disk whose base image is not resolved yet (commands empty)."""
        return self.kind == "image" and self.base is None

    def with_base(self, base: BaseImage) -> DiskPlan:
        """Return the plan with the base image resolved and the exact commands filled in."""
        if self.kind != "image" or self.image is None:
            return self
        commands = _image_commands(self, base)
        return replace(self, base=base, commands=commands)


@dataclass(frozen=True)
class DiskResult:
    name: str
    path: Path
    format: str
    created: bool  # True if created by this call, False if it already existed (or is a volume)
    kind: str
    virtual_size: int | None = None
    actual_size: int | None = None
    backing_file: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    grow_to: int | None = None  # spec.disks[].size grew past the existing disk's virtual size
    index: int = 0


def _qcow2_opts(cluster_size: int, preallocation: str, lazy: bool) -> str:
    return f"cluster_size={cluster_size},preallocation={preallocation},lazy_refcounts={'on' if lazy else 'off'}"


def plan_disks(
    namespace: str,
    name: str,
    disks: Sequence[Mapping[str, Any]] | None,
    root: Path,
    images: Mapping[str, BaseImage] | None = None,
) -> list[DiskPlan]:
    """One DiskPlan per disk of a validated ``spec.disks`` (pure: no filesystem access).

    ``images`` maps image URLs to already-cached base images; image disks whose URL is not in it
    come back with ``needs_image`` True and empty ``commands`` (``ensure_disks`` resolves them, or
    call ``plan.with_base(image_cache.ensure_image(...))`` yourself).
    """
    root = Path(root)
    images = images or {}
    vdir = vm_dir(namespace, name, root)
    plans: list[DiskPlan] = []
    for i, disk in enumerate(disks or []):
        plans.append(_plan_one(i, f"spec.disks[{i}]", disk["name"], disk, vdir, root, images))
    return plans


def _source_kind(disk: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    """The disk's one source (the CRD allows exactly one); a disk without a source is blank."""
    source = disk.get("source") or {}
    kind = next((k for k in ("blank", "image", "volume") if k in source), "blank")
    return kind, source.get(kind) or {}


def _plan_one(
    i: int,
    fp: str,
    dname: str,
    disk: Mapping[str, Any],
    vdir: Path,
    root: Path,
    images: Mapping[str, BaseImage],
) -> DiskPlan:
    """The plan of one disk of a spec the CRD schema has validated (templates.validate_merged): field
    types, enums, patterns and the combinations of fields are its rules; only what depends on this
    node is checked here (the storage root, the image's size, sizes as bytes)."""
    kind, body = _source_kind(disk)
    fmt_given = disk.get("format")
    prov = disk.get("provisioning")
    size = _round512(quantity_bytes(disk["size"], f"{fp}.size")) if disk.get("size") is not None else None

    if kind == "volume":
        p = Path(os.path.normpath(body["path"]))
        if p == root or root in p.parents:
            raise StorageSpecError(f"{fp}.source.volume.path: must not be inside the k3svirt storage root {root}")
        return DiskPlan(
            index=i,
            name=dname,
            kind="volume",
            path=p,
            format=fmt_given,
            size=None,
            tmp_path=None,
            commands=(),
            owned=False,
        )

    fmt = fmt_given or "qcow2"
    clone = None
    image = None
    if kind == "image":
        checksum = body.get("checksum")
        clone = body.get("clone") or "overlay"
        image = ImageRef(url=body["url"], checksum=checksum.lower() if checksum else None, clone=clone)

    q = disk.get("qcow2") or {}
    cluster = quantity_bytes(q["clusterSize"], f"{fp}.qcow2.clusterSize") if q.get("clusterSize") else 65536
    lazy = bool(q.get("lazyRefcounts", False))
    compression = q.get("compression")
    if compression is not None and (kind != "image" or clone != "copy" or fmt != "qcow2"):
        # The CRD refuses this too; a merged template could still bring it to a blank disk.
        raise StorageSpecError(
            f"{fp}.qcow2.compression: only for a qcow2 disk copied from an image (source.image.clone: copy); "
            f"the guest's own writes are never compressed by qcow2"
        )
    prealloc = q.get("preallocation")
    if prealloc is None:  # an explicit qcow2.preallocation wins over provisioning (CRD contract)
        prealloc = THICK_PREALLOCATION if prov == "thick" else "off"
    # An overlay can keep metadata preallocation (the shipped presets preset-secure/-desktop ask for
    # it in diskDefaults) only with qcow2 subclusters (extended_l2, clusters >= 16 KiB): qemu-img
    # refuses a backing file with preallocation otherwise. Data preallocation (thick) stays refused:
    # it would reserve the whole disk while reads still come from the image.
    extended_l2 = clone == "overlay" and prealloc == "metadata" and cluster >= 16384
    if clone == "overlay" and prealloc != "off" and not extended_l2:
        field_name = "qcow2.preallocation" if q.get("preallocation") is not None else "provisioning"
        raise StorageSpecError(
            f"{fp}.{field_name}: preallocation {prealloc} is not possible for an overlay on a backing image "
            f"(metadata needs qcow2.clusterSize >= 16Ki; use source.image.clone: copy for a thick disk)"
        )

    ext = fmt
    path = vdir / f"{dname}.{ext}"
    tmp = vdir / f".{dname}.{ext}.tmp"
    opts = _qcow2_opts(cluster, prealloc, lazy) if fmt == "qcow2" else f"preallocation={prealloc}"
    if extended_l2:
        opts += ",extended_l2=on"
    if compression is not None:
        if prealloc != "off":
            raise StorageSpecError(f"{fp}.qcow2.compression: cannot be combined with preallocation {prealloc}")
        opts += f",compression_type={compression}"
    plan = DiskPlan(
        index=i,
        name=dname,
        kind=kind,
        path=path,
        format=fmt,
        size=size,
        tmp_path=tmp,
        commands=(),
        image=image,
        preallocation=prealloc,
        options=opts,
        compressed=compression is not None,
    )
    if kind == "blank":
        assert size is not None
        return replace(plan, commands=((QEMU_IMG, "create", "-q", "-f", fmt, "-o", opts, str(tmp), str(size)),))
    assert image is not None
    base = images.get(image.url)
    return plan.with_base(base) if base is not None else plan


def _image_commands(plan: DiskPlan, base: BaseImage) -> tuple[tuple[str, ...], ...]:
    fp = f"spec.disks[{plan.index}]"
    assert plan.image is not None and plan.tmp_path is not None and plan.format is not None
    opts = plan.options
    if plan.size is not None and plan.size < base.virtual_size:
        raise StorageSpecError(
            f"{fp}.size: {plan.size} bytes is smaller than the image's virtual size "
            f"{base.virtual_size} bytes (disks are never shrunk)"
        )
    tmp = str(plan.tmp_path)
    if plan.image.clone == "overlay":
        cmd = [
            QEMU_IMG,
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            base.format,
            "-b",
            str(base.path),
            "-o",
            opts,
            tmp,
        ]
        if plan.size is not None:
            cmd.append(str(plan.size))
        return (tuple(cmd),)
    compress = ("-c",) if plan.compressed else ()
    cmds: list[tuple[str, ...]] = [
        (QEMU_IMG, "convert", "-q", *compress, "-f", base.format, "-O", plan.format, "-o", opts, str(base.path), tmp)
    ]
    if plan.size is not None and plan.size > base.virtual_size:
        cmds.append(
            (
                QEMU_IMG,
                "resize",
                "-q",
                "-f",
                plan.format,
                f"--preallocation={plan.preallocation}",
                tmp,
                str(plan.size),
            )
        )
    return tuple(cmds)


# ---------------------------------------------------------------------------------------------
# execution
def _qemu_ids(owner: QemuOwner) -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam(owner.user)
    except KeyError:
        return None
    gid = pw.pw_gid
    with contextlib.suppress(KeyError):
        gid = grp.getgrnam(owner.group).gr_gid
    return pw.pw_uid, gid


def give_to_qemu(path: Path, mode: int = DISK_MODE, *, owner: QemuOwner) -> None:
    """chmod the file and chown it to the QEMU user when possible (see module doc)."""
    os.chmod(path, mode)
    ids = _qemu_ids(owner)
    if ids is not None:
        os.chown(path, *ids)


class StorageOwnedByAnotherVM(StorageError):
    """The VM's directory holds the retained disks of an earlier VM of the same name."""


OWNER_FILE = ".owner-uid"


def ensure_vm_dir(namespace: str, name: str, root: Path, uid: str | None = None, adopt: str | None = None) -> Path:
    """The VM's storage directory, owned by the VM ``uid``. Disks retained from an earlier VM of the
    same name (deletionPolicy Retain) are never reused silently: they are taken over only when the
    new VM names the old uid in ``adopt`` (annotation k3svirt.io/adopt-retained-storage)."""
    root = Path(root)
    ensure_dir(root)
    ensure_dir(root / "vms")
    d = vm_dir(namespace, name, root)
    ensure_dir(d.parent)
    ensure_dir(d, VM_DIR_MODE)
    if uid is None:
        return d
    owner_file = d / OWNER_FILE
    try:
        owner = owner_file.read_text().strip()
    except FileNotFoundError:
        owner = ""
    if owner and owner != uid:
        if adopt != owner:
            raise StorageOwnedByAnotherVM(
                f"{d} holds the retained disks of an earlier VM {namespace}/{name} (uid {owner}); they are "
                f"not reused silently: delete them on the node, or annotate this VM "
                f"k3svirt.io/adopt-retained-storage={owner} to take them over"
            )
        log.info("retained storage adopted", extra={"dir": str(d), "from": owner, "to": uid})
    if owner != uid:
        tmp = d / f"{OWNER_FILE}.tmp"
        tmp.write_text(uid + "\n")
        os.rename(tmp, owner_file)
    return d


ImageFetcher = Callable[[str, "str | None", Path], BaseImage]


def _default_fetcher(url: str, checksum: str | None, root: Path) -> BaseImage:
    return image_cache.ensure_image(url, checksum, root, FetchPolicy())  # the node defaults


def ensure_disks(
    plans: Sequence[DiskPlan],
    root: Path,
    fetch_image: ImageFetcher | None = None,
    timeout: float = QEMU_IMG_TIMEOUT,
    space: SpaceRules | None = None,
    owner: QemuOwner | None = None,
) -> list[DiskResult]:
    """Create the disks that don't exist yet; never touch an existing disk. Idempotent.

    Image disks with unresolved bases are resolved via ``fetch_image(url, checksum, root)``
    (default: ``image_cache.ensure_image``), only if the disk file does not exist yet.
    Creation goes to ``<vmdir>/.<disk>.<fmt>.tmp`` and is renamed into place on success, so a
    crash never leaves a half-written disk under the final name.
    """
    root = Path(root)
    fetch = fetch_image or _default_fetcher
    results: list[DiskResult] = []
    for plan in plans:
        if plan.kind == "volume":
            results.append(_check_volume(plan))
            continue
        vdir = plan.path.parent
        ensure_dir(root)
        ensure_dir(root / "vms")
        ensure_dir(vdir.parent)
        ensure_dir(vdir, VM_DIR_MODE)
        with locked(vdir / ".lock"):
            if plan.path.exists():
                grow = grow_needed(plan, virtual_size(plan.path, plan.format or ""))
                results.append(DiskResult(plan.name, plan.path, plan.format or "", False, plan.kind, index=plan.index,
                                          grow_to=grow, extra={"preallocation": plan.preallocation}))  # fmt: skip
                continue
            if plan.needs_image:
                assert plan.image is not None
                plan = plan.with_base(fetch(plan.image.url, plan.image.checksum, root))
            assert plan.tmp_path is not None and plan.format is not None
            plan.tmp_path.unlink(missing_ok=True)  # leftover of an interrupted attempt
            check_space(plan, vdir, space or SpaceRules())
            try:
                for argv in plan.commands:
                    run_qemu_img(argv, timeout=timeout)
                give_to_qemu(plan.tmp_path, owner=owner or QemuOwner())
                os.rename(plan.tmp_path, plan.path)
            except BaseException:
                plan.tmp_path.unlink(missing_ok=True)
                raise
            log.info("created disk", extra={"disk": plan.name, "path": str(plan.path), "kind": plan.kind})
            results.append(
                DiskResult(
                    plan.name,
                    plan.path,
                    plan.format,
                    True,
                    plan.kind,
                    backing_file=str(plan.base.path)
                    if plan.base and plan.image and plan.image.clone == "overlay"
                    else None,
                )
            )
    return results


def virtual_size(path: Path, fmt: str) -> int | None:
    """The virtual size of a disk we created, read without a subprocess (every pass asks): the qcow2
    header's size field (QEMU writes the header, the guest only the data), a raw file's length."""
    try:
        if fmt == "qcow2":
            with open(path, "rb") as fh:
                head = fh.read(32)
            if len(head) < 32 or head[:4] != b"QFI\xfb":
                return None
            return int.from_bytes(head[24:32], "big")
        return path.stat().st_size
    except OSError:
        return None


def grow_needed(plan: DiskPlan, current: int | None) -> int | None:
    """The size to grow an existing disk to, None when it has it; shrinking is refused (data loss)."""
    if plan.size is None or current is None or plan.size == current:
        return None
    if plan.size < current:
        raise StorageSpecError(
            f"spec.disks[{plan.index}].size: {plan.size} bytes is smaller than the disk's current "
            f"{current} bytes; disks are only ever grown (shrinking would cut off guest data)"
        )
    return plan.size


def grow_offline(result: DiskResult, size: int, preallocation: str = "off", timeout: float = QEMU_IMG_TIMEOUT) -> None:
    """Grows a disk no running domain has open (qemu-img resize; a live one: domains.grow_disk)."""
    argv = (QEMU_IMG, "resize", "-q", "-f", result.format, f"--preallocation={preallocation}",
            str(result.path), str(size))  # fmt: skip
    run_qemu_img(argv, timeout=timeout)


def _check_volume(plan: DiskPlan) -> DiskResult:
    fp = f"spec.disks[{plan.index}].source.volume.path"
    if not plan.path.exists():
        raise StorageError(f"{fp}: {plan.path} does not exist on this node")
    if not (plan.path.is_file() or plan.path.is_block_device()):
        raise StorageError(f"{fp}: {plan.path} is not a regular file or block device")
    # Never probed: the guest writes this file, and a qcow2 header it wrote into a raw volume (naming
    # a backing file) would otherwise hand it a host file at the next define. No format means raw.
    fmt = plan.format or "raw"
    try:
        info = qemu_img_info(plan.path, fmt)
    except StorageError as e:
        raise StorageError(f"{fp}: {plan.path} is not a usable {fmt} volume: {e}") from e
    if info.get("backing-filename") or ((info.get("format-specific") or {}).get("data") or {}).get("data-file"):
        raise StorageError(f"{fp}: {plan.path} refers to other files (backing or data file); refusing to use it")
    return DiskResult(
        plan.name,
        plan.path,
        fmt,
        False,
        "volume",
        virtual_size=info.get("virtual-size"),
        actual_size=info.get("actual-size"),
        backing_file=info.get("backing-filename"),
    )


def remove_vm_storage(namespace: str, name: str, root: Path, keep: bool = False) -> bool:
    """Delete ``vms/<ns>/<name>/`` (our disks, seed.iso, console.log) unless ``keep``.

    Never touches volume sources (they live outside the storage root, enforced by plan_disks)
    nor the shared image cache. Returns True if something was removed. Removes the namespace
    dir too when it becomes empty.
    """
    d = vm_dir(namespace, name, root)
    if keep:
        log.info("retaining VM storage", extra={"path": str(d)})
        return False
    if not d.exists() and not d.is_symlink():
        return False
    if d.is_symlink() or not d.is_dir():
        raise StorageError(f"{d} is not a directory; refusing to delete it")
    shutil.rmtree(d)
    with contextlib.suppress(OSError):
        d.parent.rmdir()  # only succeeds if empty
    log.info("removed VM storage", extra={"path": str(d)})
    return True
