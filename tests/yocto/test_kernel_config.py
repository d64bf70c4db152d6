"""The kernel fragments in meta-k3svirt must survive a real Kconfig merge.

Takes Debian's `linux-source` tarball (installed by tests/yocto/deps.sh),
extracts it once into ~/.cache/k3svirt/linux-source-<ver>/ (reused across
runs), generates x86_64_defconfig, merges every `.cfg` fragment with the
kernel's own scripts/kconfig/merge_config.sh and runs olddefconfig. Then every
option a fragment requests must be present in the final .config with exactly
the requested value.

Debian's tree is older than wrynose's linux-yocto (6.18), so a few options do
not exist in it yet. Those are listed in NOT_IN_OLDER_KERNELS with the reason;
the test fails if any *other* option is missing from Kconfig, and also if a
listed one does appear (so the list never goes stale).
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import subprocess
import tarfile
from pathlib import Path

import pytest

from .conftest import LAYER, require_tool

# Symbols without a prompt cannot be set by a fragment (kernel-yocto's audit reports them as
# invalid); they come from what selects them, and must come out with this value.
SELECTED = {
    "CONFIG_HUGETLB_PAGE": ("y", "selected by HUGETLBFS"),
    "CONFIG_VFIO_IOMMU_TYPE1": ("m", "selected by VFIO (VFIO_CONTAINER) on x86"),
}

FRAGMENT_DIR = LAYER / "recipes-kernel" / "linux" / "linux-yocto" / "k3svirt-kmeta" / "k3svirt"
BBAPPEND = LAYER / "recipes-kernel" / "linux" / "linux-yocto_%.bbappend"
CACHE_ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "k3svirt"

# Options that first appear in a newer kernel than Debian 12's 6.1: their
# absence from Debian's Kconfig is expected and reported, not ignored.
NOT_IN_OLDER_KERNELS = {
    "CONFIG_VFIO_CONTAINER": "added in Linux 6.2 (split from VFIO when iommufd arrived); "
    "6.1 always builds the container",
}

OPTION_RE = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
UNSET_RE = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


def parse_config(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        m = OPTION_RE.match(line)
        if m:
            values[m.group(1)] = m.group(2)
            continue
        m = UNSET_RE.match(line)
        if m:
            values[m.group(1)] = "n"
    return values


def fragments() -> list[Path]:
    return sorted(FRAGMENT_DIR.glob("*.cfg"))


def requested() -> dict[str, tuple[str, str]]:
    """option -> (value, fragment name); a conflict between fragments is a failure."""
    out: dict[str, tuple[str, str]] = {}
    for frag in fragments():
        for opt, val in parse_config(frag.read_text()).items():
            if opt in out and out[opt][0] != val:
                pytest.fail(f"{opt} set to {out[opt][0]} in {out[opt][1]} and {val} in {frag.name}")
            out[opt] = (val, frag.name)
    return out


def linux_source_tarball() -> Path:
    cands = sorted(glob.glob("/usr/src/linux-source-*.tar.xz"))
    if not cands:
        pytest.fail(
            "Debian's linux-source tarball is missing under /usr/src; "
            "run `bash tests/yocto/deps.sh` (installs package linux-source)",
            pytrace=False,
        )
    return Path(cands[-1])


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res.stdout + res.stderr


@pytest.fixture(scope="session")
def kernel_tree() -> Path:
    """Extracted tree with scripts/kconfig built and x86_64_defconfig saved; cached."""
    for tool, pkg in (("make", "make"), ("gcc", "gcc"), ("flex", "flex"), ("bison", "bison"), ("xz", "xz-utils")):
        require_tool(tool, pkg)
    tarball = linux_source_tarball()
    version = tarball.name.removeprefix("linux-source-").removesuffix(".tar.xz")
    cache = CACHE_ROOT / f"linux-source-{version}"
    tree = cache / f"linux-source-{version}"
    stamp = cache / ".extracted"
    # Re-extract when Debian updates the tarball in place (same major.minor).
    ident = f"{tarball.stat().st_size}:{int(tarball.stat().st_mtime)}"
    if not stamp.exists() or not tree.is_dir() or stamp.read_text().strip() not in ("", ident):
        cache.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tarball) as tf:
            tf.extractall(cache, filter="tar")
        stamp.write_text(ident)
    elif stamp.read_text().strip() == "":
        stamp.write_text(ident)
    # Builds go to O= directories next to the tree, which stays pristine
    # (kbuild refuses O= builds from a tree that has its own .config).
    if (tree / ".config").exists():
        _run(["make", "ARCH=x86_64", "mrproper"], cwd=tree)
    base = cache / "x86_64_defconfig"
    if not base.exists():
        build = cache / "defconfig-build"
        _run(["make", "ARCH=x86_64", f"O={build}", "x86_64_defconfig"], cwd=tree)
        base.write_text((build / ".config").read_text())
    return tree


@pytest.fixture(scope="session")
def merged_config(kernel_tree: Path) -> tuple[dict[str, str], str]:
    frags = fragments()
    assert frags, f"no .cfg fragments under {FRAGMENT_DIR}"
    key = hashlib.sha256(b"".join(f.read_bytes() for f in frags)).hexdigest()[:16]
    # A persistent O= dir keeps the built kconfig tools between runs.
    out_dir = kernel_tree.parent / "merge-build"
    out_dir.mkdir(exist_ok=True)
    base = kernel_tree.parent / "x86_64_defconfig"
    (out_dir / ".config").write_text(base.read_text())
    env = dict(os.environ, ARCH="x86_64")
    # merge_config.sh -m: merge only, then olddefconfig resolves dependencies
    # exactly as kernel-yocto's do_kernel_configme does.
    log = _run(
        [
            "scripts/kconfig/merge_config.sh",
            "-m",
            "-O",
            str(out_dir),
            str(out_dir / ".config"),
            *map(str, frags),
        ],
        cwd=kernel_tree,
        env=env,
    )
    log += _run(["make", "ARCH=x86_64", f"O={out_dir}", "olddefconfig"], cwd=kernel_tree, env=env)
    final = (out_dir / ".config").read_text()
    (CACHE_ROOT / f"merged-{key}.config").write_text(final)
    return parse_config(final), log


@pytest.fixture(scope="session")
def kconfig_symbols(kernel_tree: Path) -> set[str]:
    syms: set[str] = set()
    sym_re = re.compile(r"^\s*(?:menu)?config\s+([A-Za-z0-9_]+)\s*$")
    for kc in kernel_tree.rglob("Kconfig*"):
        try:
            for line in kc.read_text(errors="replace").splitlines():
                m = sym_re.match(line)
                if m:
                    syms.add("CONFIG_" + m.group(1))
        except OSError:
            continue
    return syms


def test_fragments_exist_and_are_referenced_by_scc() -> None:
    scc = (FRAGMENT_DIR / "k3svirt.scc").read_text()
    for frag in fragments():
        line = rf"^kconf (hardware|non-hardware) {re.escape(frag.name)}$"
        assert re.search(line, scc, re.M), f"{frag.name} is not a kconf line in k3svirt.scc"
    for name in re.findall(r"^kconf \S+ (\S+)$", scc, re.M):
        assert (FRAGMENT_DIR / name).is_file(), f"k3svirt.scc names missing {name}"


def _kernel_features(bbappend: str) -> list[str]:
    m = re.search(r'^KERNEL_FEATURES:append:k3svirt = "(.*?)"', bbappend.replace("\\\n", " "), re.M | re.S)
    assert m, "no KERNEL_FEATURES:append:k3svirt in linux-yocto_%.bbappend"
    return [f for f in re.sub(r"\$\{@[^}]*\}", "", m.group(1)).split()]


def test_k3svirt_feature_is_applied_last() -> None:
    """kernel-yocto applies SRC_URI fragments BEFORE KERNEL_FEATURES, so a .cfg in SRC_URI loses
    every conflict with a cache feature. Ours must be a kmeta directory whose .scc is the last
    KERNEL_FEATURES entry; no bare .cfg/.scc may sit in SRC_URI."""
    bb = BBAPPEND.read_text()
    src_uri = " ".join(re.findall(r'^SRC_URI:append:k3svirt = "(.*?)"', bb.replace("\\\n", " "), re.M | re.S))
    assert "file://k3svirt-kmeta;type=kmeta;destsuffix=k3svirt-kmeta" in src_uri
    assert not re.search(r"file://[^ ;]+\.(cfg|scc)", src_uri), (
        f"fragments in SRC_URI lose to KERNEL_FEATURES: {src_uri}"
    )
    feats = _kernel_features(bb)
    assert feats[-1] == "k3svirt/k3svirt.scc", f"k3svirt/k3svirt.scc must be the last feature, got {feats}"
    assert (FRAGMENT_DIR.parent / feats[-1]).is_file()


def test_configcheck_is_fatal_for_our_options(tmp_path: Path) -> None:
    """Run the bbappend's do_k3svirt_configcheck body (python) against a .config that lost one of
    our options: it must call bb.fatal naming it; with every option present it must pass."""
    bb = BBAPPEND.read_text()
    body = re.search(r"^python do_k3svirt_configcheck\(\) \{\n(.*?)^\}", bb, re.M | re.S).group(1)
    assert "addtask k3svirt_configcheck after do_kernel_configcheck before do_compile" in bb
    unpack = tmp_path / "unpack"
    (unpack / "k3svirt-kmeta").mkdir(parents=True)
    import shutil

    shutil.copytree(FRAGMENT_DIR, unpack / "k3svirt-kmeta" / "k3svirt")
    build = tmp_path / "build"
    build.mkdir()
    want = requested()

    class Fatal(Exception):
        pass

    class FakeBB:
        @staticmethod
        def fatal(msg: str) -> None:
            raise Fatal(msg)

    class FakeD:
        def getVar(self, name: str) -> str:
            return {"UNPACKDIR": str(unpack), "B": str(build)}[name]

    func = "def check(d, bb):\n" + body

    def run() -> None:
        ns: dict = {}
        exec(compile(func, "do_k3svirt_configcheck", "exec"), ns)
        ns["check"](FakeD(), FakeBB)

    lines = [f"{o}={v}" if v != "n" else f"# {o} is not set" for o, (v, _f) in sorted(want.items())]
    (build / ".config").write_text("\n".join(lines) + "\n")
    run()
    victim = "CONFIG_KVM" if "CONFIG_KVM" in want else sorted(want)[0]
    (build / ".config").write_text("\n".join(ln.replace(f"{victim}=y", f"{victim}=m") for ln in lines) + "\n")
    with pytest.raises(Fatal, match=victim):
        run()


def test_every_requested_option_exists_in_kconfig(kconfig_symbols: set[str]) -> None:
    missing = sorted(opt for opt in requested() if opt not in kconfig_symbols)
    unexpected = [o for o in missing if o not in NOT_IN_OLDER_KERNELS]
    stale = sorted(o for o in NOT_IN_OLDER_KERNELS if o in kconfig_symbols)
    for opt in missing:
        if opt in NOT_IN_OLDER_KERNELS:
            print(f"NOTE {opt}: not in Debian's kernel Kconfig: {NOT_IN_OLDER_KERNELS[opt]}")
    assert not unexpected, f"options not defined in any Kconfig of Debian's kernel: {unexpected}"
    assert not stale, f"NOT_IN_OLDER_KERNELS entries that do exist now, drop them: {stale}"


def test_every_requested_option_survives_merge(merged_config: tuple[dict[str, str], str]) -> None:
    final, _log = merged_config
    wrong = []
    for opt, (want, frag) in sorted(requested().items()):
        if opt in NOT_IN_OLDER_KERNELS:
            continue
        got = final.get(opt, "n")
        if got != want:
            wrong.append(f"{opt}: requested {want} in {frag}, got {got}")
    assert not wrong, "options that did not survive merge_config + olddefconfig:\n" + "\n".join(wrong)


def test_k3s_required_options_are_requested() -> None:
    """The options K3s's check-config.sh treats as required are all covered by a fragment."""
    k3s_required = [
        "CONFIG_NAMESPACES",
        "CONFIG_NET_NS",
        "CONFIG_PID_NS",
        "CONFIG_IPC_NS",
        "CONFIG_UTS_NS",
        "CONFIG_CGROUPS",
        "CONFIG_CGROUP_CPUACCT",
        "CONFIG_CGROUP_DEVICE",
        "CONFIG_CGROUP_FREEZER",
        "CONFIG_CGROUP_SCHED",
        "CONFIG_CPUSETS",
        "CONFIG_MEMCG",
        "CONFIG_KEYS",
        "CONFIG_VETH",
        "CONFIG_BRIDGE",
        "CONFIG_BRIDGE_NETFILTER",
        "CONFIG_IP_NF_FILTER",
        "CONFIG_IP_NF_TARGET_MASQUERADE",
        "CONFIG_NETFILTER_XT_MATCH_ADDRTYPE",
        "CONFIG_NETFILTER_XT_MATCH_CONNTRACK",
        "CONFIG_NETFILTER_XT_MATCH_IPVS",
        "CONFIG_NETFILTER_XT_MATCH_COMMENT",
        "CONFIG_NETFILTER_XT_MATCH_MULTIPORT",
        "CONFIG_IP_NF_NAT",
        "CONFIG_NF_NAT",
        "CONFIG_POSIX_MQUEUE",
        "CONFIG_VXLAN",
        "CONFIG_OVERLAY_FS",
        "CONFIG_KVM",
        "CONFIG_KVM_INTEL",
        "CONFIG_VFIO",
        "CONFIG_VFIO_PCI",
        "CONFIG_INTEL_IOMMU",
        "CONFIG_INTEL_IOMMU_SVM",
        "CONFIG_INTEL_IOMMU_DEFAULT_ON",
        "CONFIG_HUGETLBFS",
        "CONFIG_TRANSPARENT_HUGEPAGE",
        "CONFIG_VHOST_NET",
        "CONFIG_TUN",
    ]
    req = requested()
    missing = [o for o in k3s_required if o not in req or req[o][0] not in ("y", "m")]
    assert not missing, f"not requested as y/m by any fragment: {missing}"


@pytest.fixture(scope="session")
def kconfig_prompts(kernel_tree: Path) -> dict[str, bool]:
    """symbol -> has a prompt somewhere (a user-settable symbol) in the x86 build's Kconfig files."""
    prompts: dict[str, bool] = {}
    head = re.compile(r"^\s*(?:menu)?config\s+([A-Za-z0-9_]+)\s*$")
    typed = re.compile(r"""^\s*(?:bool|tristate|string|int|hex)\s+["']""")
    prompt = re.compile(r"""^\s*prompt\s+["']""")
    for kc in kernel_tree.rglob("Kconfig*"):
        rel = kc.relative_to(kernel_tree).parts
        if rel[0] == "arch" and len(rel) > 1 and rel[1] != "x86":
            continue
        cur = None
        for line in kc.read_text(errors="replace").splitlines():
            m = head.match(line)
            if m:
                cur = "CONFIG_" + m.group(1)
                prompts.setdefault(cur, False)
                continue
            if cur and (typed.match(line) or prompt.match(line)):
                prompts[cur] = True
            elif re.match(r"^\s*(endmenu|endif|endchoice|menu |choice|if |source )", line):
                cur = None
    return prompts


def test_no_fragment_sets_a_symbol_without_prompt(kconfig_prompts: dict[str, bool]) -> None:
    bad = sorted(o for o in requested() if o in kconfig_prompts and not kconfig_prompts[o])
    assert not bad, f"no prompt, cannot be set directly (set what selects them): {bad}"
    for opt in SELECTED:
        assert kconfig_prompts.get(opt) is False, f"{opt} now has a prompt: set it directly, drop it from SELECTED"
        assert opt not in requested()


def test_selected_symbols_come_out_right(merged_config: tuple[dict[str, str], str]) -> None:
    final, _log = merged_config
    for opt, (want, why) in SELECTED.items():
        assert final.get(opt, "n") == want, f"{opt} ({why}) is {final.get(opt, 'n')}, want {want}"


def test_cmdline_isolation_has_kernel_support(merged_config: tuple[dict[str, str], str]) -> None:
    """nohz_full= and rcu_nocbs= on the wks command line are ignored without these options."""
    final, _log = merged_config
    wks = (LAYER / "files" / "wic" / "k3svirt-efi.wks.in").read_text()
    distro = (LAYER / "conf" / "distro" / "k3svirt.conf").read_text()
    assert "${K3SVIRT_CPU_ISOLATION_CMDLINE}" in wks and "nohz_full=" in distro and "rcu_nocbs=" in distro
    for opt in ("CONFIG_NO_HZ_FULL", "CONFIG_RCU_NOCB_CPU", "CONFIG_CPU_ISOLATION", "CONFIG_HUGETLBFS"):
        assert final.get(opt) == "y", f"{opt}={final.get(opt)}"
