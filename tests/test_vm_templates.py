"""The shipped VMTemplates (vm-templates/*.yaml): validity, presets' effect on the domain XML,
export/import, the API server's immutability rules and a real boot of minimal-linux."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from k3svirt_common import schema
from k3svirt_common import templates as t
from k3svirt_operator import cpupin
from k3svirt_operator.domain_xml import DomainContext, VMRef, build_domain

from tests.polling import poll

REPO = Path(__file__).resolve().parent.parent
FILES = sorted((REPO / "vm-templates").glob("*.yaml"))
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE0test user@example"


def load(name: str) -> dict:
    return yaml.safe_load((REPO / "vm-templates" / f"{name}.yaml").read_text())


STORE = {p.stem: yaml.safe_load(p.read_text()) for p in FILES}
TEMPLATES = [n for n, o in STORE.items() if t.template_kind(o) == t.KIND_TEMPLATE]
PRESETS = [n for n, o in STORE.items() if t.template_kind(o) == t.KIND_PRESET]
REQUIRED = {"cloudInit": {"sshAuthorizedKeys": [KEY]}}


def test_expected_files_exist():
    assert {"minimal-linux", "standard-server", "vpp-router"} <= set(TEMPLATES)
    assert {"preset-desktop", "preset-computation", "preset-secure"} <= set(PRESETS)
    assert (REPO / "vm-templates/README.md").is_file()


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_manifest_is_valid(path):
    obj = yaml.safe_load(path.read_text())
    assert obj["metadata"]["name"] == path.stem
    assert schema.validate_object("VMTemplate", obj) == []
    assert t.validate_template(obj) == []
    status = t.compute_status(obj)
    assert status["conditions"][0]["status"] == "True"


@pytest.mark.parametrize("preset", [None, *PRESETS])
@pytest.mark.parametrize("template", TEMPLATES)
def test_every_template_version_composes_with_every_preset(template, preset):
    for entry in t.versions_of(STORE[template]):
        vm = {"template": {"name": template, "version": entry["version"]}, **REQUIRED}
        if preset:
            vm["presets"] = [{"name": preset}]
        out = t.expand(vm, STORE.get)
        assert t.validate_merged(out.spec) == []


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_export_import_roundtrip(path):
    text = t.export_yaml(yaml.safe_load(path.read_text()))
    assert t.export_yaml(t.import_yaml(text)) == text


def test_vpp_router_shape():
    spec = t.expand({"template": {"name": "vpp-router"}, **REQUIRED}, STORE.get).spec
    cpu = spec["cpu"]
    assert cpu["sockets"] * cpu["cores"] * cpu["threads"] >= 4
    from k3svirt_operator.domain_xml import parse_cpuset

    # 1.2.0: the node's kubelet picks 4 exclusive CPUs (one whole N305 module); no fixed host CPUs.
    assert cpu["dedicatedCores"] == cpu["cores"] == 4
    assert "dedicatedCpuSet" not in cpu and "emulatorCpuSet" not in cpu
    # The published 1.1.0 keeps its fixed layout (pinned VMs keep working).
    old = t.expand({"template": {"name": "vpp-router", "version": "1.1.0"}, **REQUIRED}, STORE.get).spec["cpu"]
    assert len(parse_cpuset(old["dedicatedCpuSet"])) == old["cores"]
    assert not set(parse_cpuset(old["emulatorCpuSet"])) & set(parse_cpuset(old["dedicatedCpuSet"]))
    assert spec["memory"]["hugepages"]["pageSize"] == "1Gi" and spec["memory"]["size"].endswith("Gi")
    assert [(h["name"], h["pciPassthrough"]) for h in spec["hostDevices"]] == [("wan", "vpp-wan"), ("lan", "vpp-lan")]
    user = spec["cloudInit"]["userData"]
    assert user.startswith("#cloud-config") and yaml.safe_load(user)["runcmd"]
    assert "packagecloud.io/fdio" in user and "dev {wan_pci}" in user and "nat44" in user
    # the passthrough slots are overridable defaults
    spec = t.expand(
        {"template": {"name": "vpp-router"}, "hostDevices": [{"name": "wan", "pciPassthrough": "x710-p0"}], **REQUIRED},
        STORE.get,
    ).spec
    assert spec["hostDevices"][0]["pciPassthrough"] == "x710-p0" and len(spec["hostDevices"]) == 2


def test_minimal_linux_uses_the_harness_guest_paths():
    kernel = t.resolve(STORE["minimal-linux"])[1]["boot"]["kernel"]
    assert kernel == {
        "path": "/var/lib/k3svirt/guest/vmlinuz",
        "initrdPath": "/var/lib/k3svirt/guest/initramfs.img",
        "cmdline": "console=ttyS0 panic=-1",
    }


# ------------------------------------------------------------------------- presets -> domain XML
REF = VMRef("default", "t1", "6f1c3b0e-8a53-4a7e-9d6a-3f0e1e2d4c5b")


def domain(template: str, presets: list[str], tmp_path: Path, pins: tuple[list[int], str] | None = None,
           **overrides) -> tuple[ET.Element, dict, str]:  # fmt: skip
    """The template's domain XML; `pins`: the kubelet's exclusive CPUs and the housekeeping CPUs for
    cpu.dedicatedCores, applied as the operator does (cpupin.with_pins) before the build."""
    vm = {"template": {"name": template}, "presets": [{"name": p} for p in presets], **REQUIRED, **overrides}
    spec = t.expand(vm, STORE.get).spec
    if pins is not None:
        spec = cpupin.with_pins(spec, *pins)
    ctx = DomainContext(
        domain_type="kvm",
        disks={d["name"]: f"/var/lib/k3svirt/disks/default/t1/{d['name']}.qcow2" for d in spec.get("disks") or []},
        seed_iso="/var/lib/k3svirt/seeds/default/t1.iso",
        host_devices={h["name"]: f"0000:0{i + 1}:00.0" for i, h in enumerate(spec.get("hostDevices") or [])},
    )
    xml = build_domain(REF, spec, ctx).xml
    out = tmp_path / f"{template}-{'-'.join(presets) or 'plain'}.xml"
    out.write_text(xml)
    if shutil.which("virt-xml-validate"):
        proc = subprocess.run(["virt-xml-validate", str(out), "domain"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr + xml
    return ET.fromstring(xml), spec, xml


def driver(dom: ET.Element, name: str) -> dict:
    for disk in dom.iterfind("devices/disk"):
        if disk.find("alias").get("name") == f"ua-disk-{name}":
            return dict(disk.find("driver").attrib)
    raise AssertionError(name)


def lifecycle(dom: ET.Element) -> tuple:
    return tuple(dom.findtext(k) for k in ("on_poweroff", "on_reboot", "on_crash"))


def inputs(dom: ET.Element) -> list:
    return [(i.get("type"), i.get("bus")) for i in dom.iterfind("devices/input")]


def test_preset_computation_changes_domain(tmp_path):
    plain, plain_spec, _ = domain("standard-server", [], tmp_path)
    tuned, spec, _ = domain("standard-server", ["preset-computation"], tmp_path)
    assert driver(plain, "root").get("cache") == "none" and "iothread" not in driver(plain, "root")
    assert driver(tuned, "root")["cache"] == "unsafe" and driver(tuned, "root")["iothread"] == "1"
    assert plain.findtext("iothreads") in (None, "0") and tuned.findtext("iothreads") == "4"
    assert tuned.find("cpu").get("mode") == "host-passthrough"
    wd = tuned.find("devices/watchdog")
    assert plain.find("devices/watchdog") is None and (wd.get("model"), wd.get("action")) == ("i6300esb", "poweroff")
    assert lifecycle(tuned) == ("restart", "restart", "restart") != lifecycle(plain)
    assert tuned.find("devices/video/model").get("type") == "qxl"
    assert inputs(tuned) == [("keyboard", "virtio"), ("mouse", "virtio")]
    # storage settings are not domain XML: they reach the spec the storage layer creates files from
    assert spec["disks"][0]["qcow2"] == {"preallocation": "off", "lazyRefcounts": True}
    assert "qcow2" not in plain_spec["disks"][0]


def test_preset_secure_changes_domain(tmp_path):
    plain, _, _ = domain("standard-server", [], tmp_path)
    tuned, spec, _ = domain("standard-server", ["preset-secure"], tmp_path)
    tpm = tuned.find("devices/tpm")
    assert plain.find("devices/tpm") is None and tpm.get("model") == "tpm-crb"
    assert tpm.find("backend").get("version") == "2.0"
    assert driver(tuned, "root")["cache"] == "writethrough"
    assert lifecycle(tuned) == ("destroy", "destroy", "destroy")
    assert inputs(tuned) == [("keyboard", "ps2")]
    assert tuned.find("devices/interface/model").get("type") == "e1000e"
    assert plain.find("devices/interface/model").get("type") == "virtio"
    assert spec["disks"][0]["qcow2"] == {"preallocation": "metadata", "lazyRefcounts": True, "clusterSize": "2Mi"}


def test_preset_desktop_changes_domain(tmp_path):
    plain, _, _ = domain("minimal-linux", [], tmp_path)
    tuned, _, _ = domain("minimal-linux", ["preset-desktop"], tmp_path)
    assert plain.find("devices/graphics") is None and tuned.find("devices/graphics").get("type") == "vnc"
    assert tuned.find("devices/video/model").get("type") == "virtio"
    assert inputs(tuned) == [("keyboard", "virtio"), ("mouse", "virtio")]
    assert tuned.find("devices/interface/model").get("type") == "e1000e"
    assert tuned.findtext("iothreads") == "4"


def test_presets_compose_in_order(tmp_path):
    dom, _, _ = domain("standard-server", ["preset-computation", "preset-secure"], tmp_path)
    assert driver(dom, "root")["cache"] == "writethrough"  # the later preset wins
    assert dom.find("devices/watchdog") is not None  # secure does not remove computation's watchdog
    # ... and the VM's own fields win over every preset
    dom, _, _ = domain("standard-server", ["preset-secure"], tmp_path, lifecycle={"onReboot": "restart"})
    assert lifecycle(dom) == ("destroy", "restart", "destroy")


def test_vpp_router_domain(tmp_path):
    # On the N305 image the kubelet gives the reservation module 0 (housekeeping 6-7 on top of module 1).
    dom, _, xml = domain("vpp-router", [], tmp_path, pins=([0, 1, 2, 3], "6-7"))
    assert [p.get("cpuset") for p in dom.findall("cputune/vcpupin")] == ["0", "1", "2", "3"]
    assert dom.find("cputune/emulatorpin").get("cpuset") == "6-7"
    assert dom.find("memoryBacking/hugepages/page").get("size") in ("1048576", "1")
    assert len(dom.findall("devices/hostdev")) == 2


def test_invalid_override_names_the_field():
    with pytest.raises(t.TemplateError) as e:
        t.expand(
            {"template": {"name": "standard-server"}, **REQUIRED, "disks": [{"name": "root", "cache": "fast"}]},
            STORE.get,
        )
    assert [err.field for err in e.value.errors] == ["spec.disks[root].cache"]
    bad = load("standard-server")
    bad["spec"]["versions"][0]["vm"]["memory"]["size"] = "2 GB"
    assert [e.field for e in t.validate_template(bad)] == ["spec.versions[0].vm.memory.size"]


# ------------------------------------------------------------------ API server: immutability (CEL)
def kubectl(kubeconfig: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["kubectl", "--kubeconfig", kubeconfig, *args], input=stdin, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def namespace(kubeconfig):
    ns = f"vmt-test-{uuid.uuid4().hex[:8]}"
    applied = kubectl(kubeconfig, "apply", "--validate=false", "-f", str(REPO / "crds/vmtemplates.yaml"))
    assert applied.returncode == 0, applied.stderr
    kubectl(kubeconfig, "wait", "--for=condition=Established", "crd/vmtemplates.k3svirt.io", "--timeout=60s")
    assert kubectl(kubeconfig, "create", "namespace", ns).returncode == 0
    yield ns
    kubectl(kubeconfig, "delete", "namespace", ns, "--wait=false")


def test_api_server_enforces_version_immutability(kubeconfig, namespace):
    def get() -> dict:
        proc = kubectl(kubeconfig, "-n", namespace, "get", "vmtemplate", "minimal-linux", "-o", "json")
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def replace(obj: dict) -> subprocess.CompletedProcess:
        # unconditional update (no resourceVersion): an operator may write status meanwhile
        obj = {**obj, "metadata": {k: v for k, v in obj["metadata"].items() if k != "resourceVersion"}}
        return kubectl(kubeconfig, "-n", namespace, "replace", "--validate=false", "-f", "-", stdin=json.dumps(obj))

    created = kubectl(
        kubeconfig, "-n", namespace, "create", "--validate=false", "-f", str(REPO / "vm-templates/minimal-linux.yaml")
    )
    assert created.returncode == 0, created.stderr
    obj = get()
    assert obj["spec"]["versions"][0]["deprecated"] is False  # CRD default

    def refused(mutate, needle: str) -> None:
        o = get()
        mutate(o)
        proc = replace(o)
        assert proc.returncode != 0, f"accepted: {needle}"
        assert needle in proc.stderr, proc.stderr

    refused(lambda o: o["spec"]["versions"][0]["vm"]["memory"].update(size="256Mi"), "immutable")
    refused(lambda o: o["spec"]["versions"][0].update(description="rewritten"), "immutable")
    refused(lambda o: o["spec"]["versions"][1].pop("parameters"), "immutable")
    refused(lambda o: o["spec"]["versions"].pop(0), "cannot be removed")
    refused(lambda o: o["spec"]["versions"].append({"version": "1.0.5", "vm": {}}), "semver-greater")
    refused(lambda o: o["spec"]["versions"].append({"version": "2.0", "vm": {}}), "spec.versions[2].version")
    refused(lambda o: o["spec"]["versions"].append(dict(o["spec"]["versions"][0])), "Duplicate value")
    refused(lambda o: o["spec"].update(kind="Preset"), "spec.kind is immutable")

    # allowed: deprecate a version, append a greater one (the Python mirror agrees)
    o = get()
    new = t.deprecate(t.add_version(o, "1.2.0", {"cpu": {"cores": 1}, "memory": {"size": "64Mi"}}), "1.0.0")
    assert t.check_update(o, new) == []
    proc = replace(new)
    assert proc.returncode == 0, proc.stderr
    stored = get()
    assert [(v["version"], v["deprecated"]) for v in stored["spec"]["versions"]] == [
        ("1.0.0", True),
        ("1.1.0", False),
        ("1.2.0", False),
    ]
    # kubectl export of the stored object round-trips to the same canonical YAML as the file + changes
    assert t.export_yaml(stored) == t.export_yaml(new)
    # the status subresource accepts what compute_status writes
    meta = {k: v for k, v in stored["metadata"].items() if k != "resourceVersion"}
    status = {**stored, "metadata": meta, "status": t.compute_status(stored)}
    proc = kubectl(
        kubeconfig,
        "-n",
        namespace,
        "replace",
        "--subresource=status",
        "--validate=false",
        "-f",
        "-",
        stdin=json.dumps(status),
    )
    assert proc.returncode == 0, proc.stderr
    listing = kubectl(kubeconfig, "-n", namespace, "get", "vmt")
    assert "1.2.0" in listing.stdout and "Template" in listing.stdout, listing.stdout


# ------------------------------------------------------------------------- real boot: minimal-linux
def test_minimal_linux_boots(libvirt_conn, domain_type, tiny_guest, tmp_path):
    spec = t.expand(
        {
            "template": {"name": "minimal-linux", "version": "1.0.0"},
            "boot": {"kernel": {"path": str(tiny_guest.kernel), "initrdPath": str(tiny_guest.initrd)}},
        },
        STORE.get,
    ).spec
    log = tmp_path / "console.log"
    tmp_path.chmod(0o755)
    ref = VMRef("vmt-test", f"boot-{uuid.uuid4().hex[:6]}", str(uuid.uuid4()))
    xml = build_domain(
        ref, spec, DomainContext(domain_type=domain_type, console_log=str(log), guest_agent_channel=False)
    ).xml
    dom = libvirt_conn.createXML(xml, 0)  # transient: gone once destroyed
    try:
        if not poll(lambda: log.exists() and tiny_guest.marker in log.read_text(errors="replace"), 180, 1):
            pytest.fail(f"no {tiny_guest.marker} on the console:\n{log.read_text(errors='replace')[-2000:]}")
    finally:
        dom.destroy()
