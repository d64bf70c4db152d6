"""Hostile image sources: a VM author must not get a host file, a host service or an unbounded
download through `disks[].source.image.url` (each refusal names the rule)."""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from k3svirt_operator import hostpaths
from k3svirt_operator.config import Settings
from k3svirt_operator.hostfs import InsufficientStorage
from k3svirt_operator.image_cache import ImageError, ensure_image, space_problem
from k3svirt_operator.image_fetch import FetchPolicy, FetchRefused, address_problem, open_image

from tests.slow_http import serving

MiB = 1024 * 1024
STRICT = FetchPolicy()  # the defaults a node runs with
LOOPBACK_OK = FetchPolicy(allow_loopback=True)


def node_policy(**changes: object) -> FetchPolicy:
    """The download rules as the operator reads them at start-up (the test set K3SVIRT_IMAGE_DIRS)."""
    return dataclasses.replace(Settings.from_env().image_fetch, **changes)


def image_dirs() -> tuple[str, ...]:
    return Settings.from_env().host_paths.image_dirs


@pytest.fixture
def images_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "allowed"
    d.mkdir()
    monkeypatch.setenv("K3SVIRT_IMAGE_DIRS", str(d))
    return d


@pytest.mark.parametrize(
    "url",
    [
        "file:///dev/sda",
        "file:///etc/shadow",
        "file:///var/lib/k3svirt/images/x.img",
        "file://otherhost/x.img",
        "file:///proc/self/environ",
        "file:relative.img",
    ],
)
def test_file_urls_outside_the_image_dirs_are_refused(url: str, images_dir: Path, tmp_path: Path):
    assert hostpaths.file_url_problem(url, image_dirs()) is not None
    with pytest.raises(ImageError, match="refused"):
        ensure_image(url, None, tmp_path / "root", node_policy())


def test_symlinks_and_dotdot_out_of_the_image_dir_are_refused(images_dir: Path, tmp_path: Path):
    (images_dir / "link.img").symlink_to("/etc/passwd")
    for url in ((images_dir / "link.img").as_uri(), f"file://{images_dir}/../../../etc/passwd"):
        assert "not under an allowed image directory" in hostpaths.file_url_problem(url, image_dirs())
        with pytest.raises(ImageError, match="refused"):
            ensure_image(url, None, tmp_path / "root", node_policy())


def test_a_device_inside_an_allowed_dir_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("K3SVIRT_IMAGE_DIRS", "/dev")
    assert "not a regular file" in hostpaths.file_url_problem("file:///dev/zero", image_dirs())


def test_the_vm_spec_check_names_the_field(images_dir: Path):
    spec = {"disks": [{"name": "a", "source": {"image": {"url": (images_dir / "ok.img").as_uri()}}},
                      {"name": "b", "source": {"image": {"url": "file:///dev/sda"}}}]}  # fmt: skip
    allowed = Settings.from_env().host_paths
    assert [f for f, _ in hostpaths.violations(spec, allowed, "tenant")] == ["spec.disks[1].source.image.url"]


@pytest.mark.parametrize(
    ("ip", "problem"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
    ],
)
def test_addresses_refused_by_default(ip: str, problem: str):
    assert problem in address_problem(ip, STRICT)


@pytest.mark.parametrize("ip", ["10.1.2.3", "192.168.1.10", "93.184.216.34", "2001:db8::1"])
def test_lan_and_public_addresses_are_allowed(ip: str):
    assert address_problem(ip, STRICT) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:1/x.img",
        "http://localhost:1/x.img",
        "http://[::1]:1/x.img",
        "http://169.254.169.254/latest",
        "http://0x7f000001:1/x.img",
        "http://2130706433:1/x.img",
    ],
)
def test_loopback_and_metadata_urls_are_refused_before_connecting(url: str, tmp_path: Path):
    with pytest.raises(ImageError, match="refused to fetch the image: .*may not use"):
        ensure_image(url, None, tmp_path / "root", node_policy())


@pytest.mark.parametrize("url", ["ftp://example.org/x.img", "gopher://x/", "http://x/\nHost: evil", "data:,abc"])
def test_other_schemes_and_control_characters_are_refused(url: str):
    with pytest.raises(FetchRefused):
        open_image(url, STRICT, "test")


class _Redirector(http.server.BaseHTTPRequestHandler):
    target = ""

    def do_GET(self) -> None:
        if self.path == "/stream":  # no Content-Length: 64 MiB until the client hangs up
            self.send_response(200)
            self.end_headers()
            with contextlib.suppress(OSError):
                for _ in range(64):
                    self.wfile.write(b"\0" * MiB)
            return
        if self.path == "/payload":
            body = b"\0" * MiB
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(OSError):  # a client that refused the length hangs up
                self.wfile.write(body)
            return
        self.send_response(302)
        self.send_header("Location", _Redirector.target)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def redirector() -> Iterator[str]:
    with serving(_Redirector) as url:
        yield url


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.1/x.img"])
def test_redirects_may_not_leave_http(redirector: str, tmp_path: Path, target: str):
    _Redirector.target = target
    with pytest.raises(ImageError, match="only http\\(s\\) redirects|is not allowed"):
        ensure_image(redirector + "/x.img", None, tmp_path / "root", LOOPBACK_OK)


def test_redirect_targets_are_checked_like_the_first_url(redirector: str, tmp_path: Path, monkeypatch):
    """A server the node may reach cannot bounce the download to an address the node refuses."""
    from k3svirt_operator import image_fetch

    _Redirector.target = "http://169.254.169.254/latest/meta-data"
    real = image_fetch.address_problem
    # the redirector itself is on loopback (allowed for this test); the redirect target is not
    monkeypatch.setattr(
        image_fetch, "address_problem", lambda ip, p: real(ip, LOOPBACK_OK if ip == "127.0.0.1" else STRICT)
    )
    with pytest.raises(ImageError, match="link-local"):
        ensure_image(redirector + "/x.img", None, tmp_path / "root", STRICT)


def test_size_cap_is_enforced_by_declared_length_and_while_reading(redirector: str, images_dir: Path, tmp_path: Path):
    small = node_policy(allow_loopback=True, max_bytes=MiB // 2)
    with pytest.raises(ImageError, match="image limit"):
        ensure_image(redirector + "/payload", None, tmp_path / "root", small)
    big = images_dir / "big.raw"
    big.write_bytes(b"\0" * MiB)
    with pytest.raises(ImageError, match="image limit"):
        ensure_image(big.as_uri(), None, tmp_path / "root", small)
    assert list((tmp_path / "root" / "images").glob("*.part")) == []


def test_a_vmdk_descriptor_is_never_interpreted(images_dir: Path, tmp_path: Path):
    """A VMDK descriptor naming a host file as its extent is taken as raw bytes (the format is decided
    from the magic, never probed), so the extent is never read."""
    secret = tmp_path / "host-secret"
    secret.write_bytes(b"HOST-SECRET-" * 1000)
    desc = images_dir / "evil.vmdk"
    text = ("# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n"
            f"RW 24 FLAT \"{secret}\" 0\n")  # fmt: skip
    desc.write_bytes(text.encode().ljust(512 * 4, b"\0"))
    img = ensure_image(desc.as_uri(), None, tmp_path / "root", node_policy())
    assert img.format == "raw"
    assert b"HOST-SECRET" not in img.path.read_bytes()


def test_a_qcow2_with_a_backing_file_is_refused(images_dir: Path, tmp_path: Path):
    base = tmp_path / "hostfile.raw"
    base.write_bytes(b"\0" * MiB)
    evil = images_dir / "evil.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(base), str(evil)], check=True)
    with pytest.raises(ImageError, match="backing file"):
        ensure_image(evil.as_uri(), None, tmp_path / "root", node_policy())


def test_deadline_stops_a_slow_download(redirector: str, tmp_path: Path):
    quick = FetchPolicy(allow_loopback=True, deadline_seconds=0.0)
    with pytest.raises(ImageError, match="took longer than"):
        ensure_image(redirector + "/payload", None, tmp_path / "root", quick)


def test_space_problem_keeps_the_reserve():
    assert space_problem("u", free=10 * MiB, still_to_write=4 * MiB, written=0, reserve=6 * MiB) is None
    problem = space_problem("u", free=10 * MiB, still_to_write=5 * MiB, written=0, reserve=6 * MiB)
    assert problem and "needs 5242880 more bytes" in problem and "K3SVIRT_STORAGE_RESERVE_BYTES" in problem
    assert problem.startswith("download of u refused: it needs 5242880 more bytes, the node's storage has 10485760")
    during = space_problem("u", free=MiB, still_to_write=0, written=7, reserve=2 * MiB)
    assert during and during.startswith("download of u stopped after 7 bytes: the node's storage has 1048576 bytes")


def test_a_download_never_eats_the_storage_reserve(redirector: str, images_dir: Path, tmp_path: Path):
    """Before the first byte (declared length, http and file://) and while it runs (no declared length):
    InsufficientStorage, and no .part file left. The reserve is set relative to the real free space."""
    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    free = shutil.disk_usage(root / "images").free
    tight = node_policy(allow_loopback=True, reserve_bytes=free - MiB // 2)  # 1 MiB does not fit
    with pytest.raises(InsufficientStorage, match="needs 1048576 more bytes"):
        ensure_image(redirector + "/payload", None, root, tight)
    src = images_dir / "one.raw"
    src.write_bytes(b"\0" * MiB)
    with pytest.raises(InsufficientStorage, match="needs 1048576 more bytes"):
        ensure_image(src.as_uri(), None, root, tight)
    # no declared length: stopped once what is written reaches the reserve (64 MiB would be sent)
    during = node_policy(allow_loopback=True, reserve_bytes=shutil.disk_usage(root).free - 4 * MiB)
    with pytest.raises(InsufficientStorage, match="stopped after"):
        ensure_image(redirector + "/stream", None, root, during)
    assert [p.name for p in (root / "images").iterdir() if not p.name.endswith(".lock")] == []
    # with room, the same download completes (the check is not in the way)
    roomy = node_policy(allow_loopback=True, reserve_bytes=0)
    assert ensure_image(redirector + "/payload", None, root, roomy).size == MiB
