"""The locally built images (tests/harness/images.sh): valid OCI archives, cached, and they really run.

Every container runs in the private containerd of conftest.py, in a network namespace of its own
or one this test creates: test traffic only reaches loopback inside that namespace.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import socket
import subprocess
import tarfile
import time
import uuid
from pathlib import Path

import pytest

from tests.polling import poll

from .conftest import Containerd, parse_refs, ref, run_images_sh

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TYPES = ("application/vnd.oci.image.layer.v1.tar", "application/vnd.oci.image.layer.v1.tar+gzip")
NODE_IMAGES = ("pause", "http-echo", "operator", "gateway")


def _sha256(stream) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    while chunk := stream.read(1 << 20):
        h.update(chunk)
        n += len(chunk)
    return "sha256:" + h.hexdigest(), n


class OciArchive:
    """Reads an OCI image layout tar and checks every blob against its descriptor."""

    def __init__(self, path: Path) -> None:
        self.tar = tarfile.open(path)  # noqa: SIM115  (read lazily by every method; closed with the object)

    def blob(self, digest: str):
        algo, hexd = digest.split(":", 1)
        return self.tar.extractfile(f"blobs/{algo}/{hexd}")

    def verified_json(self, desc: dict) -> dict:
        got = _sha256(self.blob(desc["digest"]))
        assert got == (desc["digest"], desc["size"]), f"blob {desc['digest']} does not match its descriptor"
        return json.load(self.blob(desc["digest"]))

    def image(self) -> tuple[dict, dict, dict]:
        """(index, manifest, config), after checking digests and sizes of every blob and diff_id."""
        assert json.load(self.tar.extractfile("oci-layout"))["imageLayoutVersion"] == "1.0.0"
        index = json.load(self.tar.extractfile("index.json"))
        (mdesc,) = index["manifests"]
        assert mdesc["mediaType"] == MANIFEST
        manifest = self.verified_json(mdesc)
        assert manifest["config"]["mediaType"] == CONFIG
        config = self.verified_json(manifest["config"])
        diff_ids = []
        for layer in manifest["layers"]:
            assert layer["mediaType"] in LAYER_TYPES
            assert _sha256(self.blob(layer["digest"])) == (layer["digest"], layer["size"])
            raw = self.blob(layer["digest"])
            diff_ids.append(_sha256(gzip.GzipFile(fileobj=raw) if layer["mediaType"].endswith("gzip") else raw)[0])
        assert config["rootfs"] == {"type": "layers", "diff_ids": diff_ids}
        return index, manifest, config


def _config(images: dict[str, Path], name: str) -> dict:
    return OciArchive(images[ref(images, name)]).image()[2]


def test_every_archive_is_a_valid_oci_image_named_by_its_reference(built_images):
    assert {r.rsplit(":", 1)[0].rsplit("/", 1)[1] for r in built_images} >= set(NODE_IMAGES)
    for reference, archive in built_images.items():
        index, manifest, config = OciArchive(archive).image()
        assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == reference
        assert (config["os"], config["architecture"]) == ("linux", "amd64")
        assert manifest["layers"], f"{reference} has no layers"


def test_an_unchanged_image_is_not_rebuilt(built_images):
    stamps = {a: a.stat().st_mtime_ns for a in built_images.values()}
    again = run_images_sh("build")
    assert parse_refs(again.stdout) == built_images
    assert "building" not in again.stderr
    assert {a: a.stat().st_mtime_ns for a in built_images.values()} == stamps
    assert parse_refs(run_images_sh("list").stdout) == built_images


def test_images_carry_the_fixed_build_timestamp(built_images):
    for archive in built_images.values():
        _, _, config = OciArchive(archive).image()
        assert config["created"].startswith("2025-01-01T00:00:00"), archive
        assert all(h["created"].startswith("2025-01-01T00:00:00") for h in config.get("history", []))


def test_the_gateway_runs_as_its_non_root_user_and_the_operator_as_root(built_images):
    gateway = _config(built_images, "gateway")["config"]
    assert gateway["User"] == "65532:65532"  # the chart's runAsUser/runAsGroup
    assert gateway["Cmd"] == ["k3svirt-gateway"]
    operator = _config(built_images, "operator")["config"]
    assert operator.get("User", "") in ("", "0", "root")
    assert operator["Cmd"] == ["k3svirt-operator"]


def test_the_operator_image_has_libvirt_python_and_its_external_programs(containerd: Containerd, built_images):
    out = containerd.run(
        ref(built_images, "operator"),
        "sh",
        "-c",
        "python3 -c 'import libvirt, k3svirt_operator.main; print(\"libvirt\", libvirt.getVersion())'"
        " && qemu-img --version && genisoimage --version && modprobe --version && iptables-restore --version"
        " && test -s /usr/share/misc/pci.ids && command -v k3svirt-operator",
    )
    assert "libvirt " in out and "qemu-img version" in out and "genisoimage" in out and "kmod version" in out
    assert "iptables-restore v" in out and "nf_tables" in out  # the same backend as the host's kube-proxy
    assert out.rstrip().endswith("/opt/k3svirt/bin/k3svirt-operator")


def test_the_operator_image_talks_to_the_hosts_libvirtd(containerd: Containerd, built_images, libvirt_uri):
    # The chart mounts the host's /run/libvirt; a read-only connection is enough to prove the binding works.
    out = containerd.run(
        ref(built_images, "operator"),
        "python3",
        "-c",
        f"import libvirt; c = libvirt.openReadOnly({libvirt_uri!r}); print('hv', c.getType(), c.getLibVersion())",
        opts=("--mount", "type=bind,src=/run/libvirt,dst=/run/libvirt,options=rbind:ro"),
    )
    assert out.startswith("hv QEMU "), out


def _netns() -> str:
    name = f"k3svirt-img-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    return name


def _get_in_netns(netns: str, url: str, timeout: float = 60) -> str:
    """curl URL from inside NETNS (loopback of that namespace), retrying until the server listens."""
    deadline = time.monotonic() + timeout
    while True:
        proc = subprocess.run(
            ["ip", "netns", "exec", netns, "curl", "-fsS", "--max-time", "5", url], capture_output=True, text=True
        )
        if proc.returncode == 0:
            return proc.stdout
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} in netns {netns} did not answer: {proc.stderr.strip()}")
        time.sleep(0.3)


@pytest.fixture
def netns():
    name = _netns()
    yield name
    subprocess.run(["ip", "netns", "delete", name], check=False)


def test_http_echo_answers_logs_each_request_and_stops_on_sigterm(containerd, built_images, netns):
    message = f"m-{uuid.uuid4().hex[:8]}"
    name = f"k3svirt-echo-{uuid.uuid4().hex[:8]}"
    log = containerd.start(
        ref(built_images, "http-echo"),
        name,
        opts=("--with-ns", f"network:/run/netns/{netns}", "--env", f"MESSAGE={message}", "--env", "PORT=9090"),
    )
    try:
        answer = _get_in_netns(netns, "http://127.0.0.1:9090/")
        # A new UTS namespace starts with the host's name; under Kubernetes it is the pod's name.
        assert answer == f"http-echo host={socket.gethostname()} message={message}\n"
        _get_in_netns(netns, "http://127.0.0.1:9090/?second")
        poll(lambda: log.read_text().count("http-echo: GET") >= 2, 10)
        # One line per request (the client is 127.0.0.1, as an IPv4-mapped address on httpd's socket).
        lines = log.read_text().splitlines()
        assert lines == ["http-echo: GET / from [::ffff:127.0.0.1]", "http-echo: GET /?second from [::ffff:127.0.0.1]"]
        assert _ids(containerd.task_pid(name)) == (["65532"] * 4, ["65532"] * 4)  # the image's USER
        assert containerd.stop(name, "SIGTERM") == 0  # at once, as PID 1 of a pod
    finally:
        containerd.remove(name)


def test_the_gateway_image_serves_health_and_openapi_read_only_as_non_root(containerd, built_images, netns):
    name = f"k3svirt-gw-{uuid.uuid4().hex[:8]}"
    # As the chart runs it: read-only root filesystem, a tmpfs /tmp for gunicorn's heartbeat files.
    log = containerd.start(
        ref(built_images, "gateway"),
        name,
        opts=(
            "--with-ns",
            f"network:/run/netns/{netns}",
            "--read-only",
            "--mount",
            "type=tmpfs,src=tmpfs,dst=/tmp,options=rw:nosuid:nodev",
            "--env",
            "K3SVIRT_BIND=127.0.0.1:8080",
            "--env",
            "K3SVIRT_API_KEYS_FILE=/dev/null",
        ),
    )
    try:
        health = _get_in_netns(netns, "http://127.0.0.1:8080/healthz")
        assert health.strip(), f"empty /healthz answer; log:\n{log.read_text()}"
        spec = json.loads(_get_in_netns(netns, "http://127.0.0.1:8080/openapi.json"))
        assert spec["openapi"].startswith("3.") and any(p.startswith("/api/v1/") for p in spec["paths"])
        assert _ids(containerd.task_pid(name)) == (["65532"] * 4, ["65532"] * 4)
    finally:
        containerd.remove(name)


def test_the_pause_process_reaps_orphans_and_exits_zero_on_sigterm(containerd, built_images):
    name = f"k3svirt-pause-{uuid.uuid4().hex[:8]}"
    containerd.start(ref(built_images, "pause"), name)
    try:
        pid = containerd.task_pid(name)
        # An orphan in the sandbox's PID namespace is re-parented to pause (PID 1 there), which must reap it.
        out = subprocess.run(
            ["nsenter", "-t", str(pid), "-p", "--", "sh", "-c", "sleep 3 >/dev/null 2>&1 & echo $!"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        ns_pid = int(out)  # the orphan's pid inside the namespace; its parent shell has exited
        orphan = _host_pid_of(pid, ns_pid)
        assert _ppid(orphan) == pid, "the orphan was not handed to pause"
        poll(lambda: not Path(f"/proc/{orphan}").exists(), 10, 0.1)
        assert not Path(f"/proc/{orphan}").exists(), "pause left its orphan as a zombie"
        assert containerd.stop(name, "SIGTERM") == 0
    finally:
        containerd.remove(name)


def _host_pid_of(ns_init: int, ns_pid: int) -> int:
    """The host pid of the process that is NS_PID inside the PID namespace whose init is NS_INIT."""
    ns = os.readlink(f"/proc/{ns_init}/ns/pid")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "ns/pid") != ns:
                continue
            nspid = next(line for line in (entry / "status").read_text().splitlines() if line.startswith("NSpid:"))
        except (OSError, StopIteration):
            continue
        if int(nspid.split()[-1]) == ns_pid:
            return int(entry.name)
    raise AssertionError(f"no process {ns_pid} in the namespace of {ns_init}")


def _status(pid: int) -> dict[str, list[str]]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.split() for k, _, v in (line.partition(":") for line in lines)}


def _ppid(pid: int) -> int:
    return int(_status(pid)["PPid"][0])


def _ids(pid: int) -> tuple[list[str], list[str]]:
    """(real, effective, saved, fs uids), (the same gids) of a process."""
    status = _status(pid)
    return status["Uid"], status["Gid"]
