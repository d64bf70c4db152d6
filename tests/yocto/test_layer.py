"""Offline consistency checks of meta-k3svirt: what the recipes reference
exists, Python runtime deps match the packages' pyproject.toml, the N305
tune really excludes AVX-512, and the boot/k3s/sysctl config is well formed."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from .conftest import LAYER, REPO, require_tool

RECIPES = sorted(LAYER.rglob("*.bb")) + sorted(LAYER.rglob("*.bbappend"))


def var(text: str, name: str) -> str:
    """Concatenate every assignment of NAME (=, +=, :append...) in a recipe, continuation lines joined."""
    joined = text.replace("\\\n", " ")
    vals = re.findall(rf"^{re.escape(name)}(?::[\w${{}}-]+)*\s*(?:\+|\?\?|\?|:)?=\s*\"(.*?)\"", joined, re.M)
    return " ".join(vals)


def test_layer_files_present() -> None:
    for rel in (
        "conf/layer.conf",
        "conf/distro/k3svirt.conf",
        "conf/machine/n305.conf",
        "conf/machine/include/tune-gracemont.inc",
        "files/wic/k3svirt-efi.wks.in",
        "recipes-core/images/k3svirt-image.bb",
        "recipes-kernel/linux/linux-yocto_%.bbappend",
        "README.md",
    ):
        assert (LAYER / rel).is_file(), rel


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_local_src_uri_files_exist(recipe: Path) -> None:
    text = recipe.read_text()
    search = [recipe.parent / "files", recipe.parent / recipe.name.split("_")[0], recipe.parent]
    pn = recipe.name.split("_")[0].removesuffix(".bb")
    search.append(recipe.parent / pn)
    for extra in re.findall(r'FILESEXTRAPATHS:prepend(?::\w+)? := "([^"]*)"', text):
        for part in extra.split(":"):
            part = part.replace("${K3SVIRT_SRCDIR}", str(REPO)).replace("${THISDIR}", str(recipe.parent))
            part = part.replace("${PN}", pn)
            if part:
                search.append(Path(part))
    for url in re.findall(r"file://([^\s;\"}]+)", var(text, "SRC_URI")):
        if "${" in url:
            continue
        hits = [d / url for d in search if (d / url).exists()]
        assert hits, f"{recipe.name}: file://{url} not found in {[str(s) for s in search]}"


def test_crds_dir_feeds_k3s_manifests() -> None:
    # The k3s config recipe copies crds/*.yaml into the K3s auto-deploy dir
    # and fails the build when there are none.
    assert (REPO / "crds").is_dir()
    recipe = next(LAYER.rglob("k3svirt-k3s-config_*.bb")).read_text()
    assert "file://crds" in recipe and "rancher/k3s/server" in recipe and "/manifests" in recipe
    assert "bbfatal" in recipe
    # k3svirt-wait-api waits for exactly the CRDs that crds/ defines.
    names = set()
    for crd in (REPO / "crds").glob("*.yaml"):
        for doc in yaml.safe_load_all(crd.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                names.add(doc["metadata"]["name"])
    assert names, "crds/ has no CustomResourceDefinition: the image would boot without the k3svirt API"
    wait = (next(LAYER.rglob("k3svirt-wait-api"))).read_text()
    default = re.search(r'crds="\$\{K3SVIRT_CRDS:-([^}]*)\}"', wait).group(1).split()
    assert set(default) == names, f"k3svirt-wait-api waits for {sorted(default)}, crds/ has {sorted(names)}"


def _oe_name(dep: str) -> str:
    name = re.split(r"[<>=!~;\[ ]", dep, maxsplit=1)[0].strip().lower().replace("_", "-")
    special = {"libvirt-python": "libvirt-python", "python-json-logger": "python3-json-logger"}
    return special.get(name, f"python3-{name}")


@pytest.mark.parametrize(
    "pkg_dir,recipe_glob",
    [
        ("common", "python3-k3svirt-common_*.bb"),
        ("operator", "k3svirt-operator_*.bb"),
        ("rest-gateway", "k3svirt-gateway_*.bb"),
    ],
)
def test_runtime_deps_cover_pyproject(pkg_dir: str, recipe_glob: str) -> None:
    project = tomllib.loads((REPO / pkg_dir / "pyproject.toml").read_text())["project"]
    recipe_path = next(LAYER.rglob(recipe_glob))
    text = recipe_path.read_text()
    rdepends = set(var(text, "RDEPENDS").split())
    wanted = {_oe_name(d) for d in project.get("dependencies", [])}
    missing = sorted(wanted - rdepends)
    assert not missing, f"{recipe_path.name} lacks RDEPENDS for {missing} ({pkg_dir}/pyproject.toml)"
    # and no stale Python deps the package dropped (they cost image space)
    stale = sorted(p for p in rdepends if p.startswith("python3-") and p not in wanted)
    assert not stale, f"{recipe_path.name} RDEPENDS on {stale}, which {pkg_dir}/pyproject.toml no longer lists"
    version = recipe_path.name.split("_")[1].removesuffix(".bb")
    assert version == project["version"], f"{recipe_path.name}: PV {version} != pyproject {project['version']}"
    assert "python_setuptools_build_meta" in text  # matches build-backend setuptools.build_meta
    backend = tomllib.loads((REPO / pkg_dir / "pyproject.toml").read_text())["build-system"]["build-backend"]
    assert backend == "setuptools.build_meta"


def test_python_deps_missing_from_meta_python_have_recipes() -> None:
    ours = {p.name.split("_")[0] for p in (LAYER / "recipes-devtools" / "python").glob("*.bb")}
    assert {
        "python3-kopf",
        "python3-iso8601",
        "python3-json-logger",
        "python3-prometheus-client",
    } <= ours
    kopf = next(LAYER.rglob("python3-kopf_*.bb")).read_text()
    for dep in ("python3-json-logger", "python3-iso8601", "python3-aiohttp", "python3-click"):
        assert dep in kopf
    # No product package uses the `kubernetes` client any more (k3svirt_common.kube is the one client).
    assert not {"python3-kubernetes", "python3-durationpy"} & ours


@pytest.mark.parametrize("recipe", sorted((LAYER / "recipes-devtools" / "python").glob("*.bb")), ids=lambda p: p.name)
def test_pypi_recipes_are_pinned(recipe: Path) -> None:
    text = recipe.read_text()
    assert re.search(r'^SRC_URI\[sha256sum\] = "[0-9a-f]{64}"$', text, re.M)
    assert re.search(r"LIC_FILES_CHKSUM = \"file://LICENSE;md5=[0-9a-f]{32}", text)
    assert "inherit pypi " in text


def test_gracemont_tune_has_no_avx512() -> None:
    """Compile-time check with the host gcc: the tune's flags enable AVX2/AES/SHA/GFNI/AVX-VNNI, never AVX-512."""
    gcc = require_tool("gcc", "gcc")
    tune = (LAYER / "conf" / "machine" / "include" / "tune-gracemont.inc").read_text()
    ccargs = re.search(r"'gracemont', ' ([^']+)'", tune).group(1).split()
    assert "-march=alderlake" in ccargs
    res = subprocess.run([gcc, *ccargs, "-dM", "-E", "-x", "c", "/dev/null"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    macros = set(re.findall(r"#define (__\w+__) 1", res.stdout))
    for want in (
        "__AVX2__",
        "__FMA__",
        "__BMI2__",
        "__AES__",
        "__PCLMUL__",
        "__SHA__",
        "__GFNI__",
        "__VAES__",
        "__AVXVNNI__",
        "__SSE4_2__",
        "__MOVBE__",
    ):
        assert want in macros, f"{want} missing with {ccargs}"
    avx512 = sorted(m for m in macros if m.startswith("__AVX512"))
    assert not avx512, f"Gracemont has no AVX-512 but the tune enables {avx512}"
    machine = (LAYER / "conf" / "machine" / "n305.conf").read_text()
    assert "require conf/machine/include/tune-gracemont.inc" in machine


def test_distro_features() -> None:
    conf = (LAYER / "conf" / "distro" / "k3svirt.conf").read_text()
    features = set(re.search(r'^DISTRO_FEATURES = "(.*?)"', conf.replace("\\\n", " "), re.M | re.S).group(1).split())
    assert {"systemd", "usrmerge", "virtualization", "seccomp", "kvm", "k3s", "efi"} <= features
    # wrynose appends DISTRO_FEATURES_DEFAULTS minus DISTRO_FEATURES_OPTED_OUT
    # to DISTRO_FEATURES: every unwanted default must be opted out.
    opted_out = set(var(conf, "DISTRO_FEATURES_OPTED_OUT").split())
    unwanted = {
        "x11",
        "wayland",
        "opengl",
        "vulkan",
        "alsa",
        "pulseaudio",
        "bluetooth",
        "wifi",
        "ptest",
        "gobject-introspection-data",
        "nfs",
        "zeroconf",
        "3g",
        "nfc",
        "debuginfod",
        "multiarch",
    }
    assert unwanted <= opted_out, f"not opted out: {sorted(unwanted - opted_out)}"
    assert not features & unwanted
    assert re.search(r'^INIT_MANAGER = "systemd"$', conf, re.M)
    assert 'INHERIT += "rm_work"' in conf


def test_wks_boots_efi_with_iommu_and_hugepages() -> None:
    wks = (LAYER / "files" / "wic" / "k3svirt-efi.wks.in").read_text()
    assert re.search(r"^part /boot --source bootimg_efi --sourceparams=\"loader=systemd-boot\"", wks, re.M)
    boot = re.search(r'^bootloader .*--append="([^"]*)"', wks, re.M)
    assert boot and "--ptable gpt" in boot.group(0)
    args = boot.group(1).split()
    for want in ("intel_iommu=on", "iommu=pt", "hugepagesz=2M", "hugepages=${K3SVIRT_HUGEPAGES}"):
        assert want in args, want
    image = (LAYER / "recipes-core" / "images" / "k3svirt-image.bb").read_text()
    # hard "=": machine confs (qemux86-64) set WKS_FILE ?= themselves
    assert re.search(r'^WKS_FILE = "k3svirt-efi.wks.in"$', image, re.M)
    # every ${VAR} the template uses is given a default by the image or the distro
    distro = (LAYER / "conf" / "distro" / "k3svirt.conf").read_text()
    for v in set(re.findall(r"\$\{(K3SVIRT_\w+)\}", wks)):
        assert re.search(rf"^{v} \??\??=", image + distro, re.M), f"{v} has no default"


def test_image_contents() -> None:
    image = (LAYER / "recipes-core" / "images" / "k3svirt-image.bb").read_text()
    assert "inherit core-image" in image and "ssh-server-openssh" in image
    install = set(var(image, "IMAGE_INSTALL").split())
    for pkg in (
        "qemu-system-x86-64",
        "qemu-common",
        "libvirt",
        "libvirt-libvirtd",
        "libvirt-python",
        "k3s",
        "k3s-server",
        "k3svirt-k3s-config",
        "k3svirt-operator",
        "k3svirt-gateway",
        "k3svirt-host-config",
    ):
        assert pkg in install, pkg


def test_k3s_config_and_manifests() -> None:
    files = next(LAYER.rglob("k3svirt-k3s-config_*.bb")).parent / "files"
    cfg = yaml.safe_load((files / "config.yaml").read_text())
    assert {"traefik", "servicelb", "metrics-server"} <= set(cfg["disable"])
    ns = yaml.safe_load((files / "k3svirt-namespace.yaml").read_text())
    assert ns["kind"] == "Namespace"


def test_sysctl_and_udev() -> None:
    files = next(LAYER.rglob("k3svirt-host-config_*.bb")).parent / "files"
    for line in (files / "60-k3svirt.conf.in").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert re.match(r"^[a-z0-9_.-]+ = \S+$", line), line
    assert "vm.nr_hugepages = @HUGEPAGES@" in (files / "60-k3svirt.conf.in").read_text()
    rules = (files / "65-k3svirt-kvm.rules").read_text()
    assert 'KERNEL=="kvm", GROUP="kvm", MODE="0666"' in rules


def test_units_placeholders_are_substituted_by_recipes() -> None:
    for unit in LAYER.rglob("*.service"):
        placeholders = set(re.findall(r"@(\w+)@", unit.read_text()))
        recipe = next(unit.parent.parent.glob("*.bb")).read_text()
        for ph in placeholders:
            assert f"s#@{ph}@#" in recipe, f"{unit.name}: @{ph}@ not substituted by its recipe"
