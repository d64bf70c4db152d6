"""storage.py: planning (pure) and the executor against real qemu-img on tmp dirs."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from k3svirt_operator import storage
from k3svirt_operator.config import Settings
from k3svirt_operator.storage import (
    BaseImage,
    StorageError,
    StorageSpecError,
    ensure_disks,
    plan_disks,
    remove_vm_storage,
)

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img (qemu-utils) not installed")

MiB = 1024 * 1024


def info(path: Path) -> dict:
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", "-U", str(path)], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout)


def make_base(tmp_path: Path, fmt: str = "qcow2", size: str = "32M", marker: bytes | None = None) -> BaseImage:
    raw = tmp_path / "base-src.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(raw), size], check=True)
    if marker:
        with open(raw, "r+b") as f:
            f.write(marker)
    path = tmp_path / f"base.{fmt}"
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", fmt, str(raw), str(path)], check=True)
    return BaseImage(path=path, format=fmt, virtual_size=info(path)["virtual-size"])


def one(disk: dict, root: Path, images: dict | None = None) -> storage.DiskPlan:
    (plan,) = plan_disks("ns1", "vm1", [disk], root, images)
    return plan


# ----------------------------------------------------------------------------------------- planning
def test_plan_blank_qcow2_exact_argv(tmp_path: Path) -> None:
    plan = one({"name": "root", "size": "1Gi", "qcow2": {"clusterSize": "128Ki", "lazyRefcounts": True}}, tmp_path)
    vdir = tmp_path / "vms" / "ns1" / "vm1"
    assert plan.path == vdir / "root.qcow2"
    assert plan.format == "qcow2" and plan.kind == "blank" and plan.size == 1 << 30
    assert plan.commands == (
        (
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=131072,preallocation=off,lazy_refcounts=on",
            str(vdir / ".root.qcow2.tmp"),
            str(1 << 30),
        ),
    )


def test_plan_defaults_and_rounding(tmp_path: Path) -> None:
    plan = one({"name": "d", "size": "100M", "source": {"blank": {}}}, tmp_path)
    assert plan.size == 100_000_256  # 100M rounded up to a multiple of 512
    assert "-o" in plan.commands[0]
    assert plan.commands[0][plan.commands[0].index("-o") + 1] == (
        "cluster_size=65536,preallocation=off,lazy_refcounts=off"
    )


def test_plan_raw_thin_and_thick(tmp_path: Path) -> None:
    thin = one({"name": "a", "size": "1Gi", "format": "raw"}, tmp_path)
    thick = one({"name": "b", "size": "1Gi", "format": "raw", "provisioning": "thick"}, tmp_path)
    assert thin.path.name == "a.raw" and "preallocation=off" in thin.commands[0]
    assert "preallocation=full" in thick.commands[0]


def test_plan_thick_qcow2_explicit_preallocation_wins(tmp_path: Path) -> None:
    plan = one({"name": "a", "size": "1Gi", "provisioning": "thick", "qcow2": {"preallocation": "falloc"}}, tmp_path)
    assert plan.preallocation == "falloc"
    assert one({"name": "a", "size": "1Gi", "provisioning": "thick"}, tmp_path).preallocation == "full"


def test_plan_image_overlay_and_copy(tmp_path: Path) -> None:
    base = BaseImage(path=Path("/cache/abc.img"), format="raw", virtual_size=8 * MiB)
    url = "http://example.invalid/img.raw"
    images = {url: base}
    ov = one({"name": "root", "size": "16Mi", "source": {"image": {"url": url}}}, tmp_path, images)
    assert ov.commands == (
        (
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            "/cache/abc.img",
            "-o",
            "cluster_size=65536,preallocation=off,lazy_refcounts=off",
            str(ov.tmp_path),
            str(16 * MiB),
        ),
    )
    cp = one(
        {"name": "root", "size": "16Mi", "format": "raw", "source": {"image": {"url": url, "clone": "copy"}}},
        tmp_path,
        images,
    )
    assert cp.commands[0][:2] == ("qemu-img", "convert") and cp.commands[0][-2:] == (
        "/cache/abc.img",
        str(cp.tmp_path),
    )
    assert cp.commands[1] == (
        "qemu-img",
        "resize",
        "-q",
        "-f",
        "raw",
        "--preallocation=off",
        str(cp.tmp_path),
        str(16 * MiB),
    )
    # same size as the image: no resize step
    same = one({"name": "r", "size": "8Mi", "source": {"image": {"url": url, "clone": "copy"}}}, tmp_path, images)
    assert len(same.commands) == 1


def test_plan_image_unresolved_then_with_base(tmp_path: Path) -> None:
    plan = one(
        {"name": "root", "source": {"image": {"url": "file:///x.img", "checksum": "sha256:" + "A" * 64}}},
        tmp_path,
    )
    assert plan.needs_image and plan.commands == ()
    assert plan.image is not None and plan.image.checksum == "sha256:" + "a" * 64
    resolved = plan.with_base(BaseImage(Path("/c/x.img"), "qcow2", MiB))
    assert not resolved.needs_image and resolved.commands[0][-1] == str(plan.tmp_path)  # no size -> image size


def test_plan_volume(tmp_path: Path) -> None:
    plan = one({"name": "data", "source": {"volume": {"path": "/dev/../srv/data.img"}}}, tmp_path)
    assert plan.kind == "volume" and plan.path == Path("/srv/data.img") and not plan.owned
    assert plan.commands == () and plan.format is None


def test_plan_trusts_the_crd_and_checks_what_is_node_local(tmp_path: Path) -> None:
    """Field rules live in the CRD (common/tests/test_schema.py::test_disk_rules_live_in_the_crd pins
    them); the plan refuses what only the node knows: here, a volume inside its storage root."""
    with pytest.raises(StorageSpecError, match=r"spec.disks\[0\].source.volume.path: must not be inside"):
        plan_disks("ns", "vm", [{"name": "a", "source": {"volume": {"path": str(tmp_path / "vms/x")}}}], tmp_path)


@pytest.mark.parametrize(
    ("disk", "message"),
    [
        (
            {"name": "a", "provisioning": "thick", "source": {"image": {"url": "http://h/i"}}},
            "spec.disks[0].provisioning: preallocation full is not possible for an overlay",
        ),
        (
            {"name": "a", "qcow2": {"preallocation": "falloc"}, "source": {"image": {"url": "http://h/i"}}},
            "spec.disks[0].qcow2.preallocation: preallocation falloc is not possible for an overlay",
        ),
        (
            {
                "name": "a",
                "qcow2": {"preallocation": "metadata", "clusterSize": "8Ki"},
                "source": {"image": {"url": "http://h/i"}},
            },
            "metadata needs qcow2.clusterSize >= 16Ki",
        ),
    ],
)
def test_plan_refuses_a_preallocated_overlay(tmp_path: Path, disk: dict, message: str) -> None:
    with pytest.raises(StorageSpecError) as e:
        plan_disks("ns", "vm", [disk], tmp_path)
    assert message in str(e.value)


def test_plan_image_smaller_size_rejected(tmp_path: Path) -> None:
    url = "http://h/i"
    with pytest.raises(StorageSpecError, match=r"spec.disks\[0\].size: .* smaller than the image"):
        one(
            {"name": "a", "size": "1Mi", "source": {"image": {"url": url}}},
            tmp_path,
            {url: BaseImage(Path("/b"), "raw", 2 * MiB)},
        )


def test_bad_namespace_component(tmp_path: Path) -> None:
    with pytest.raises(StorageSpecError, match="metadata.namespace"):
        plan_disks("..", "vm", [], tmp_path)


# ----------------------------------------------------------------------------------------- execution
def test_blank_qcow2_options(tmp_path: Path) -> None:
    plans = plan_disks(
        "ns1",
        "vm1",
        [
            {"name": "a", "size": "64Mi", "qcow2": {"clusterSize": "4Ki", "lazyRefcounts": True}},
            {"name": "b", "size": "64Mi", "qcow2": {"clusterSize": "2Mi", "preallocation": "metadata"}},
            {"name": "c", "size": "16Mi", "provisioning": "thick"},
        ],
        tmp_path,
    )
    res = ensure_disks(plans, tmp_path)
    assert [r.created for r in res] == [True, True, True]
    a, b, c = (info(r.path) for r in res)
    assert a["format"] == "qcow2" and a["cluster-size"] == 4096 and a["virtual-size"] == 64 * MiB
    assert a["format-specific"]["data"]["lazy-refcounts"] is True
    assert b["cluster-size"] == 2 * MiB and b["format-specific"]["data"]["lazy-refcounts"] is False
    assert b["actual-size"] > info(res[0].path)["actual-size"]  # metadata preallocated
    assert c["actual-size"] >= 16 * MiB  # thick = preallocation full
    assert not list((tmp_path / "vms/ns1/vm1").glob(".*.tmp"))


def test_raw_thin_is_sparse_thick_is_allocated(tmp_path: Path) -> None:
    plans = plan_disks(
        "ns1",
        "vm1",
        [
            {"name": "thin", "size": "256Mi", "format": "raw"},
            {"name": "thick", "size": "64Mi", "format": "raw", "provisioning": "thick"},
        ],
        tmp_path,
    )
    thin, thick = ensure_disks(plans, tmp_path)
    ti, ki = info(thin.path), info(thick.path)
    assert ti["format"] == "raw" and ti["virtual-size"] == 256 * MiB
    assert thin.path.stat().st_blocks * 512 < MiB  # sparse
    assert ki["virtual-size"] == 64 * MiB
    assert thick.path.stat().st_blocks * 512 >= 64 * MiB * 0.99  # actual ~ virtual
    assert ki["format"] == "raw" and ki["virtual-size"] == 64 * MiB and ki["actual-size"] >= 64 * MiB * 0.99


def test_overlay_with_metadata_preallocation_uses_subclusters(tmp_path: Path) -> None:
    """What preset-secure/-desktop give an image root disk: a real overlay, metadata preallocated."""
    base = make_base(tmp_path, "qcow2", "8M", marker=b"BASEDATA")
    url = "http://h/base.qcow2"
    disk = {
        "name": "root",
        "source": {"image": {"url": url}},
        "qcow2": {"preallocation": "metadata", "clusterSize": "2Mi"},
    }
    (root,) = ensure_disks(plan_disks("ns1", "vm1", [disk], tmp_path, {url: base}), tmp_path)
    ri = info(root.path)
    assert ri["format"] == "qcow2" and ri["format-specific"]["data"]["extended-l2"] is True
    assert ri["backing-filename"] == str(base.path)
    out = tmp_path / "first-block.raw"
    subprocess.run(
        ["qemu-img", "dd", "-f", "qcow2", "-O", "raw", f"if={root.path}", f"of={out}", "bs=4096", "count=1"], check=True
    )
    assert out.read_bytes().startswith(b"BASEDATA")  # reads fall through to the image


def test_overlay_on_base(tmp_path: Path) -> None:
    base = make_base(tmp_path, "qcow2", "8M", marker=b"BASEDATA")
    url = "http://h/base.qcow2"
    plans = plan_disks(
        "ns1",
        "vm1",
        [
            {
                "name": "root",
                "size": "32Mi",
                "source": {"image": {"url": url}},
                "qcow2": {"lazyRefcounts": True},
            },
            {"name": "same", "source": {"image": {"url": url, "clone": "overlay"}}},
        ],
        tmp_path,
        {url: base},
    )
    root, same = ensure_disks(plans, tmp_path)
    ri = info(root.path)
    assert ri["format"] == "qcow2" and ri["virtual-size"] == 32 * MiB
    assert ri["backing-filename"] == str(base.path) and ri["backing-filename-format"] == "qcow2"
    assert ri["format-specific"]["data"]["lazy-refcounts"] is True
    assert root.backing_file == str(base.path)
    assert info(same.path)["virtual-size"] == 8 * MiB
    # the base content shows through the overlay
    out = tmp_path / "flat.raw"
    subprocess.run(["qemu-img", "convert", "-q", "-O", "raw", str(root.path), str(out)], check=True)
    assert out.read_bytes()[:8] == b"BASEDATA"


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_copy_and_grow(tmp_path: Path, fmt: str) -> None:
    base = make_base(tmp_path, "qcow2", "8M", marker=b"COPYDATA")
    url = "http://h/base.qcow2"
    (plan,) = plan_disks(
        "ns1",
        "vm1",
        [{"name": "root", "size": "24Mi", "format": fmt, "source": {"image": {"url": url, "clone": "copy"}}}],
        tmp_path,
        {url: base},
    )
    (res,) = ensure_disks([plan], tmp_path)
    ri = info(res.path)
    assert ri["format"] == fmt and ri["virtual-size"] == 24 * MiB and "backing-filename" not in ri
    assert res.path.suffix == f".{fmt}"
    base.path.unlink()  # a copy does not depend on the base
    out = tmp_path / "flat.raw"
    subprocess.run(["qemu-img", "convert", "-q", "-f", fmt, "-O", "raw", str(res.path), str(out)], check=True)
    assert out.read_bytes()[:8] == b"COPYDATA"


def test_ensure_is_idempotent_and_never_overwrites(tmp_path: Path) -> None:
    plans = plan_disks("ns1", "vm1", [{"name": "d", "size": "4Mi", "format": "raw"}], tmp_path)
    (first,) = ensure_disks(plans, tmp_path)
    with open(first.path, "r+b") as f:
        f.write(b"USERDATA")
    # a leftover temp file from an interrupted attempt for another disk is cleaned up
    plans2 = plan_disks(
        "ns1", "vm1", [{"name": "d", "size": "8Mi", "format": "raw"}, {"name": "e", "size": "4Mi"}], tmp_path
    )
    plans2[1].tmp_path.write_bytes(b"garbage")
    again, new = ensure_disks(plans2, tmp_path)
    assert not again.created and new.created
    assert first.path.read_bytes()[:8] == b"USERDATA"
    assert info(first.path)["virtual-size"] == 4 * MiB  # spec change does not recreate/resize
    assert info(new.path)["format"] == "qcow2"
    assert not plans2[1].tmp_path.exists()


def test_resolves_images_via_fetcher_only_when_needed(tmp_path: Path) -> None:
    base = make_base(tmp_path, "raw", "4M")
    calls: list[tuple] = []

    def fetch(url: str, checksum: str | None, root: Path) -> BaseImage:
        calls.append((url, checksum, root))
        return base

    plans = plan_disks("ns1", "vm1", [{"name": "root", "source": {"image": {"url": "http://h/x"}}}], tmp_path)
    (res,) = ensure_disks(plans, tmp_path, fetch_image=fetch)
    assert res.created and calls == [("http://h/x", None, tmp_path)]
    assert info(res.path)["backing-filename-format"] == "raw"
    ensure_disks(plans, tmp_path, fetch_image=fetch)
    assert len(calls) == 1  # existing disk: no fetch


def test_qemu_img_failure_reports_stderr_and_cleans_up(tmp_path: Path) -> None:
    url = "http://h/x"
    ghost = BaseImage(tmp_path / "missing.qcow2", "qcow2", MiB)
    (plan,) = plan_disks(
        "ns1",
        "vm1",
        [{"name": "root", "size": "4Mi", "source": {"image": {"url": url}}}],
        tmp_path,
        {url: ghost},
    )
    with pytest.raises(StorageError) as e:
        ensure_disks([plan], tmp_path)
    assert "qemu-img create" in str(e.value) and "missing.qcow2" in str(e.value)
    assert not plan.path.exists() and not plan.tmp_path.exists()


def test_volume_used_as_is(tmp_path: Path) -> None:
    root = tmp_path / "root"
    vol = tmp_path / "data.img"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(vol), "4M"], check=True)
    declared = [{"name": "data", "format": "qcow2", "source": {"volume": {"path": str(vol)}}}]
    (res,) = ensure_disks(plan_disks("ns1", "vm1", declared, root), root)
    assert res.format == "qcow2" and not res.created and res.path == vol and res.virtual_size == 4 * MiB
    missing = plan_disks("ns1", "vm1", [{"name": "data", "source": {"volume": {"path": str(tmp_path / "nope")}}}], root)
    with pytest.raises(StorageError, match=r"spec.disks\[0\].source.volume.path: .* does not exist"):
        ensure_disks(missing, root)


def test_a_volume_format_is_never_probed(tmp_path: Path) -> None:
    """A guest that writes a qcow2 header naming a host file into its raw volume gets nothing: without
    `format` a volume is raw, whatever its bytes say, and a declared qcow2 may not name other files."""
    root = tmp_path / "root"
    secret = tmp_path / "host-secret.raw"
    secret.write_bytes(b"SECRET" * 1000)
    vol = tmp_path / "guest-written.img"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(secret), str(vol)], check=True)
    plain = [{"name": "data", "source": {"volume": {"path": str(vol)}}}]
    (res,) = ensure_disks(plan_disks("ns1", "vm1", plain, root), root)
    assert res.format == "raw" and res.backing_file is None
    declared = [{"name": "data", "format": "qcow2", "source": {"volume": {"path": str(vol)}}}]
    with pytest.raises(StorageError, match="refers to other files"):
        ensure_disks(plan_disks("ns1", "vm1", declared, root), root)


def test_permissions(tmp_path: Path) -> None:
    plans = plan_disks("ns1", "vm1", [{"name": "d", "size": "1Mi"}], tmp_path)
    (res,) = ensure_disks(plans, tmp_path)
    assert stat.S_IMODE((tmp_path / "vms").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "vms/ns1").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "vms/ns1/vm1").stat().st_mode) == 0o711
    st = res.path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o660
    try:
        qemu_uid = pwd.getpwnam("libvirt-qemu").pw_uid
    except KeyError:
        qemu_uid = None
    if os.geteuid() == 0 and qemu_uid is not None:
        assert st.st_uid == qemu_uid


def test_remove_vm_storage(tmp_path: Path) -> None:
    root = tmp_path / "root"
    vol = tmp_path / "vol.raw"
    vol.write_bytes(b"\0" * 4096)
    cache = root / "images"
    cache.mkdir(parents=True)
    (cache / "x.img").write_bytes(b"base")
    plans = plan_disks(
        "ns1",
        "vm1",
        [{"name": "d", "size": "1Mi"}, {"name": "v", "source": {"volume": {"path": str(vol)}}}],
        root,
    )
    ensure_disks(plans, root)
    vdir = root / "vms/ns1/vm1"
    (vdir / "seed.iso").write_bytes(b"iso")
    (vdir / "console.log").write_text("boot")
    ensure_disks(plan_disks("ns1", "other", [{"name": "d", "size": "1Mi"}], root), root)

    assert remove_vm_storage("ns1", "vm1", root, keep=True) is False
    assert (vdir / "d.qcow2").exists()
    assert remove_vm_storage("ns1", "vm1", root, keep=False) is True
    assert not vdir.exists()
    assert vol.exists() and (cache / "x.img").exists() and (root / "vms/ns1/other/d.qcow2").exists()
    assert remove_vm_storage("ns1", "vm1", root) is False  # idempotent
    remove_vm_storage("ns1", "other", root)
    assert not (root / "vms/ns1").exists()  # empty namespace dir cleaned


def test_storage_root_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("K3SVIRT_STORAGE_ROOT", str(tmp_path))
    root = Settings.from_env().storage_root
    assert root == tmp_path
    assert storage.seed_path("a", "b", root) == tmp_path / "vms/a/b/seed.iso"
    assert storage.console_log_path("a", "b", root) == tmp_path / "vms/a/b/console.log"
    monkeypatch.delenv("K3SVIRT_STORAGE_ROOT")
    assert Settings.from_env().storage_root == Path("/var/lib/k3svirt")


def test_disk_size_cap_and_free_space_reserve(tmp_path: Path) -> None:
    """A VM author cannot fill the node: one disk is capped, and nothing that allocates at once may eat
    into the free-space reserve (thin disks still may be created: they start empty)."""
    from k3svirt_operator.storage import InsufficientStorage, SpaceRules

    root = tmp_path / "root"
    big = [{"name": "d", "size": "5Ti", "source": {"blank": {}}}]
    with pytest.raises(InsufficientStorage, match=r"spec.disks\[0\].size: .* K3SVIRT_DISK_MAX_BYTES"):
        ensure_disks(plan_disks("ns1", "vm1", big, root), root)
    free = shutil.disk_usage(tmp_path).free
    tight = SpaceRules(reserve_bytes=free - 4 * MiB)  # as if only 4 MiB could be handed out
    thick = [{"name": "t", "size": "64Mi", "provisioning": "thick", "source": {"blank": {}}}]
    with pytest.raises(InsufficientStorage, match="in reserve"):
        ensure_disks(plan_disks("ns1", "vm1", thick, root), root, space=tight)
    assert not list((root / "vms/ns1/vm1").glob("*t.*"))
    thin = [{"name": "s", "size": "64Mi", "source": {"blank": {}}}]
    (res,) = ensure_disks(plan_disks("ns1", "vm1", thin, root), root, space=tight)
    assert res.created


def test_retained_disks_are_never_reused_silently(tmp_path: Path) -> None:
    """deletionPolicy Retain keeps a VM's disks; a new VM of the same name (another uid) does not get
    them unless it names the old uid (annotation k3svirt.io/adopt-retained-storage)."""
    from k3svirt_operator.storage import StorageOwnedByAnotherVM, ensure_vm_dir, remove_vm_storage

    d = ensure_vm_dir("ns1", "web", tmp_path, uid="uid-old")
    (d / "root.qcow2").write_bytes(b"old tenant data")
    assert ensure_vm_dir("ns1", "web", tmp_path, uid="uid-old") == d  # the same VM again: fine
    remove_vm_storage("ns1", "web", tmp_path, keep=True)
    with pytest.raises(StorageOwnedByAnotherVM, match="uid-old.*adopt-retained-storage=uid-old"):
        ensure_vm_dir("ns1", "web", tmp_path, uid="uid-new")
    with pytest.raises(StorageOwnedByAnotherVM):
        ensure_vm_dir("ns1", "web", tmp_path, uid="uid-new", adopt="some-other-uid")
    assert ensure_vm_dir("ns1", "web", tmp_path, uid="uid-new", adopt="uid-old") == d
    assert (d / ".owner-uid").read_text().strip() == "uid-new"
    assert ensure_vm_dir("ns1", "web", tmp_path, uid="uid-new") == d  # adopted for good


# ----------------------------------------------------------------------------------------- compression, grow
@pytest.mark.parametrize("algo", ["zlib", "zstd"])
def test_compressed_copy_of_an_image(tmp_path: Path, algo: str) -> None:
    base = make_base(tmp_path, "raw", "32M", marker=b"BASEDATA" * 4096)
    url = "http://h/base.raw"
    disk = {"name": "root", "source": {"image": {"url": url, "clone": "copy"}}, "qcow2": {"compression": algo}}
    plan = one(disk, tmp_path, {url: base})
    assert plan.commands[0][:4] == ("qemu-img", "convert", "-q", "-c")
    assert f"compression_type={algo}" in plan.options
    (res,) = ensure_disks([plan], tmp_path)
    got = info(res.path)
    assert got["format-specific"]["data"]["compression-type"] == algo
    assert got["actual-size"] < 1 * MiB  # 32 KiB of a repeated pattern + zeros, compressed
    out = tmp_path / "flat.raw"
    subprocess.run(["qemu-img", "convert", "-q", "-O", "raw", str(res.path), str(out)], check=True)
    assert out.read_bytes()[:32768] == b"BASEDATA" * 4096


@pytest.mark.parametrize(
    "disk",
    [
        {"name": "d", "size": "1Mi", "source": {"blank": {}}, "qcow2": {"compression": "zstd"}},
        {"name": "d", "source": {"image": {"url": "http://h/i"}}, "qcow2": {"compression": "zstd"}},
        {
            "name": "d",
            "provisioning": "thick",
            "source": {"image": {"url": "http://h/i", "clone": "copy"}},
            "qcow2": {"compression": "zlib"},
        },
    ],
)
def test_compression_only_for_thin_image_copies(tmp_path: Path, disk: dict) -> None:
    with pytest.raises(StorageSpecError, match=r"spec.disks\[0\].qcow2.compression"):
        one(disk, tmp_path)


def test_a_bigger_size_grows_the_disk_and_a_smaller_one_is_refused(tmp_path: Path) -> None:
    (plan,) = plan_disks("ns1", "vm1", [{"name": "d", "size": "8Mi", "source": {"blank": {}}}], tmp_path)
    (res,) = ensure_disks([plan], tmp_path)
    assert res.grow_to is None and storage.virtual_size(res.path, "qcow2") == 8 * MiB
    (bigger,) = plan_disks("ns1", "vm1", [{"name": "d", "size": "16Mi", "source": {"blank": {}}}], tmp_path)
    (res,) = ensure_disks([bigger], tmp_path)
    assert res.grow_to == 16 * MiB and not res.created
    storage.grow_offline(res, res.grow_to)
    assert info(res.path)["virtual-size"] == 16 * MiB == storage.virtual_size(res.path, "qcow2")
    (smaller,) = plan_disks("ns1", "vm1", [{"name": "d", "size": "4Mi", "source": {"blank": {}}}], tmp_path)
    with pytest.raises(StorageSpecError, match=r"spec.disks\[0\].size: .* smaller than the disk's current"):
        ensure_disks([smaller], tmp_path)


def test_virtual_size_never_probes_a_raw_disk(tmp_path: Path) -> None:
    raw = tmp_path / "d.raw"
    raw.write_bytes(b"QFI\xfb" + b"\0" * 20 + (1 << 40).to_bytes(8, "big") + b"\0" * 4064)  # a guest-written header
    assert storage.virtual_size(raw, "raw") == 4096
    assert storage.virtual_size(tmp_path / "missing", "qcow2") is None
