"""Hostile values the API server stores, met by a real operator: one operator run reconciles a batch
of Halted VMs (defined, never booted) whose specs carry XML metacharacters into the domain, host
paths, every image-source trick of issue 14 and odd sizes. Each VM ends either defined, with the
user's strings as text in the real libvirt XML (no injected element), or with a failed condition
whose message names the rule. Canary files outside the VM's storage are never read into a disk or
written; a loopback server never sees a request; deleting the batch leaves no domain or directory.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import secrets
import shutil
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from k3svirt_operator.hostpaths import DEFAULT_KERNEL_DIRS

from tests.e2e.conftest import wait_until
from tests.slow_http import serving

from .cases import CONTROL, VALUES
from .conftest import (
    ApiServer,
    Gateway,
    conditions,
    count,
    drop_namespace,
    make_namespace,
    operator_env,
    start_operator,
)
from .test_hostile_input import SURROGATE

MiB = 1 << 20
BOMB = "#cloud-config\n" + "\n".join(
    ["a: &a [x, x, x, x, x, x, x, x, x]"]
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)]
)
# Element names an injection in the cases above would add to a domain.
INJECTED = {"x", "init", "hostdev", "loader", "source-injected"}


@dataclass
class VMCase:
    name: str
    spec: dict
    expect: str  # "defined" or a substring of the failed condition's message
    cmdline: str | None = None  # the exact <cmdline> text the XML must carry
    kernel: str | None = None
    disks: int = 0  # <disk> elements the XML must hold
    reason: str | None = None  # the failed condition's reason, where the case pins it
    door: str = "api"  # created through: the API server (raw JSON), the real kubectl, the gateway


class CountingHandler(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:
        CountingHandler.hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def loopback_server() -> Iterator[int]:
    CountingHandler.hits = []
    with serving(CountingHandler) as url:
        yield int(url.rsplit(":", 1)[1])


def _snapshot(*dirs: Path) -> dict[str, tuple[int, int, str]]:
    out = {}
    for d in dirs:
        for p in sorted(d.rglob("*")):
            if p.is_symlink():
                out[str(p)] = (0, 0, os.readlink(p))
            elif p.is_file():
                st = p.stat()
                out[str(p)] = (st.st_size, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def _qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


@dataclass
class Host:
    secret: Path
    token: bytes
    images: Path
    volumes: Path
    kernels: Path
    hostdir: Path
    own: Path = Path()  # volumes/<the batch's namespace>: its tenant's volumes (set by tenant())
    other: Path = Path()  # volumes/<another namespace>: another tenant's volume

    def tenant(self, ns: str) -> None:
        """Volumes are scoped to namespaces (volumes/<ns>/): the batch's namespace gets the trap
        volumes; another tenant's directory holds a volume it may not attach."""
        self.own = (self.volumes / "_tenant").rename(self.volumes / ns)
        self.other = self.volumes / f"{ns}-other"
        self.other.mkdir()
        (self.other / "theirs.raw").write_bytes(b"\0" * MiB)


@pytest.fixture
def host(tmp_path: Path, tiny_guest) -> Host:
    """Allowed directories holding traps, and a secret outside every allowed directory."""
    hostdir, images, volumes, kernels = (tmp_path / n for n in ("host", "images", "volumes", "kernels"))
    for d in (hostdir, images, volumes, kernels):
        d.mkdir()
    token = b"K3SVIRT-CANARY-" + secrets.token_hex(8).encode()
    secret = hostdir / "secret.img"
    secret.write_bytes((token + b"\n") * (MiB // len(token)))
    (images / "ok.raw").write_bytes(b"\0" * MiB)
    (images / "link.raw").symlink_to(secret)
    vmdk = (
        '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\n'
        f'RW 2048 FLAT "{secret}" 0\n'
    )
    (images / "evil.vmdk").write_bytes(vmdk.encode().ljust(2048, b"\0"))
    _qemu_img("create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(secret), str(images / "backing.qcow2"))
    _qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={secret},data_file_raw=on", str(images / "data.qcow2"),
              "1M")  # fmt: skip
    json_backing = "json:" + json.dumps({"file.driver": "file", "file.filename": str(secret)})
    _qemu_img("create", "-q", "-f", "qcow2", "-F", "raw", "-u", "-b", json_backing, str(images / "json.qcow2"), "1M")
    # a "guest-written" raw volume that looks like a qcow2 with a backing file: never probed
    own = volumes / "_tenant"  # renamed to the batch's namespace (Host.tenant)
    own.mkdir()
    _qemu_img("create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(secret), str(own / "guest.raw"))
    (own / "link.raw").symlink_to(secret)
    (own / "shared.raw").write_bytes(b"\0" * MiB)
    (volumes / "loose.raw").write_bytes(b"\0" * MiB)  # in the volume directory, in no namespace's
    shutil.copy(tiny_guest.kernel, kernels / "vmlinuz-'><x y='&amp;\"")  # a file name with XML in it
    (kernels / "link").symlink_to(secret)
    return Host(secret, token, images, volumes, kernels, hostdir)


def _cases(host: Host, tiny_guest, port: int) -> list[VMCase]:
    kernel = str(tiny_guest.kernel)
    out: list[VMCase] = []

    def add(expect: str, disks_: list | None = None, **spec) -> VMCase:
        spec.setdefault("boot", {"kernel": {"path": kernel}})
        if disks_ is not None:
            spec["disks"] = disks_
        c = VMCase(f"o{len(out):03d}", spec, expect, disks=len(disks_ or []))
        out.append(c)
        return c

    # values rendered into the domain XML: the kernel command line
    for vid, v in VALUES.items():
        if vid in CONTROL or vid == "long":
            continue
        cmd = "console=ttyS0 " + v
        # an unpaired surrogate reaches the operator as U+FFFD (the API server's JSON decoding)
        add("defined", boot={"kernel": {"path": kernel, "cmdline": cmd}}).cmdline = SURROGATE.sub("\ufffd", cmd)
    odd_kernel = str(next(p for p in host.kernels.iterdir() if p.name.startswith("vmlinuz-")))
    add("defined", boot={"kernel": {"path": odd_kernel, "cmdline": "a<b>&c"}}).kernel = odd_kernel
    for path in ("/etc/passwd", str(host.kernels / "link"), str(host.kernels) + "/../host/secret.img", "/boot/../etc"):
        add("not under an allowed kernel directory", boot={"kernel": {"path": path}})
    # the host's own kernel and initramfs: /boot is no default kernel directory (the operator runs
    # with the default list plus the trap directory)
    release = os.uname().release
    for key, path in (("path", f"/boot/vmlinuz-{release}"), ("initrdPath", f"/boot/initrd.img-{release}")):
        add("not under an allowed kernel directory", boot={"kernel": {"path": kernel, key: path}})
    add("not under an allowed kernel directory", boot={"kernel": {"path": kernel, "initrdPath": str(host.secret)}})

    def image(url: str, **extra) -> list:
        return [{"name": "root", "source": {"image": {"url": url, **extra}}}]

    add("defined", image((host.images / "ok.raw").as_uri(), clone="copy"))
    add("defined", image((host.images / "evil.vmdk").as_uri(), clone="copy"))  # raw bytes, extent unread
    not_allowed = "not under an allowed image directory"
    for url in (
        "file:///dev/zero",
        "file:///dev/vda",
        "file:///etc/shadow",
        "file:///proc/self/environ",
        host.secret.as_uri(),
        f"file://localhost{host.secret}",
        (host.images / "link.raw").as_uri(),
        f"file://{host.images}/../host/secret.img",
        f"file://{host.images}/%2e%2e/host/secret.img",
    ):
        add(not_allowed, image(url))
    add("names a host", image(f"file://otherhost{host.secret}"))
    add("backing file", image((host.images / "backing.qcow2").as_uri()))
    add("backing file", image((host.images / "json.qcow2").as_uri()))
    add("external data file", image((host.images / "data.qcow2").as_uri()))
    for url in (
        f"http://127.0.0.1:{port}/x.img",
        f"http://127.0.0.2:{port}/x.img",
        f"http://localhost:{port}/x.img",
        f"http://[::1]:{port}/x.img",
        f"http://[::ffff:127.0.0.1]:{port}/x.img",
        f"http://0x7f000001:{port}/x.img",
        f"http://2130706433:{port}/x.img",
        f"http://127.1:{port}/x.img",
        f"https://127.0.0.1:{port}/x.img",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/x.img",
        f"http://0.0.0.0:{port}/x.img",
        "http://224.0.0.1/x.img",
    ):
        add("may not use", image(url))

    # host networks: cni0 is the pod network, br0 a LAN bridge; neither is on this node's allow-list
    for bridge in ("cni0", "br0", "virbr0"):
        nic = {"name": "n", "bridge": {"name": bridge}}
        add("is not a bridge VMs may join", networks=[nic]).reason = "HostNetworkNotAllowed"
    add(
        "is not a network VMs may join", networks=[{"name": "n", "nat": {"network": "mgmt"}}]
    ).reason = "HostNetworkNotAllowed"

    def volume(path: str, **extra) -> list:
        return [{"name": "vol", "source": {"volume": {"path": path}}, **extra}]

    add("defined", volume(str(host.own / "guest.raw")))  # looks like qcow2: still raw
    for path in ("/etc/shadow", "/dev/vda", str(host.own / "link.raw"), f"{host.own}/../../host/secret.img"):
        add("not under an allowed volume directory", volume(path))
    # volumes are scoped to tenants: another namespace's volume, by path or `..`, and a file of the
    # volume directory itself are refused (also through kubectl and the gateway, below)
    theirs = str(host.other / "theirs.raw")
    for path in (theirs, f"{host.own}/../{host.other.name}/theirs.raw", str(host.volumes / "loose.raw")):
        add("not under an allowed volume directory of namespace", volume(path)).reason = "HostPathNotAllowed"
    for door in ("kubectl", "gateway"):
        c = add("not under an allowed volume directory of namespace", volume(theirs))
        c.reason, c.door = "HostPathNotAllowed", door
    # sizes and counts the schema admits
    add("K3SVIRT_DISK_MAX_BYTES", [{"name": "d", "size": "99999999999999999999Ti", "source": {"blank": {}}}])
    add("keeps", [{"name": "d", "size": "3Ti", "provisioning": "thick", "source": {"blank": {}}}])
    # (memory below 16Mi, reversed or huge cpusets: CRD rules now, refused at the door: cases.py)
    # cloud-init: XML and NUL go to the seed, not the domain; an alias bomb is refused
    add("defined", cloudInit={"userData": '#cloud-config\nhostname: "<x/>\'&"\n', "metaData": "a: '<x/>'"}).disks = 1
    add("unacceptable character", cloudInit={"metaData": "a\x00b"})
    add("expands", cloudInit={"userData": BOMB})
    return out


def _create(door: str, obj: dict, ns: str, apiserver: ApiServer, kubeconfig: str, gateway: Gateway) -> None:
    if door == "kubectl":
        proc = subprocess.run(["kubectl", "--kubeconfig", kubeconfig, "-n", ns, "create", "-f", "-"],
                              input=json.dumps(obj), capture_output=True, text=True, timeout=60)  # fmt: skip
        assert proc.returncode == 0, f"kubectl create {obj['metadata']['name']}: {proc.stderr[:300]}"
    elif door == "gateway":
        r = gateway.request("POST", f"/api/v1/vms?namespace={ns}", json={"name": obj["metadata"]["name"],
                            "spec": obj["spec"]})  # fmt: skip
        assert r.status_code == 201, f"gateway POST {obj['metadata']['name']}: {r.status_code} {r.text[:300]}"
    else:
        r = apiserver.request("POST", apiserver.vms(ns), json.dumps(obj).encode())
        assert r.status_code == 201, f"{obj['metadata']['name']} {obj['spec']}: {r.text[:300]}"


def test_a_batch_of_hostile_vms_meets_a_real_operator(
    testbed,
    kubeconfig,
    gateway: Gateway,
    apiserver: ApiServer,
    libvirt_conn,
    storage_root: Path,
    tiny_guest,
    host: Host,
    loopback_server,
    tmp_path,
):
    node = f"hostile-{uuid.uuid4().hex[:6]}"
    ns = make_namespace(apiserver, "rbop")
    host.tenant(ns)
    uid = uuid.uuid4().bytes  # a MAC no other test on this libvirtd uses
    cases = _cases(host, tiny_guest, loopback_server)
    pairs = [  # one writer per volume; one owner per MAC: exactly one of each pair is defined
        ("volume", {"disks": [{"name": "v", "source": {"volume": {"path": str(host.own / "shared.raw")}}}]}),
        ("mac", {"networks": [{"name": "n", "nat": {}, "macAddress": "52:54:00:" + uid[:3].hex(":")}]}),
    ]
    before = _snapshot(host.hostdir, host.images, host.volumes, host.kernels)
    env = operator_env(
        testbed,
        node,
        K3SVIRT_IMAGE_DIRS=str(host.images),
        K3SVIRT_VOLUME_DIRS=str(host.volumes),
        # the node's default kernel directories (no /boot) plus the trap directory
        K3SVIRT_KERNEL_DIRS=f"{DEFAULT_KERNEL_DIRS.replace('/var/lib/k3svirt/', f'{storage_root}/')}:{host.kernels}",
    )
    assert Path(tiny_guest.kernel).parent == storage_root / "guest", "the tiny guest is no longer a default kernel"
    op = start_operator(env, tmp_path / "operator.log")
    names = []
    try:
        for c in cases:
            spec = {"runStrategy": "Halted", "nodeName": node, "memory": {"size": "64Mi"}, **c.spec}
            obj = {"apiVersion": "k3svirt.io/v1alpha1", "kind": "VirtualMachine", "metadata": {"name": c.name}}
            _create(c.door, {**obj, "spec": spec}, ns, apiserver, kubeconfig, gateway)
            names.append(c.name)
        for kind, extra in pairs:
            for i in (1, 2):
                spec = {"runStrategy": "Halted", "nodeName": node, "memory": {"size": "64Mi"},
                        "boot": {"kernel": {"path": str(tiny_guest.kernel)}}, **extra}  # fmt: skip
                obj = {"apiVersion": "k3svirt.io/v1alpha1", "kind": "VirtualMachine",
                       "metadata": {"name": f"{kind}{i}"}}  # fmt: skip
                assert apiserver.request("POST", apiserver.vms(ns), json.dumps({**obj, "spec": spec}).encode()).ok
                names.append(f"{kind}{i}")

        def settled() -> dict[str, dict] | None:
            items = {v["metadata"]["name"]: v for v in apiserver.request("GET", apiserver.vms(ns)).json()["items"]}
            done = {n: v for n, v in items.items() if "Ready" in conditions(v)}
            return items if len(done) == len(names) else None

        vms = wait_until(settled, 420, f"not every VM got a Ready condition; operator log:\n{op.tail(60)}", 2)
        assert op.proc is not None and op.proc.poll() is None, "the operator died"
        problems = []
        for c in cases:
            count("operator batch (VMs)")
            problem = _check(c, vms[c.name], libvirt_conn, ns, host)
            if problem:
                problems.append(f"{c.name} {json.dumps(c.spec)[:160]}: {problem}")
        for kind, _ in pairs:
            count("operator batch (VMs)", 2)
            defined = [i for i in (1, 2) if _domain(libvirt_conn, ns, f"{kind}{i}") is not None]
            if len(defined) != 1:
                problems.append(f"{kind}: {len(defined)} of two VMs sharing one {kind} were defined")
        assert not problems, "\n".join(problems)
        assert CountingHandler.hits == [], f"the loopback server was asked: {CountingHandler.hits}"
        assert _snapshot(host.hostdir, host.images, host.volumes, host.kernels) == before, "files outside changed"
        leaked = [p for p in (storage_root / "vms" / ns).rglob("*") if p.is_file() and host.token in p.read_bytes()]
        leaked += [p for p in (storage_root / "images").glob("*") if p.is_file() and host.token in p.read_bytes()]
        assert leaked == [], f"the canary's bytes were copied into {leaked}"
        # deleting the batch leaves nothing behind
        for n in names:
            apiserver.request("DELETE", apiserver.vms(ns, n))
        wait_until(lambda: apiserver.request("GET", apiserver.vms(ns)).json()["items"] == [], 180,
                   f"VMs were not finalized; log:\n{op.tail(40)}", 1)  # fmt: skip
        left = [n for n in names if _domain(libvirt_conn, ns, n) is not None]
        assert left == [], f"domains left: {left}"
        assert not any((storage_root / "vms" / ns).glob("*")), "VM directories left"
    finally:
        op.stop()
        drop_namespace(apiserver, ns, storage_root)
        for n in names:
            dom = _domain(libvirt_conn, ns, n)
            if dom is not None:
                dom.undefine()


def _domain(conn, ns: str, name: str):
    import libvirt

    libvirt.registerErrorHandler(lambda *_: None, None)  # "not found" is an answer here, not noise
    try:
        return conn.lookupByName(f"{ns}_{name}")
    except libvirt.libvirtError:
        return None


def _check(c: VMCase, vm: dict, conn, ns: str, host: Host) -> str | None:
    conds = conditions(vm)
    dom = _domain(conn, ns, c.name)
    if c.expect != "defined":
        failed = [x for x in conds.values() if x.get("status") == "False" and c.expect in x.get("message", "")]
        if not failed:
            return f"no failed condition saying {c.expect!r}: {list(conds.values())}"
        if c.reason is not None and all(x.get("reason") != c.reason for x in failed):
            return f"reason {[x.get('reason') for x in failed]}, expected {c.reason}"
        return None if dom is None else "defined although refused"
    if dom is None:
        return f"not defined: {[x.get('message') for x in conds.values() if x.get('status') == 'False']}"
    xml = dom.XMLDesc(0)
    root = ET.fromstring(xml)
    tags = {el.tag for el in root.iter()}
    if tags & INJECTED:
        return f"injected elements {tags & INJECTED}"
    if c.cmdline is not None and root.findtext("./os/cmdline") != c.cmdline:
        return f"cmdline {root.findtext('./os/cmdline')!r} != {c.cmdline!r}"
    if c.kernel is not None and root.findtext("./os/kernel") != c.kernel:
        return f"kernel {root.findtext('./os/kernel')!r} != {c.kernel!r}"
    disks = root.findall("./devices/disk")
    if len(disks) != c.disks:
        return f"{len(disks)} disks, expected {c.disks}"
    if str(host.hostdir) in xml:
        return "the domain names a file outside the allowed directories"
    for d in disks:
        if d.find("backingStore/source") is not None:
            return "a disk has a backing store"
        src = d.find("source")
        volume = src is not None and (src.get("file") or src.get("dev") or "").startswith(str(host.volumes))
        if volume and d.find("driver").get("type") != "raw":
            return f"the volume was opened as {d.find('driver').get('type')}, not raw"
    return None


@pytest.fixture(autouse=True)
def _report_duration():
    t0 = time.monotonic()
    yield
    print(f"operator batch took {time.monotonic() - t0:.0f} s")
