"""The storage filesystem full: a private operator whose storage root is a size-limited tmpfs. With
the filesystem filled, new VMs that need space get a clear failed condition (InsufficientStorage,
or a provisioning failure naming the cause); the VM already running is not touched and its disk
stays consistent; once space returns, the waiting VMs become Ready by themselves.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import tiny_vm, wait_until
from tests.slow_http import serving

from .conftest import (
    ApiServer,
    conditions,
    count,
    drop_namespace,
    make_namespace,
    operator_env,
    remove_domains,
    start_operator,
)

MiB = 1 << 20
SIZE_MIB = 128
RESERVE = 8 * MiB


@pytest.fixture
def small_root(storage_root: Path) -> Path:
    # under the test bed's storage root: QEMU (not root) must be able to reach the disks
    root = storage_root / f"full-{uuid.uuid4().hex[:6]}"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE_MIB}m,mode=0755", "tmpfs", str(root)], check=True)
    yield root
    subprocess.run(["umount", "-l", str(root)], check=False)
    with contextlib.suppress(OSError):
        root.rmdir()


class _Image(http.server.BaseHTTPRequestHandler):
    """A 1 MiB raw image (zeros) with its length declared."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Length", str(MiB))
        self.end_headers()
        with contextlib.suppress(OSError):  # refused by its declared length: the client hangs up
            self.wfile.write(b"\0" * MiB)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def image_url() -> Iterator[str]:
    with serving(_Image) as url:
        yield f"{url}/one.raw"


def _fill(root: Path, leave: int) -> Path:
    """Fill the filesystem until `leave` bytes are free."""
    filler = root / "filler"
    st = os.statvfs(root)
    free = st.f_bavail * st.f_frsize
    with filler.open("wb") as fh:
        remaining = max(0, free - leave)
        chunk = b"\xaa" * MiB
        while remaining > 0:
            n = min(remaining, MiB)
            fh.write(chunk[:n])
            remaining -= n
    return filler


def test_storage_full_gives_a_condition_and_recovers(testbed, apiserver: ApiServer, libvirt_conn, small_root: Path,
                                                     tiny_guest, tmp_path, image_url: str):  # fmt: skip
    node = f"full-{uuid.uuid4().hex[:6]}"
    ns = make_namespace(apiserver, "rbfull")
    env = operator_env(
        testbed,
        node,
        K3SVIRT_STORAGE_ROOT=str(small_root),
        K3SVIRT_KERNEL_DIRS=str(Path(tiny_guest.kernel).parent),
        K3SVIRT_STORAGE_RESERVE_BYTES=str(RESERVE),
        K3SVIRT_IMAGE_ALLOW_LOOPBACK="true",  # the image server below
    )
    op = start_operator(env, tmp_path / "operator.log")

    def post(obj: dict) -> None:
        r = apiserver.request("POST", apiserver.vms(ns), json.dumps(obj).encode())
        assert r.status_code == 201, r.text

    def vm(name: str) -> dict:
        return apiserver.request("GET", apiserver.vms(ns, name)).json()

    def ready(name: str) -> bool:
        return conditions(vm(name)).get("Ready", {}).get("status") == "True"

    try:
        post(tiny_vm("old", tiny_guest, nodeName=node))
        wait_until(lambda: ready("old"), 120, f"the first VM did not start; log:\n{op.tail(30)}", 1)
        old_disk = small_root / "vms" / ns / "old" / "scratch.qcow2"
        assert old_disk.exists()
        filler = _fill(small_root, leave=RESERVE // 2)
        waiting = {
            "thick": tiny_vm("thick", tiny_guest, nodeName=node,
                             disks=[{"name": "d", "size": "16Mi", "provisioning": "thick", "source": {"blank": {}}}]),
            "thin": tiny_vm("thin", tiny_guest, nodeName=node),
            "seeded": tiny_vm("seeded", tiny_guest, nodeName=node, cloudInit={"userData": "#cloud-config\n"}),
            # the image download itself may not eat the reserve (checked before its first byte)
            "image": tiny_vm("image", tiny_guest, nodeName=node,
                             disks=[{"name": "d", "source": {"image": {"url": image_url, "clone": "copy"}}}]),
        }  # fmt: skip
        for obj in waiting.values():
            post(obj)

        def refused(name: str) -> dict | None:
            c = conditions(vm(name)).get("Provisioned", {})
            return c if c.get("status") == "False" else None

        for name in waiting:
            cond = wait_until(lambda name=name: refused(name), 90, f"{name}: no failed Provisioned condition; "
                              f"status {vm(name).get('status')}", 1)  # fmt: skip
            count("storage-full VMs")
            assert cond["reason"] == "InsufficientStorage", cond
            assert "free" in cond["message"] and "retried when space returns" in cond["message"], cond
        assert "download of" in refused("image")["message"], refused("image")
        assert list((small_root / "images").glob(".*.part")) == [], "the refused download left a partial file"
        assert ready("old"), f"the running VM was disturbed: {vm('old').get('status')}"
        assert libvirt_conn.lookupByName(f"{ns}_old").isActive()
        filler.unlink()  # space returns
        for name in waiting:
            wait_until(lambda name=name: ready(name), 120, f"{name} did not recover once space returned; "
                       f"status {json.dumps(vm(name).get('status'))[:1500]}\nlog:\n{op.tail(30)}", 1)  # fmt: skip
        check = subprocess.run(
            ["qemu-img", "check", "-U", "-f", "qcow2", str(old_disk)], capture_output=True, text=True
        )
        assert check.returncode == 0 and "No errors" in check.stdout, check.stdout + check.stderr
        for name in ("old", *waiting):
            apiserver.request("DELETE", apiserver.vms(ns, name))
        wait_until(lambda: apiserver.request("GET", apiserver.vms(ns)).json()["items"] == [], 120,
                   f"VMs were not finalized; log:\n{op.tail(30)}", 1)  # fmt: skip
        assert not any((small_root / "vms" / ns).glob("*")), "VM directories left"
    finally:
        op.stop()
        remove_domains(libvirt_conn, ns)
        drop_namespace(apiserver, ns)
