"""What the image configures at first boot, checked offline: K3s offline and CPU layout,
networkd, libvirt/QEMU defaults, unit hardening, the gateway's identity, A/B updates."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest
import yaml
from k3svirt_common import templates
from k3svirt_operator import cputopo

from tests.sysfs_fixture import N305, write_sys

from .conftest import LAYER, REPO

RK = LAYER / "recipes-k3svirt"
DISTRO = (LAYER / "conf" / "distro" / "k3svirt.conf").read_text()


def unit(path: Path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    # systemd allows repeated keys; keep the last one, as configparser does with strict=False
    cp.read_string(path.read_text())
    return cp


def cpuset(spec: str) -> set[int]:
    out: set[int] = set()
    for part in spec.split(","):
        if "-" in part:
            a, b = part.split("-")
            out |= set(range(int(a), int(b) + 1))
        elif part:
            out.add(int(part))
    return out


def distro_var(name: str, text: str = DISTRO) -> str:
    m = re.search(rf'^{name} \??\??= "([^"]*)"$', text, re.M)
    assert m, name
    return m.group(1)


def kas_conf(name: str) -> str:
    return "\n".join(yaml.safe_load((LAYER / "kas" / name).read_text())["local_conf_header"].values())


# --- K3s: offline first boot ------------------------------------------------------------------


def test_traefik_left_out_of_k3s_at_build_time() -> None:
    assert re.search(r'^PACKAGECONFIG:remove:pn-k3s = "traefik"$', DISTRO, re.M)
    cfg = yaml.safe_load((RK / "k3svirt-k3s-config" / "files" / "config.yaml.in").read_text())
    assert "traefik" in cfg["disable"]


def test_k3s_starts_without_a_lan() -> None:
    cfg = yaml.safe_load((RK / "k3svirt-k3s-config" / "files" / "config.yaml.in").read_text())
    net = RK / "k3svirt-network-config" / "files"
    netdev = unit(net / "20-k3svirt0.netdev")
    network = unit(net / "20-k3svirt0.network")
    assert netdev["NetDev"]["Kind"] == "dummy" and netdev["NetDev"]["Name"] == cfg["flannel-iface"]
    assert network["Network"]["Address"] == cfg["node-ip"] + "/32"


# --- CPU layout: kernel command line, kubelet and templates agree ---------------------------


def _vpp_router_cpu() -> dict:
    """The cpu block of the vpp-router version an unpinned VM gets."""
    return templates.resolve(yaml.safe_load((REPO / "vm-templates" / "vpp-router.yaml").read_text()))[1]["cpu"]


@pytest.mark.parametrize("where", ["distro", "k3svirt-n305.yml"])
def test_cpu_layout_gives_a_dedicated_vm_a_whole_module(where: str, tmp_path: Path) -> None:
    text = DISTRO if where == "distro" else kas_conf(where)
    host = cpuset(distro_var("K3SVIRT_CPUS_HOST", text).strip())
    isolated = cpuset(distro_var("K3SVIRT_CPUS_ISOLATED", text))
    n305 = cputopo.read(write_sys(tmp_path / "n305", **N305))
    # Housekeeping on top of the last module: the kubelet hands out the lowest free CPUs, so a
    # 4-core request gets module 0-3 whole (tests/test_kubelet_cpu_allocation.py runs its code).
    assert host and sorted(host) == cputopo.housekeeping(n305, len(host)), "housekeeping not on top"
    module = cputopo.choose(n305, set(range(8)) - host, 4)
    assert module == [0, 1, 2, 3]
    cpu = _vpp_router_cpu()
    assert cpu["dedicatedCores"] == len(module) == cpu["cores"], "vpp-router asks for one whole module"
    assert "dedicatedCpuSet" not in cpu and "emulatorCpuSet" not in cpu  # the node picks, not the template
    # Tickless CPUs: where the module-sized VM's vCPUs 1-3 land (vCPU 0 shares CPU 0 with timekeeping).
    assert isolated == set(module) - {0} and not isolated & host


def test_kubelet_static_cpu_manager_keeps_pods_off_the_housekeeping_cpus() -> None:
    cfg = yaml.safe_load((RK / "k3svirt-k3s-config" / "files" / "config.yaml.in").read_text())
    args = cfg["kubelet-arg"]
    assert "cpu-manager-policy=static" in args
    assert "cpu-manager-policy-options=strict-cpu-reservation=true" in args
    assert "reserved-cpus=@K3SVIRT_CPUS_HOST@" in args
    # reserved-cpus replaces the cpu share of system-/kube-reserved: no cpu= there
    assert not [a for a in args if a.startswith(("system-reserved", "kube-reserved")) and "cpu=" in a]
    recipe = next(RK.rglob("k3svirt-k3s-config_*.bb")).read_text()
    assert "s#@K3SVIRT_CPUS_HOST@#${K3SVIRT_CPUS_HOST}#g" in recipe
    # The operator pins emulator threads to the same CPUs: the unit reads them before its own file.
    cpus = next(RK.rglob("k3svirt-cpus.in")).read_text()
    assert "K3SVIRT_HOUSEKEEPING_CPUS=@K3SVIRT_CPUS_HOST@" in cpus.splitlines()
    host_recipe = next(RK.rglob("k3svirt-host-config_*.bb")).read_text()
    assert "k3svirt-cpus.in > ${D}${sysconfdir}/default/k3svirt-cpus" in host_recipe
    service = (RK / "k3svirt-operator" / "files" / "k3svirt-operator.service").read_text()
    files = re.findall(r"^EnvironmentFile=-(\S+)$", service, re.M)
    assert files == ["/etc/default/k3svirt-cpus", "/etc/default/k3svirt-operator"]


def test_isolation_cmdline_is_built_from_the_layout() -> None:
    expr = re.search(r'^K3SVIRT_CPU_ISOLATION_CMDLINE = "\$\{@(.*)\}"$', DISTRO, re.M).group(1)

    class D:
        def __init__(self, v: dict[str, str]) -> None:
            self.v = v

        def getVar(self, name: str) -> str:
            return self.v[name]

    got = eval(expr, {}, {"d": D({"K3SVIRT_CPUS_ISOLATED": "1-3", "K3SVIRT_CPUS_HOST": "6-7"})})
    # No `domain` isolation: pods may run on those CPUs while no dedicated VM holds them.
    assert got.split() == ["isolcpus=managed_irq,1-3", "nohz_full=1-3", "rcu_nocbs=1-3", "irqaffinity=6-7"]
    assert eval(expr, {}, {"d": D({"K3SVIRT_CPUS_ISOLATED": "", "K3SVIRT_CPUS_HOST": "3"})}) == "irqaffinity=3"
    host = next(RK.rglob("cpu-affinity.conf.in")).read_text()
    assert "CPUAffinity=@K3SVIRT_CPUS_HOST@" in host


# --- networking -------------------------------------------------------------------------------


def test_networkd_leaves_container_and_vm_links_alone() -> None:
    net = RK / "k3svirt-network-config" / "files"
    files = sorted(p.name for p in net.glob("*.network"))
    unmanaged = unit(net / "10-k3svirt-unmanaged.network")
    assert unmanaged["Link"]["Unmanaged"] == "yes"
    names = unmanaged["Match"]["Name"].split()
    for want in ("flannel*", "cni0", "veth*", "vnet*", "virbr*", "tap*"):
        assert want in names, want
    assert files[0] == "10-k3svirt-unmanaged.network", "must sort before every other .network file"
    uplink = unit(net / "40-uplink.network")
    assert uplink["Network"]["Bridge"] == "br0"
    assert unit(net / "30-br0.netdev")["NetDev"]["Kind"] == "bridge"
    recipe = next(RK.rglob("k3svirt-network-config_*.bb")).read_text()
    assert "ln -sf /dev/null ${D}${sysconfdir}/systemd/network/80-wired.network" in recipe
    for f in files:
        if f.startswith(("30-", "40-", "20-")):
            cp = unit(net / f)
            section = "Link" if cp.has_option("Link", "RequiredForOnline") else "Network"
            assert cp[section]["RequiredForOnline"] == "no", f


def test_no_network_online_stall() -> None:
    wait = (RK / "k3svirt-network-config" / "files" / "wait-online.conf").read_text()
    assert re.search(r"^ExecStart=$", wait, re.M)
    assert re.search(r"^ExecStart=\S*systemd-networkd-wait-online --any --timeout=\d{1,2}$", wait, re.M)
    for svc in LAYER.rglob("*.service"):
        assert "network-online.target" not in re.sub(r"#.*", "", svc.read_text()), svc.name


# --- libvirt / QEMU defaults --------------------------------------------------------------------


def test_libvirt_has_no_shared_keys_or_world_writable_socket() -> None:
    bb = (LAYER / "recipes-extended" / "libvirt" / "libvirt_%.bbappend").read_text()
    for f in ("cakey.pem", "serverkey.pem", "clientkey.pem", "servercert.pem", "clientcert.pem", "cacert.pem"):
        assert re.search(rf"rm -f [^;]*{re.escape(f)}", bb, re.S), f
    assert 'unix_sock_rw_perms\\ =\\ \\).*/\\1"0700"/' in bb and "bbfatal" in bb
    assert "/^seccomp_sandbox = 0$/d" in bb and "'seccomp_sandbox = 1'" in bb
    sock = unit(LAYER / "recipes-extended" / "libvirt" / "files" / "libvirtd-socket-root-only.conf")
    assert sock["Socket"]["SocketMode"] == "0600"


# --- units ------------------------------------------------------------------------------------


def _wait_timeout() -> int:
    wait = next(LAYER.rglob("k3svirt-wait-api")).read_text()
    return int(re.search(r'timeout="\$\{K3SVIRT_WAIT_TIMEOUT:-(\d+)\}"', wait).group(1))


@pytest.mark.parametrize("name", ["k3svirt-operator.service", "k3svirt-gateway.service"])
def test_units_allow_the_api_wait(name: str) -> None:
    svc = unit(next(LAYER.rglob(name)))["Service"]
    assert int(svc["TimeoutStartSec"]) > _wait_timeout()


def test_operator_is_hardened() -> None:
    svc = unit(next(LAYER.rglob("k3svirt-operator.service")))["Service"]
    caps = set(svc["CapabilityBoundingSet"].split())
    assert caps and caps <= {"CAP_SYS_MODULE", "CAP_SYS_ADMIN", "CAP_DAC_OVERRIDE", "CAP_CHOWN", "CAP_FOWNER"}
    assert svc["ProtectSystem"] == "strict"
    assert "/var/lib/k3svirt" in svc["ReadWritePaths"].split()
    assert svc["NoNewPrivileges"] == "yes" and svc["SystemCallArchitectures"] == "native"
    text = next(LAYER.rglob("k3svirt-operator.service")).read_text()
    assert re.search(r"^SystemCallFilter=@system-service", text, re.M)
    assert re.search(r"^SystemCallFilter=~.*@mount.*@reboot", text, re.M)
    # each capability is justified in a comment above it
    for cap in caps:
        assert re.search(rf"^# .*{cap}", text, re.M), f"{cap} not justified"


def test_gateway_uses_its_own_serviceaccount() -> None:
    text = next(LAYER.rglob("k3svirt-gateway.service")).read_text()
    assert "install -m 0640 -o root -g k3svirt-gw /etc/rancher/k3s/k3s.yaml" not in text
    assert "ExecStartPre=+@LIBEXECDIR@/k3svirt/k3svirt-gateway-credentials" in text
    svc = unit(next(LAYER.rglob("k3svirt-gateway.service")))["Service"]
    assert svc["User"] == "k3svirt-gw" and svc["CapabilityBoundingSet"] == ""
    creds = next(LAYER.rglob("k3svirt-gateway-credentials")).read_text()
    assert "secret k3svirt-gateway-token" in creds and "tokenFile:" in creds
    default = next(LAYER.rglob("k3svirt-gateway.default")).read_text()
    assert "KUBECONFIG=/run/k3svirt-gateway/kubeconfig" in default


def _chart_rules() -> list[dict]:
    src = next((REPO / "charts").glob("*/templates/gateway-rbac.yaml")).read_text()
    block = re.search(r"^kind: ClusterRole\n.*?^rules:\n(.*?)^---", src, re.M | re.S).group(1)
    return yaml.safe_load("rules:\n" + block)["rules"]


def test_gateway_rbac_is_the_charts() -> None:
    docs = list(yaml.safe_load_all((RK / "k3svirt-k3s-config" / "files" / "k3svirt-gateway-rbac.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"ServiceAccount", "Secret", "ClusterRole", "ClusterRoleBinding"}
    assert kinds["ClusterRole"]["rules"] == _chart_rules(), "drifted from charts/*/templates/gateway-rbac.yaml"
    assert all("*" not in r.get("verbs", []) and "*" not in r.get("resources", []) for r in _chart_rules())
    sa = kinds["ServiceAccount"]["metadata"]
    assert kinds["Secret"]["type"] == "kubernetes.io/service-account-token"
    assert kinds["Secret"]["metadata"]["annotations"]["kubernetes.io/service-account.name"] == sa["name"]
    subj = kinds["ClusterRoleBinding"]["subjects"][0]
    assert (subj["name"], subj["namespace"]) == (sa["name"], sa["namespace"])
    assert kinds["ClusterRoleBinding"]["roleRef"]["name"] == kinds["ClusterRole"]["metadata"]["name"]
    recipe = next(RK.rglob("k3svirt-k3s-config_*.bb")).read_text()
    assert "k3svirt-gateway-rbac.yaml" in recipe and "manifests/k3svirt-20-gateway-rbac.yaml" in recipe


# --- A/B updates (RAUC option) ------------------------------------------------------------------


def test_rauc_option_and_recipe_set() -> None:
    layer_conf = (LAYER / "conf" / "layer.conf").read_text()
    assert "rauc:${LAYERDIR}/dynamic-layers/rauc/recipes-*/*/*.bb" in layer_conf
    opt = yaml.safe_load((LAYER / "kas" / "opt-rauc.yml").read_text())
    repo = opt["repos"]["meta-rauc"]
    assert repo["branch"] == "wrynose" and re.fullmatch(r"[0-9a-f]{40}", repo["commit"])
    conf = "\n".join(opt["local_conf_header"].values())
    assert 'DISTRO_FEATURES:append = " rauc"' in conf and "k3svirt-rauc" in conf
    assert "rauc-mark-good" in conf  # meta-rauc's unconditional mark-good is not installed
    dyn = LAYER / "dynamic-layers" / "rauc"
    system = configparser.ConfigParser(interpolation=None)
    system.read_string((dyn / "recipes-core" / "rauc" / "files" / "system.conf").read_text())
    assert system["system"]["bootloader"] == "custom"
    slots = {s: system[s] for s in system.sections() if s.startswith("slot.rootfs.")}
    wks = (LAYER / "files" / "wic" / "k3svirt-efi.wks.in").read_text()
    for s in slots.values():
        label = s["device"].removeprefix("/dev/disk/by-label/")
        assert f"--label {label} " in wks and label == f"root{s['bootname']}"
    assert sorted(s["bootname"] for s in slots.values()) == ["A", "B"]
    backend = system["handlers"]["bootloader-custom-backend"]
    recipe = (dyn / "recipes-k3svirt" / "k3svirt-rauc" / "k3svirt-rauc_1.0.bb").read_text()
    assert (
        backend == "/usr/libexec/k3svirt/k3svirt-bootchooser" and "${libexecdir}/k3svirt/k3svirt-bootchooser" in recipe
    )
    chooser = (dyn / "recipes-k3svirt" / "k3svirt-rauc" / "files" / "k3svirt-bootchooser").read_text()
    for cmd in ("get-primary)", "set-primary)", "get-state)", "set-state)", "get-current)"):
        assert cmd in chooser
    assert "bootctl set-oneshot" in chooser  # try once: rollback by not confirming
    good = unit(dyn / "recipes-k3svirt" / "k3svirt-rauc" / "files" / "k3svirt-mark-good.service")
    assert good["Service"]["FailureAction"] == "reboot"
    keyring = (dyn / "recipes-core" / "rauc" / "rauc-conf.bbappend").read_text()
    assert 'RAUC_KEYRING_URI:k3svirt = ""' in keyring and "SkipRecipe" in keyring
