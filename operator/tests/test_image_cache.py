"""image_cache.py against a local http.server on 127.0.0.1 (no outside network)."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import shutil
import socket
import stat
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from k3svirt_operator import image_cache
from k3svirt_operator.config import Settings
from k3svirt_operator.image_cache import CachedImage, ImageError, cache_path, prune_unused
from k3svirt_operator.storage import ensure_disks, plan_disks

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img (qemu-utils) not installed")

MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def node_rules_for_local_tests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests serve images from 127.0.0.1 and from their tmp dir: allow exactly that."""
    monkeypatch.setenv("K3SVIRT_IMAGE_ALLOW_LOOPBACK", "true")
    monkeypatch.setenv("K3SVIRT_IMAGE_DIRS", str(tmp_path))


def ensure_image(url: str, checksum: str | None, root: Path) -> CachedImage:
    """image_cache.ensure_image under the node rules, read as the operator reads them at start-up."""
    return image_cache.ensure_image(url, checksum, root, Settings.from_env().image_fetch)


class Server:
    def __init__(self, docroot: Path) -> None:
        self.docroot = docroot
        self.hits: Counter[str] = Counter()
        self.delay = 0.0
        srv = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(srv.docroot), **kw)

            def do_GET(self):  # noqa: N802
                srv.hits[self.path] += 1
                if srv.delay:
                    time.sleep(srv.delay)
                return super().do_GET()

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    docroot = tmp_path / "www"
    docroot.mkdir()
    s = Server(docroot)
    yield s
    s.close()


def make_qcow2(path: Path, size: str = "16M", marker: bytes = b"IMAGEDATA") -> str:
    raw = path.with_suffix(".src")
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(raw), size], check=True)
    with open(raw, "r+b") as f:
        f.write(marker)
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(path)], check=True)
    raw.unlink()
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_download_once_and_sidecar(server: Server, tmp_path: Path) -> None:
    root = tmp_path / "root"
    checksum = make_qcow2(server.docroot / "cirros.qcow2")
    url = server.url("cirros.qcow2")
    img = ensure_image(url, checksum, root)
    assert img.path == cache_path(url, root) and img.path.parent == root / "images"
    assert img.path.name == hashlib.sha256(url.encode()).hexdigest() + ".img"
    assert img.format == "qcow2" and img.virtual_size == 16 * MiB
    assert "sha256:" + img.sha256 == checksum and img.size == (server.docroot / "cirros.qcow2").stat().st_size
    meta = json.loads(img.path.with_suffix(".json").read_text())
    assert meta["url"] == url and meta["format"] == "qcow2" and meta["virtualSize"] == 16 * MiB
    assert stat.S_IMODE(img.path.stat().st_mode) == 0o644
    again = ensure_image(url, None, root)
    assert again == img
    assert server.hits["/cirros.qcow2"] == 1
    assert not list((root / "images").glob(".*.part"))


def test_concurrent_callers_download_once(server: Server, tmp_path: Path) -> None:
    make_qcow2(server.docroot / "img.qcow2")
    server.delay = 0.5
    url = server.url("img.qcow2")
    with ThreadPoolExecutor(6) as ex:
        results = list(ex.map(lambda _: ensure_image(url, None, tmp_path), range(6)))
    assert server.hits["/img.qcow2"] == 1
    assert len({r.path for r in results}) == 1


def test_checksum_mismatch(server: Server, tmp_path: Path) -> None:
    make_qcow2(server.docroot / "img.qcow2")
    url = server.url("img.qcow2")
    with pytest.raises(ImageError, match=r"checksum mismatch for http://127.0.0.1:\d+/img.qcow2: got sha256:"):
        ensure_image(url, "sha256:" + "0" * 64, tmp_path)
    assert not cache_path(url, tmp_path).exists()
    assert not list((tmp_path / "images").glob(".*.part"))
    # once cached (no checksum), a different checksum is refused, never re-downloaded over it
    ensure_image(url, None, tmp_path)
    with pytest.raises(ImageError, match="never replaced"):
        ensure_image(url, "sha256:" + "1" * 64, tmp_path)
    with pytest.raises(ImageError, match="checksum must be"):
        ensure_image(url, "md5:abc", tmp_path)


def test_http_404(server: Server, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"cannot download http://127.0.0.1:\d+/nope.img: HTTP 404"):
        ensure_image(server.url("nope.img"), None, tmp_path)


def test_unreachable(tmp_path: Path) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(ImageError, match=r"cannot reach http://127.0.0.1:\d+/x.img: .*refused"):
        ensure_image(f"http://127.0.0.1:{port}/x.img", None, tmp_path)


def test_not_a_disk_image(server: Server, tmp_path: Path) -> None:
    (server.docroot / "page.img").write_text("<!DOCTYPE html><html>login required</html>\n" * 20)
    (server.docroot / "empty.img").write_bytes(b"")
    (server.docroot / "odd.img").write_bytes(b"\x01" * 1000)
    (server.docroot / "disk.img.gz").write_bytes(gzip.compress(b"\0" * 4096))
    with pytest.raises(ImageError, match="not a disk image: it looks like a text/HTML"):
        ensure_image(server.url("page.img"), None, tmp_path)
    with pytest.raises(ImageError, match="not a disk image: it is empty"):
        ensure_image(server.url("empty.img"), None, tmp_path)
    with pytest.raises(ImageError, match="not a multiple of 512"):
        ensure_image(server.url("odd.img"), None, tmp_path)
    with pytest.raises(ImageError, match="gzip-compressed"):
        ensure_image(server.url("disk.img.gz"), None, tmp_path)
    assert not list((tmp_path / "images").glob("*.img"))


def test_image_with_backing_file_rejected(server: Server, tmp_path: Path) -> None:
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            "/etc/hostname",
            "-u",
            str(server.docroot / "evil.qcow2"),
            "1M",
        ],
        check=True,
    )
    with pytest.raises(ImageError, match="backing file"):
        ensure_image(server.url("evil.qcow2"), None, tmp_path)


def test_raw_image_and_file_url_is_copied(tmp_path: Path) -> None:
    src = tmp_path / "disk.raw"
    src.write_bytes(b"RAWDISK!" + b"\0" * (MiB - 8))
    url = src.as_uri()
    img = ensure_image(url, None, tmp_path / "root")
    assert img.format == "raw" and img.virtual_size == MiB
    src.write_bytes(b"CHANGED!" + b"\0" * (MiB - 8))
    assert img.path.read_bytes()[:8] == b"RAWDISK!"  # a copy, not a reference
    with pytest.raises(ImageError, match="cannot reach file://"):
        ensure_image((tmp_path / "missing.raw").as_uri(), None, tmp_path / "root")


def test_end_to_end_overlay_from_http(server: Server, tmp_path: Path) -> None:
    checksum = make_qcow2(server.docroot / "base.qcow2", marker=b"FROMHTTP")
    url = server.url("base.qcow2")
    disks = [
        {"name": "root", "size": "32Mi", "source": {"image": {"url": url, "checksum": checksum}}},
        {"name": "copy", "format": "raw", "source": {"image": {"url": url, "clone": "copy"}}},
    ]
    results = []
    for vm in ("vm1", "vm2"):
        results += ensure_disks(plan_disks("ns", vm, disks, tmp_path), tmp_path, fetch_image=ensure_image)
    assert server.hits["/base.qcow2"] == 1
    base = cache_path(url, tmp_path)
    for r in results:
        out = subprocess.run(["qemu-img", "info", "--output=json", str(r.path)], capture_output=True, check=True)
        info = json.loads(out.stdout)
        if r.name == "root":
            assert info["backing-filename"] == str(base) and info["virtual-size"] == 32 * MiB
        else:
            assert info["format"] == "raw" and "backing-filename" not in info and info["virtual-size"] == 16 * MiB
            assert r.path.read_bytes()[:8] == b"FROMHTTP"


def test_prune_unused(server: Server, tmp_path: Path) -> None:
    for n in ("a", "b", "c"):
        make_qcow2(server.docroot / f"{n}.qcow2")
    a, b, c = (ensure_image(server.url(f"{n}.qcow2"), None, tmp_path) for n in ("a", "b", "c"))
    # b backs an overlay under vms/: kept even though the caller forgot it
    plans = plan_disks("ns", "vm", [{"name": "r", "source": {"image": {"url": b.url}}}], tmp_path)
    ensure_disks(plans, tmp_path, fetch_image=ensure_image)
    removed = prune_unused(tmp_path, in_use={a.path})
    assert removed == [c.path]
    assert a.path.exists() and b.path.exists() and not c.path.exists()
    assert not c.path.with_suffix(".json").exists()
    assert sorted(image_cache.images_dir(tmp_path).glob("*.img")) == sorted([a.path, b.path])


def test_prune_keeps_images_a_snapshot_overlay_uses(server: Server, tmp_path: Path) -> None:
    """A snapshot of an overlay disk is an overlay on the same image (snapshot_store.py): the VM's own
    disk may be gone (a restore will bring it back), the image must stay."""
    import shutil

    make_qcow2(server.docroot / "s.qcow2")
    img = ensure_image(server.url("s.qcow2"), None, tmp_path)
    (plan,) = plan_disks("ns", "vm", [{"name": "r", "source": {"image": {"url": img.url}}}], tmp_path)
    (disk,) = ensure_disks([plan], tmp_path, fetch_image=ensure_image)
    snap = tmp_path / "vms" / "ns" / "vm" / "snapshots" / "s1"
    snap.mkdir(parents=True)
    shutil.copy(disk.path, snap / disk.path.name)
    disk.path.unlink()
    assert prune_unused(tmp_path) == [] and img.path.exists()
    shutil.rmtree(snap)
    assert prune_unused(tmp_path) == [img.path]


def test_prune_keeps_recently_used_images(server: Server, tmp_path: Path) -> None:
    """LRU by last use: an image asked for within idle_seconds stays, an idle one goes."""
    import os

    for n in ("fresh", "stale"):
        make_qcow2(server.docroot / f"{n}.qcow2")
    fresh, stale = (ensure_image(server.url(f"{n}.qcow2"), None, tmp_path) for n in ("fresh", "stale"))
    old = time.time() - 7200
    os.utime(stale.path.with_suffix(".json"), (old, old))
    os.utime(fresh.path.with_suffix(".json"), (old, old))
    ensure_image(fresh.url, None, tmp_path)  # a cache hit counts as a use
    assert prune_unused(tmp_path, idle_seconds=3600) == [stale.path]
    assert fresh.path.exists() and not stale.path.exists()
