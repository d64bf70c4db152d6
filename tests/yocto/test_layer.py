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


def _search_dirs(recipe: Path, text: str) -> list[Path]:
    pn = recipe.name.split("_")[0].removesuffix(".bb").removesuffix(".bbappend")
    search = [recipe.parent / "files", recipe.parent / pn, recipe.parent]
    for extra in re.findall(r'FILESEXTRAPATHS:prepend(?::\w+)? := "([^"]*)"', text):
        for part in extra.split(":"):
            part = part.replace("${THISDIR}", str(recipe.parent)).replace("${PN}", pn)
            if part:
                search.append(Path(part))
    return search


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_local_src_uri_files_exist_inside_the_layer(recipe: Path) -> None:
    """Every file:// a recipe names is found in the layer itself (a copied layer must build)."""
    text = recipe.read_text()
    search = _search_dirs(recipe, text)
    for d in search:
        assert d.resolve().is_relative_to(LAYER.resolve()), f"{recipe.name}: FILESEXTRAPATHS leaves the layer: {d}"
    for url in re.findall(r"file://([^\s;\"}]+)", var(text, "SRC_URI")):
        if "${" in url:
            continue
        hits = [d / url for d in search if (d / url).exists()]
        assert hits, f"{recipe.name}: file://{url} not found in {[str(s) for s in search]}"


def test_layer_is_self_contained() -> None:
    """Nothing in the layer reads the enclosing checkout: no K3SVIRT_SRCDIR, no LAYERDIR/.. paths;
    the k3svirt recipes fetch a pinned git commit; externalsrc is set by kas only."""
    for f in LAYER.rglob("*"):
        if f.suffix not in (".bb", ".bbappend", ".inc", ".conf", ".bbclass"):
            continue
        text = f.read_text()
        assert "K3SVIRT_SRCDIR" not in text, f
        assert not re.search(r"LAYERDIR\}?['\"]?\s*,\s*['\"]\.\.|LAYERDIR\}/\.\.", text), (
            f"{f} reaches outside the layer"
        )
        assert "EXTERNALSRC" not in text, f"{f}: externalsrc belongs in kas (development builds)"
    inc = (LAYER / "recipes-k3svirt" / "k3svirt-source.inc").read_text()
    assert re.search(r'^K3SVIRT_GIT_URI \?\?= "git://[^"]+;protocol=https;branch=\w+"$', inc, re.M)
    rev = re.search(r'^K3SVIRT_SRCREV \?\?= "([0-9a-f]{40})"$', inc, re.M)
    assert rev, "K3SVIRT_SRCREV must be a full commit"
    # With full history (not a shallow CI clone) the pin must be a commit of this repository.
    shallow = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--is-shallow-repository"], capture_output=True, text=True
    )
    if shallow.returncode == 0 and shallow.stdout.strip() == "false":
        known = subprocess.run(
            ["git", "-C", str(REPO), "cat-file", "-e", f"{rev.group(1)}^{{commit}}"], capture_output=True
        )
        assert known.returncode == 0, f"K3SVIRT_SRCREV {rev.group(1)} is not a commit of this repository"
    assert 'SRCREV_k3svirt = "${K3SVIRT_SRCREV}"' in inc and "destsuffix=k3svirt" in inc
    users = {
        "python3-k3svirt-common": "common",
        "k3svirt-operator": "operator",
        "k3svirt-gateway": "rest-gateway",
        "k3svirt-k3s-config": "",
    }
    ext = yaml.safe_load((LAYER / "kas" / "include" / "k3svirt-externalsrc.yml").read_text())
    conf = ext["local_conf_header"]["20-k3svirt-externalsrc"]
    assert 'INHERIT += "externalsrc"' in conf
    for pn, sub in users.items():
        text = next(LAYER.rglob(f"{pn}_*.bb")).read_text()
        assert "require recipes-k3svirt/k3svirt-source.inc" in text, pn
        got = re.search(r'^K3SVIRT_SUBDIR = "([^"]*)"$', text, re.M)
        assert (got.group(1) if got else "") == sub, pn
        assert (REPO / sub / ("pyproject.toml" if sub else "crds")).exists(), sub
        want = "${K3SVIRT_CHECKOUT}" + (f"/{sub}" if sub else "")
        assert f'EXTERNALSRC:pn-{pn} = "{want}"' in conf, pn
    release = yaml.safe_load((LAYER / "kas" / "opt-release.yml").read_text())["local_conf_header"]
    assert 'INHERIT:remove = "externalsrc"' in "\n".join(release.values())


def test_no_overlayed_recipes() -> None:
    """yocto-check-layer: the layer adds no recipe an upstream layer of the build already has
    (upstream-recipes.txt: the recipe names of the pinned oe-core, meta-openembedded,
    meta-virtualization and meta-rauc, listed off-CI from those commits)."""
    lines = (Path(__file__).parent / "upstream-recipes.txt").read_text().splitlines()
    upstream = {ln for ln in lines if ln and not ln.startswith("#")}
    assert len(upstream) > 2000, "upstream recipe list looks truncated"
    assert {"python3-iso8601", "k3s", "rauc", "libvirt"} <= upstream
    ours = {p.name.split("_")[0].removesuffix(".bb") for p in LAYER.rglob("*.bb")}
    assert not ours & upstream, f"recipes overlaying an upstream recipe: {sorted(ours & upstream)}"


MACHINE_VARS = re.compile(r"\$\{(K3SVIRT_CPUS_\w+|K3SVIRT_HUGEPAGES\w*|MACHINE)\}")


@pytest.mark.parametrize("recipe", sorted(LAYER.rglob("*.bb*")), ids=lambda p: p.name)
def test_machine_specific_packages_are_marked(recipe: Path) -> None:
    """yocto-check-layer: a package whose content depends on machine settings has
    PACKAGE_ARCH = MACHINE_ARCH and is not allarch (images and bundles are per machine anyway)."""
    text = recipe.read_text()
    if "inherit core-image" in text or "inherit bundle" in text:
        return
    if MACHINE_VARS.search(text):
        assert re.search(r'^PACKAGE_ARCH(:k3svirt)? = "\$\{MACHINE_ARCH\}"$', text, re.M), recipe.name
        assert not re.search(r"^inherit .*\ballarch\b", text, re.M), recipe.name


def test_crds_dir_feeds_k3s_manifests() -> None:
    # The k3s config recipe copies crds/*.yaml into the K3s auto-deploy dir
    # and fails the build when there are none.
    assert (REPO / "crds").is_dir()
    recipe = next(LAYER.rglob("k3svirt-k3s-config_*.bb")).read_text()
    # S is the repository root (k3svirt-source.inc, no K3SVIRT_SUBDIR)
    assert "for crd in ${S}/crds/*.yaml" in recipe and "rancher/k3s/server" in recipe and "/manifests" in recipe
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
    assert {"python3-kopf", "python3-json-logger", "python3-prometheus-client"} <= ours
    # oe-core has python3-iso8601 (same version): ours would overlay it.
    assert "python3-iso8601" not in ours
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


def test_wks_boots_efi_ab_slots_iommu_hugepages() -> None:
    wks = (LAYER / "files" / "wic" / "k3svirt-efi.wks.in").read_text()
    assert re.search(r"^part /boot --source bootimg_efi --sourceparams=\"loader=systemd-boot\"", wks, re.M)
    parts = re.findall(r"^part .*$", wks, re.M)
    assert len(parts) == 4, parts
    assert "--label rootA" in parts[1] and "--label rootB" in parts[2]
    for slot in parts[1:3]:
        assert "--fixed-size ${K3SVIRT_ROOT_SLOT_SIZE}" in slot, slot
    assert "--source" not in parts[2], "rootB is written by updates, not by the build"
    # /var last, typed as a systemd "var" partition so systemd-repart grows it; growfs for ext4
    assert parts[3].startswith("part /var ") and "--part-type 4d21b016-b534-45c2-a9fb-5c16e091fd2d" in parts[3]
    assert "x-systemd.growfs" in parts[3]
    repart = next(LAYER.rglob("50-var.conf")).read_text()
    assert re.search(r"^Type=var$", repart, re.M)
    boot = re.search(r'^bootloader .*--append="([^"]*)"', wks, re.M)
    assert boot and "--ptable gpt" in boot.group(0)
    args = boot.group(1).split()
    for want in (
        "intel_iommu=on",
        "iommu=pt",
        "default_hugepagesz=1G",
        "hugepages=${K3SVIRT_HUGEPAGES_1G}",
        "hugepages=${K3SVIRT_HUGEPAGES}",
        "${K3SVIRT_CPU_ISOLATION_CMDLINE}",
        "panic=10",
    ):
        assert want in args, want
    # each hugepages= follows the hugepagesz= it counts
    i1, i2 = args.index("hugepages=${K3SVIRT_HUGEPAGES_1G}"), args.index("hugepages=${K3SVIRT_HUGEPAGES}")
    assert args[i1 - 1] == "hugepagesz=1G" and args[i2 - 1] == "hugepagesz=2M"
    image = (LAYER / "recipes-core" / "images" / "k3svirt-image.bb").read_text()
    # hard "=": machine confs (qemux86-64) set WKS_FILE ?= themselves
    assert re.search(r'^WKS_FILE = "k3svirt-efi.wks.in"$', image, re.M)
    # every ${VAR} the template uses is given a default by the image or the distro
    distro = (LAYER / "conf" / "distro" / "k3svirt.conf").read_text()
    for v in set(re.findall(r"\$\{(K3SVIRT_\w+)\}", wks)):
        assert re.search(rf"^{v} \??\??=", image + distro, re.M), f"{v} has no default"


def test_image_fstypes_set_once_per_machine() -> None:
    image = (LAYER / "recipes-core" / "images" / "k3svirt-image.bb").read_text()
    assert not re.search(r"^IMAGE_FSTYPES", image, re.M), "the image must not add to the machine's IMAGE_FSTYPES"
    machine = (LAYER / "conf" / "machine" / "n305.conf").read_text()
    n305 = re.findall(r'^IMAGE_FSTYPES\S* *\S?= "([^"]*)"', machine, re.M)
    assert n305 == ["wic.zst wic.bmap"], n305
    qemu = yaml.safe_load((LAYER / "kas" / "k3svirt-qemux86-64.yml").read_text())["local_conf_header"]
    qemu_types = re.findall(r'^\s*IMAGE_FSTYPES = "([^"]*)"$', "\n".join(qemu.values()), re.M)
    assert qemu_types == ["wic wic.bmap"], qemu_types


def test_rootfs_size_budget_is_enforced() -> None:
    image = (LAYER / "recipes-core" / "images" / "k3svirt-image.bb").read_text()
    m = re.search(r'^IMAGE_ROOTFS_MAXSIZE = "(\d+)"$', image, re.M)
    assert m and int(m.group(1)) <= 600 * 1024, "rootfs budget: <= 600 MB, enforced by do_image"
    slot = re.search(r'^K3SVIRT_ROOT_SLOT_SIZE \?= "(\d+)M"$', image, re.M)
    assert slot and int(slot.group(1)) >= 2 * 600, "an A/B slot must hold the budget with room to grow"


def test_authorized_keys_are_in_rootfs_checksums() -> None:
    image = (LAYER / "recipes-core" / "images" / "k3svirt-image.bb").read_text()
    line = re.search(r"^do_rootfs\[file-checksums\] \+= (.*)$", image, re.M)
    assert line and "K3SVIRT_ROOT_AUTHORIZED_KEYS" in line.group(1) and ":True" in line.group(1)


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
    cfg = yaml.safe_load((files / "config.yaml.in").read_text())
    assert {"traefik", "servicelb", "metrics-server"} <= set(cfg["disable"])
    ns = yaml.safe_load((files / "k3svirt-namespace.yaml").read_text())
    assert ns["kind"] == "Namespace"


def test_sysctl_udev_hugetlbfs() -> None:
    files = next(LAYER.rglob("k3svirt-host-config_*.bb")).parent / "files"
    sysctl = (files / "60-k3svirt.conf").read_text()
    for line in sysctl.splitlines():
        if line.strip() and not line.startswith("#"):
            assert re.match(r"^[a-z0-9_.-]+ = \S+$", line), line
    # default_hugepagesz=1G: vm.nr_hugepages would count 1 GiB pages; the command line is the one place.
    assert not re.search(r"^vm\.nr_hugepages", sysctl, re.M)
    rules = (files / "65-k3svirt-kvm.rules").read_text()
    assert 'KERNEL=="kvm", GROUP="kvm", MODE="0666"' in rules
    mount = (files / "dev-hugepages2M.mount").read_text()
    assert "Options=pagesize=2M" in mount and "Where=/dev/hugepages2M" in mount
    libvirt = (LAYER / "recipes-extended" / "libvirt" / "libvirt_%.bbappend").read_text()
    assert 'hugetlbfs_mount = ["/dev/hugepages", "/dev/hugepages2M"]' in libvirt


def test_units_placeholders_are_substituted_by_recipes() -> None:
    for unit in LAYER.rglob("*.service"):
        placeholders = set(re.findall(r"@(\w+)@", unit.read_text()))
        if not placeholders:
            continue
        recipe = next(unit.parent.parent.glob("*.bb")).read_text()
        for ph in placeholders:
            assert f"s#@{ph}@#" in recipe, f"{unit.name}: @{ph}@ not substituted by its recipe"
