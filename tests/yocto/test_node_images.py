"""The images the appliance's node needs at first boot are built in the image (no registry, no
release air-gap tarball), K3s is pointed at them, every add-on whose image is not built is off,
and the gateway's TLS key is the device's own, made at first boot. Offline checks."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
import types
from pathlib import Path

import pytest
import yaml

from .conftest import LAYER, REPO, require_tool

RK = LAYER / "recipes-k3svirt"
CLASS = LAYER / "classes-recipe" / "k3svirt_oci_archive.bbclass"
K3S_CONFIG = RK / "k3svirt-k3s-config" / "files" / "config.yaml.in"
# K3s's default --cluster-dns (the kubelet's clusterDNS for every pod).
K3S_DEFAULT_CLUSTER_DNS = "10.43.0.10"


def recipe(pn: str) -> tuple[Path, str, str]:
    path = next(RK.rglob(f"{pn}_*.bb"))
    return path, path.read_text(), path.name.split("_")[1].removesuffix(".bb")


def assigned(text: str, name: str) -> str:
    m = re.search(rf'^{name} \??\??= "([^"]*)"$', text, re.M)
    assert m, name
    return m.group(1)


def built_images() -> dict[str, str]:
    """reference -> recipe name, for every recipe that writes an OCI archive."""
    out = {}
    for path in RK.rglob("*.bb"):
        text = path.read_text()
        if re.search(r"^inherit .*\bk3svirt_oci_archive\b", text, re.M):
            pv = path.name.split("_")[1].removesuffix(".bb")
            ref = assigned(text, "K3SVIRT_OCI_REF").replace("${PV}", pv)
            out[ref] = path.name.split("_")[0]
    return out


# --- K3s at first boot: only images the image carries ----------------------------------------


def test_no_release_airgap_tarball_or_unpinned_download() -> None:
    assert not list(LAYER.rglob("k3s-airgap-images*")), "the release tarball was replaced by built images"
    for f in LAYER.rglob("*"):
        if f.is_file() and f.suffix in (".bb", ".bbappend", ".inc", ".conf", ".yml", ".bbclass", ".json"):
            assert "K3S_AIRGAP" not in f.read_text(), f


def test_k3s_disables_every_addon_whose_image_is_not_built() -> None:
    cfg = yaml.safe_load(K3S_CONFIG.read_text())
    assert set(cfg["disable"]) == {"traefik", "servicelb", "metrics-server", "local-storage", "coredns"}
    assert cfg["disable-helm-controller"] is True
    text = K3S_CONFIG.read_text()
    for addon in cfg["disable"]:  # each one with its reason
        assert re.search(rf"^#   {re.escape(addon)} +\S", text, re.M), f"{addon}: no reason given"
    # nothing in the box asks for what the disabled add-ons provide
    gateway = "\n".join(p.read_text() for p in (REPO / "rest-gateway" / "k3svirt_gateway").rglob("*.py"))
    assert "LoadBalancer" not in gateway and "PersistentVolumeClaim" not in gateway
    assert "metrics.k8s.io" not in gateway and "proxy/stats/summary" in gateway
    assert cfg.get("cluster-dns", K3S_DEFAULT_CLUSTER_DNS) == K3S_DEFAULT_CLUSTER_DNS


def test_pause_image_is_the_built_one() -> None:
    cfg = yaml.safe_load(K3S_CONFIG.read_text())
    assert cfg["pause-image"] == "@K3SVIRT_PAUSE_IMAGE@"
    _, cfg_recipe, _ = recipe("k3svirt-k3s-config")
    assert "s#@K3SVIRT_PAUSE_IMAGE@#${K3SVIRT_PAUSE_IMAGE}#g" in cfg_recipe
    images = built_images()
    pause = assigned(cfg_recipe, "K3SVIRT_PAUSE_IMAGE")
    assert images.get(pause) == "k3svirt-pause-image", f"{pause} is not built by k3svirt-pause-image: {images}"
    rdeps = re.search(r'^RDEPENDS:\$\{PN\} \+= "([^"]*)"', cfg_recipe, re.M).group(1).split()
    assert set(images.values()) <= set(rdeps), "every built node image is installed with the K3s config"
    # the same sandbox image as the test node (tests/harness/images.sh), from the same pause.c
    assert pause in (REPO / "tests" / "harness" / "images.sh").read_text()
    _, text, _ = recipe("k3svirt-pause-image")
    assert assigned(text, "K3SVIRT_SUBDIR") == "tests/harness/images/pause"
    assert (REPO / "tests" / "harness" / "images" / "pause" / "pause.c").is_file()
    ext = (LAYER / "kas" / "include" / "k3svirt-externalsrc.yml").read_text()
    assert 'EXTERNALSRC:pn-k3svirt-pause-image = "${K3SVIRT_CHECKOUT}/tests/harness/images/pause"' in ext


def _manifest_docs() -> list[dict]:
    docs = []
    for f in [*(RK / "k3svirt-k3s-config" / "files").glob("*.yaml"), *RK.rglob("coredns.yaml.in")]:
        docs += [d for d in yaml.safe_load_all(f.read_text().replace("@CLUSTER_DNS@", "10.43.0.10")) if d]
    return docs


def test_every_shipped_manifest_runs_only_built_images() -> None:
    _, coredns, pv = recipe("k3svirt-coredns-image")
    ref = assigned(coredns, "K3SVIRT_OCI_REF").replace("${PV}", pv)
    images = built_images()
    containers = []
    for doc in _manifest_docs():
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        containers += spec.get("containers", []) + spec.get("initContainers", [])
    assert containers, "the CoreDNS Deployment is shipped"
    for c in containers:
        image = c["image"].replace("@IMAGE@", ref)
        assert image in images, f"{c['name']}: {image} is not built in the image"
        assert c["imagePullPolicy"] == "Never"
    assert "s#@IMAGE@#${K3SVIRT_OCI_REF}#g" in coredns and "manifests/k3svirt-05-coredns.yaml" in coredns


def test_coredns_serves_cluster_dns_unprivileged() -> None:
    _, text, pv = recipe("k3svirt-coredns-image")
    assert assigned(text, "K3SVIRT_CLUSTER_DNS") == K3S_DEFAULT_CLUSTER_DNS
    assert f"COREDNS_VERSION=v{pv}\n" in (REPO / "tests" / "harness" / "images.sh").read_text(), (
        "the appliance runs the CoreDNS version the test node runs"
    )
    docs = {d["kind"]: d for d in _manifest_docs() if d["metadata"].get("namespace") == "kube-system"}
    svc = docs["Service"]
    assert svc["metadata"]["name"] == "kube-dns" and svc["spec"]["clusterIP"] == "10.43.0.10"
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    port = int(c["args"][c["args"].index("-dns.port") + 1])
    assert port > 1024 and {p["targetPort"] for p in svc["spec"]["ports"]} == {port}
    assert {p["containerPort"] for p in c["ports"]} == {port}
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] and sc["runAsUser"] != 0 and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert assigned(text, "K3SVIRT_OCI_USER") == f"{sc['runAsUser']}:{sc['runAsGroup']}"
    corefile = docs["ConfigMap"]["data"]["Corefile"]
    assert "kubernetes cluster.local" in corefile and "forward" not in corefile  # offline: no upstream


def test_coredns_is_built_from_pinned_modules_only() -> None:
    path, text, pv = recipe("k3svirt-coredns-image")
    assert "gomod://${GO_IMPORT};version=v${PV};sha256sum=${COREDNS_MAIN_SHA256}" in text
    assert re.search(r"^require \$\{BPN\}-go-mods\.inc$", text, re.M)
    inc = (path.parent / f"{path.name.split('_')[0]}-go-mods.inc").read_text()
    assert f"for CoreDNS v{pv}:" in inc, "the module list was generated for another version"
    main = assigned(inc, "COREDNS_MAIN_SHA256")
    assert re.fullmatch(r"[0-9a-f]{64}", main)
    entries = re.findall(r"^    (gomod://\S+) \\$", inc, re.M)
    assert len(entries) > 100
    seen = set()
    for e in entries:
        m = re.fullmatch(r"gomod://([^;]+);version=([^;]+);(?:mod=1;)?sha256sum=([0-9a-f]{64})", e)
        assert m, e
        assert (m.group(1), m.group(2)) not in seen, f"duplicate {e}"
        seen.add((m.group(1), m.group(2)))
    # the build never reaches for a proxy
    for var in ("GOPROXY", "GOSUMDB"):
        assert re.search(rf'^export {var} = "off"$', text, re.M), var
    assert (LAYER / "scripts" / "update-coredns-go-mods").stat().st_mode & 0o111
    # Where the Go module cache has the proxy's zip of this version (the test node built it),
    # its sha256 is the pinned one.
    gomodcache = Path(os.environ.get("GOMODCACHE", Path.home() / "go" / "pkg" / "mod"))
    cached = gomodcache / "cache" / "download" / "github.com" / "coredns" / "coredns" / "@v" / f"v{pv}.zip"
    if cached.is_file():
        assert hashlib.sha256(cached.read_bytes()).hexdigest() == main


# --- the OCI archive writer -------------------------------------------------------------------


class FakeD:
    def __init__(self, values: dict[str, str]) -> None:
        self.values = values

    def getVar(self, name: str) -> str | None:  # noqa: N802 (bitbake's API)
        return self.values.get(name)


class Fatal(Exception):
    pass


def _fatal(msg: str) -> None:
    raise Fatal(msg)


def run_oci_archive(values: dict[str, str]) -> None:
    """Run the class's do_oci_archive body with a stand-in datastore (the real code, not a copy)."""
    text = CLASS.read_text()
    body = re.search(r"^python do_oci_archive\(\) \{\n(.*?)^\}$", text, re.M | re.S).group(1)
    src = "def do_oci_archive(d):\n" + body
    utils = types.SimpleNamespace(mkdirhier=lambda p: os.makedirs(p, exist_ok=True))
    bb = types.SimpleNamespace(fatal=_fatal, note=lambda *_: None, utils=utils)
    scope: dict = {"bb": bb, "os": os}
    exec(compile(src, str(CLASS), "exec"), scope)
    scope["do_oci_archive"](FakeD(values))


@pytest.fixture(scope="module")
def pause_archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    gcc = require_tool("gcc", "gcc + libc6-dev (tests/harness/deps.sh)")
    tmp = tmp_path_factory.mktemp("oci")
    rootfs = tmp / "rootfs"
    rootfs.mkdir()
    subprocess.run(
        [gcc, "-static", "-Os", "-s", "-o", str(rootfs / "pause"), str(REPO / "tests/harness/images/pause/pause.c")],
        check=True,
    )
    values = {
        "K3SVIRT_OCI_REF": "localhost/k3svirt/pause:3.10",
        "K3SVIRT_OCI_ROOTFS": str(rootfs),
        "K3SVIRT_OCI_ENTRYPOINT": "/pause",
        "K3SVIRT_OCI_USER": "65535:65535",
        "K3SVIRT_OCI_ARCHIVE": str(tmp / "out" / "a.tar"),
        "SOURCE_DATE_EPOCH": "1735689600",
        "TARGET_ARCH": "x86_64",
        "PN": "k3svirt-pause-image",
        "PV": "3.10",
    }
    run_oci_archive(values)
    return Path(values["K3SVIRT_OCI_ARCHIVE"]), values


def test_oci_archive_is_a_valid_image_layout(pause_archive: tuple[Path, dict[str, str]]) -> None:
    archive, values = pause_archive
    with tarfile.open(archive) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
        assert all(m.mtime == 1735689600 and m.uid == 0 for m in tar.getmembers())
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}

    def blob(desc: dict) -> bytes:
        data = files["blobs/sha256/" + desc["digest"].removeprefix("sha256:")]
        assert hashlib.sha256(data).hexdigest() == desc["digest"].removeprefix("sha256:") and len(data) == desc["size"]
        return data

    index = json.loads(files["index.json"])
    (mdesc,) = index["manifests"]
    ann = mdesc["annotations"]
    assert ann["io.containerd.image.name"] == ann["org.opencontainers.image.ref.name"] == values["K3SVIRT_OCI_REF"]
    manifest = json.loads(blob(mdesc))
    config = json.loads(blob(manifest["config"]))
    (ldesc,) = manifest["layers"]
    assert ldesc["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    layer = gzip.decompress(blob(ldesc))
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer).hexdigest()]
    assert (config["architecture"], config["os"]) == ("amd64", "linux")
    assert config["config"] == {"Entrypoint": ["/pause"], "User": "65535:65535"}
    with tarfile.open(fileobj=io.BytesIO(layer)) as lt:
        (pause,) = lt.getmembers()
        assert pause.name == "pause" and pause.mode == 0o755 and pause.uid == 0
        body = lt.extractfile(pause).read()
    assert body == (Path(values["K3SVIRT_OCI_ROOTFS"]) / "pause").read_bytes()
    assert body[:4] == b"\x7fELF"


def test_oci_archive_is_reproducible(pause_archive: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    archive, values = pause_archive
    again = dict(values, K3SVIRT_OCI_ARCHIVE=str(tmp_path / "b.tar"))
    os.utime(Path(values["K3SVIRT_OCI_ROOTFS"]) / "pause", (0, 0))  # file times do not leak in
    run_oci_archive(again)
    assert (tmp_path / "b.tar").read_bytes() == archive.read_bytes()


def test_oci_archive_refuses_bad_input(tmp_path: Path) -> None:
    base = {"K3SVIRT_OCI_ROOTFS": str(tmp_path), "SOURCE_DATE_EPOCH": "0", "TARGET_ARCH": "x86_64"}
    with pytest.raises(Fatal, match="full reference with a tag"):
        run_oci_archive(dict(base, K3SVIRT_OCI_REF="localhost/k3svirt/pause"))
    with pytest.raises(Fatal, match="is empty"):
        run_oci_archive(dict(base, K3SVIRT_OCI_REF="localhost/x:1"))


def test_oci_archive_is_read_by_a_real_image_tool(pause_archive: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """containers/image (buildah) verifies every digest and size when it loads the archive."""
    buildah = require_tool("buildah", "buildah (tests/harness/deps.sh)")
    archive, values = pause_archive
    store = ["--root", str(tmp_path / "root"), "--runroot", str(tmp_path / "run"), "--storage-driver", "vfs"]
    try:
        subprocess.run([buildah, *store, "pull", "--quiet", f"oci-archive:{archive}"], check=True, capture_output=True)
        out = subprocess.run(
            [buildah, *store, "inspect", "--type", "image", values["K3SVIRT_OCI_REF"]],
            check=True,
            capture_output=True,
            text=True,
        )
        oci = json.loads(out.stdout)["OCIv1"]
        assert oci["config"]["Entrypoint"] == ["/pause"] and oci["config"]["User"] == "65535:65535"
    finally:
        subprocess.run([buildah, *store, "rmi", "--all", "--force"], capture_output=True)
        shutil.rmtree(tmp_path / "root", ignore_errors=True)


def test_oci_archive_is_imported_and_unpacked_by_containerd(
    pause_archive: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """K3s imports agent/images with containerd's own importer: a private containerd imports the
    archive under its reference (io.containerd.image.name) and unpacks the layer (diff_id checked)."""
    containerd = require_tool("containerd", "containerd (tests/harness/deps.sh)")
    ctr = require_tool("ctr", "containerd (tests/harness/deps.sh)")
    archive, values = pause_archive
    sock = tmp_path / "ctd.sock"
    (tmp_path / "config.toml").write_text(
        f'version = 2\nroot = "{tmp_path}/root"\nstate = "{tmp_path}/state"\n'
        f'[grpc]\n  address = "{sock}"\n'
        '[plugins."io.containerd.grpc.v1.cri"]\n  disable_tcp_service = true\n'
    )
    log = (tmp_path / "containerd.log").open("w")
    daemon = subprocess.Popen([containerd, "--config", str(tmp_path / "config.toml")], stdout=log, stderr=log)
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.1)
        base = [ctr, "--address", str(sock), "-n", "k8s.io", "images"]
        imp = subprocess.run([*base, "import", "--snapshotter", "native", str(archive)], capture_output=True, text=True)
        assert imp.returncode == 0, imp.stderr + (tmp_path / "containerd.log").read_text()[-2000:]
        assert f"unpacking {values['K3SVIRT_OCI_REF']}" in imp.stdout and "done" in imp.stdout
        refs = subprocess.run([*base, "ls", "-q"], capture_output=True, text=True, check=True).stdout.split()
        assert values["K3SVIRT_OCI_REF"] in refs
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        log.close()
        shutil.rmtree(tmp_path / "root", ignore_errors=True)


# --- the gateway's TLS: per device, made on the box ---------------------------------------------

GW = RK / "k3svirt-gateway"
TLS = GW / "files" / "k3svirt-gateway-tls"


def test_gateway_serves_https_with_a_first_boot_key() -> None:
    unit = (GW / "files" / "k3svirt-gateway.service").read_text()
    pre = [ln for ln in unit.splitlines() if ln.startswith("ExecStartPre=")]
    # first: a broken certificate fails the start at once, not after the 600 s API wait
    assert pre[0] == "ExecStartPre=+@LIBEXECDIR@/k3svirt/k3svirt-gateway-tls"
    default = dict(
        ln.split("=", 1)
        for ln in (GW / "files" / "k3svirt-gateway.default").read_text().splitlines()
        if ln and not ln.startswith("#")
    )
    for name in ("K3SVIRT_GATEWAY_TLS_CERT", "K3SVIRT_GATEWAY_TLS_KEY"):
        assert default[name].startswith("/var/lib/k3svirt-gateway/"), "on /var: per device, kept across updates"
    _, text, _ = recipe("k3svirt-gateway")
    assert "${libexecdir}/k3svirt/k3svirt-gateway-tls" in text
    rdeps = " ".join(re.findall(r'^RDEPENDS:\$\{PN\} \+= "([^"]*)"', text.replace("\\\n", " "), re.M)).split()
    assert "openssl-bin" in rdeps, "the image carries the tool that makes the key"
    # no key or certificate is made or shipped at build time
    for f in LAYER.rglob("*"):
        if f.is_file():
            assert f.suffix not in (".pem", ".key", ".crt"), f
            if f.suffix in (".bb", ".bbappend", ".bbclass", ".inc", ".conf"):
                assert "openssl req" not in f.read_text(), f


def _tls(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    openssl = require_tool("openssl", "openssl")
    group = subprocess.run(["id", "-gn"], capture_output=True, text=True, check=True).stdout.strip()
    full = dict(
        os.environ,
        K3SVIRT_GATEWAY_TLS_CERT=str(tmp_path / "tls" / "gateway.crt"),
        K3SVIRT_GATEWAY_TLS_KEY=str(tmp_path / "tls" / "gateway.key"),
        K3SVIRT_GATEWAY_GROUP=group,
        K3SVIRT_OPENSSL=openssl,
    )
    full.update(env)
    return subprocess.run(["sh", str(TLS)], env=full, capture_output=True, text=True, timeout=60)


def _openssl(*args: str) -> str:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=True).stdout


def test_gateway_tls_generates_once_and_keeps_it(tmp_path: Path) -> None:
    first = _tls(tmp_path)
    assert first.returncode == 0, first.stderr
    cert, key = tmp_path / "tls" / "gateway.crt", tmp_path / "tls" / "gateway.key"
    assert key.stat().st_mode & 0o777 == 0o640 and (tmp_path / "tls").stat().st_mode & 0o777 == 0o750
    text = _openssl("x509", "-noout", "-text", "-in", str(cert))
    for san in ("DNS:k3svirt.local", "IP Address:10.254.254.1", "IP Address:127.0.0.1"):
        assert san in text
    assert "TLS Web Server Authentication" in text and "CA:FALSE" in text
    assert _openssl("x509", "-noout", "-pubkey", "-in", str(cert)) == _openssl("pkey", "-pubout", "-in", str(key))
    before = (cert.read_bytes(), key.read_bytes())
    second = _tls(tmp_path)
    assert second.returncode == 0 and "using" in second.stdout
    assert (cert.read_bytes(), key.read_bytes()) == before, "an existing pair is never replaced"
    # another run elsewhere makes another key: nothing is shared between devices
    other = tmp_path / "other"
    other.mkdir()
    assert _tls(other).returncode == 0
    assert (other / "tls" / "gateway.key").read_bytes() != key.read_bytes()


def test_gateway_tls_refuses_broken_pairs(tmp_path: Path) -> None:
    assert _tls(tmp_path).returncode == 0
    other = tmp_path / "other"
    other.mkdir()
    assert _tls(other).returncode == 0
    # your certificate with someone else's key
    mixed = _tls(tmp_path, K3SVIRT_GATEWAY_TLS_KEY=str(other / "tls" / "gateway.key"))
    assert mixed.returncode != 0 and "is not the key of" in mixed.stderr
    # half a pair: nothing is generated over it
    (tmp_path / "tls" / "gateway.key").unlink()
    half = _tls(tmp_path)
    assert half.returncode != 0 and "only one of" in half.stderr
    assert not (tmp_path / "tls" / "gateway.key").exists()
    (tmp_path / "tls" / "gateway.crt").write_text("not a certificate\n")
    (tmp_path / "tls" / "gateway.key").write_text("not a key\n")
    junk = _tls(tmp_path)
    assert junk.returncode != 0 and "is not a PEM certificate" in junk.stderr


def test_update_is_confirmed_only_when_the_built_images_run() -> None:
    """RAUC's mark-good waits for the cluster DNS from the image's own CoreDNS archive, within
    the unit's start timeout (wait-api 600 s + the rollout's own timeout)."""
    good = (
        LAYER / "dynamic-layers" / "rauc" / "recipes-k3svirt" / "k3svirt-rauc" / "files" / "k3svirt-mark-good.service"
    )
    starts = [ln.removeprefix("ExecStart=") for ln in good.read_text().splitlines() if ln.startswith("ExecStart=")]
    assert starts[-1] == "/usr/bin/rauc status mark-good"
    rollout = next(s for s in starts if "rollout status deployment/coredns" in s)
    assert starts.index(rollout) < len(starts) - 1 and "-n kube-system" in rollout
    budget = int(re.search(r"--timeout=(\d+)s", rollout).group(1)) + 600
    assert int(re.search(r"^TimeoutStartSec=(\d+)$", good.read_text(), re.M).group(1)) > budget
    assert "Environment=KUBECONFIG=/etc/rancher/k3s/k3s.yaml" in good.read_text()
