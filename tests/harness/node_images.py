"""Builds the node's few images without a registry: single-layer OCI archives of local files.

A stop-gap until tests/harness/images.sh (buildah, Containerfiles) builds every image: the pause
image the node's pod sandboxes need, a busybox image the node tests serve HTTP with, and a CoreDNS
image around the binary controlplane.sh's cache holds. Each image is FROM scratch: the files given,
nothing else. Archives are deterministic (fixed mtimes and owners), so a rebuild keeps the digest.

usage: node_images.py pause|busybox|coredns OUT.tar [BINARY]   -> prints the image name
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

PAUSE_IMAGE = "localhost/k3svirt/pause:3.10"
BUSYBOX_IMAGE = "localhost/k3svirt/node-test-busybox:1"
COREDNS_IMAGE = "localhost/k3svirt/coredns:{version}"
BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static

# PID 1 of every pod sandbox: keeps the pod's namespaces alive, reaps children re-parented to it
# (containers of a pod may share its PID namespace) and exits on SIGINT/SIGTERM.
PAUSE_C = r"""
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, 0, WNOHANG) > 0) {} }

int main(void) {
    struct sigaction on_stop = {.sa_handler = stop};
    struct sigaction on_child = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP | SA_RESTART};
    sigaction(SIGINT, &on_stop, 0);
    sigaction(SIGTERM, &on_stop, 0);
    sigaction(SIGCHLD, &on_child, 0);
    for (;;) pause();
}
"""


@dataclass
class Layer:
    """The files of a single image layer: path in the image -> host file, or symlink target."""

    files: dict[str, Path] = field(default_factory=dict)
    symlinks: dict[str, str] = field(default_factory=dict)

    def tar(self) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            dirs = {str(p) for name in [*self.files, *self.symlinks] for p in Path(name).parents if str(p) != "."}
            for d in sorted(dirs):
                tar.addfile(_info(d, tarfile.DIRTYPE, 0o755))
            for name, src in sorted(self.files.items()):
                data = src.read_bytes()
                info = _info(name, tarfile.REGTYPE, 0o755)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            for name, target in sorted(self.symlinks.items()):
                info = _info(name, tarfile.SYMTYPE, 0o777)
                info.linkname = target
                tar.addfile(info)
        return buf.getvalue()


def _info(name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name.lstrip("/"))
    info.type, info.mode, info.mtime, info.uid, info.gid = kind, mode, 0, 0, 0
    return info


def write_oci_archive(out: Path, image: str, layer: Layer, config: dict[str, object]) -> None:
    """Writes an OCI image layout as a tar that `ctr images import` reads, naming the image."""
    blobs: dict[str, bytes] = {}

    def blob(data: bytes) -> dict[str, object]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"digest": digest, "size": len(data)}

    layer_tar = layer.tar()
    layer_desc = {"mediaType": "application/vnd.oci.image.layer.v1.tar", **blob(layer_tar)}
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
    }
    config_desc = {"mediaType": "application/vnd.oci.image.config.v1+json", **blob(_json(image_config))}
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc,
        "layers": [layer_desc],
    }
    manifest_desc = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        **blob(_json(manifest)),
        "platform": {"architecture": "amd64", "os": "linux"},
        # containerd takes the full name from its own annotation, the OCI one carries the tag only.
        "annotations": {
            "io.containerd.image.name": image,
            "org.opencontainers.image.ref.name": image.rsplit(":", 1)[1],
        },
    }
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [manifest_desc]}
    tmp = out.with_suffix(".tmp")
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        members = {"oci-layout": _json({"imageLayoutVersion": "1.0.0"}), "index.json": _json(index)}
        members.update({f"blobs/sha256/{d.split(':', 1)[1]}": data for d, data in blobs.items()})
        tar.addfile(_info("blobs", tarfile.DIRTYPE, 0o755))
        tar.addfile(_info("blobs/sha256", tarfile.DIRTYPE, 0o755))
        for name, data in members.items():
            info = _info(name, tarfile.REGTYPE, 0o644)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    tmp.replace(out)


def _json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def build_pause(out: Path) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        src, binary = Path(tmp, "pause.c"), Path(tmp, "pause")
        src.write_text(PAUSE_C)
        subprocess.run(["gcc", "-static", "-Os", "-s", "-o", str(binary), str(src)], check=True)
        write_oci_archive(out, PAUSE_IMAGE, Layer(files={"/pause": binary}), {"Entrypoint": ["/pause"]})
    return PAUSE_IMAGE


def build_busybox(out: Path) -> str:
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True).stdout.split()
    layer = Layer(files={"/bin/busybox": BUSYBOX}, symlinks={f"/bin/{a}": "busybox" for a in applets if a != "busybox"})
    write_oci_archive(out, BUSYBOX_IMAGE, layer, {"Env": ["PATH=/bin"], "Entrypoint": ["/bin/sh"]})
    return BUSYBOX_IMAGE


def build_coredns(out: Path, binary: Path) -> str:
    version = subprocess.run([str(binary), "-version"], capture_output=True, text=True, check=True).stdout
    tag = version.split()[0].split("-", 1)[1]  # "CoreDNS-1.12.3" -> "1.12.3"
    image = COREDNS_IMAGE.format(version=tag)
    write_oci_archive(out, image, Layer(files={"/coredns": binary}), {"Entrypoint": ["/coredns"]})
    return image


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("pause", "busybox", "coredns") or (argv[0] == "coredns") != (len(argv) == 3):
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    out = Path(argv[1])
    out.parent.mkdir(parents=True, exist_ok=True)
    if argv[0] == "pause":
        print(build_pause(out))
    elif argv[0] == "busybox":
        print(build_busybox(out))
    else:
        print(build_coredns(out, Path(argv[2])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
