"""PCI passthrough for real: the operator's PCI code inside a machine with an emulated Intel IOMMU.

One boot of tests/harness/iommu_machine.py (q35, intel-iommu with interrupt remapping and caching
mode, three e1000e NICs behind their own root ports, ``intel_iommu=on iommu=pt``) serves the
module; the tests run in file order against its real sysfs (tests/iommu/inside.py):

inventory of real IOMMU groups -> the NIC carrying the default route is refused -> a NIC is bound
to vfio-pci -> a QEMU inside opens it (``-device vfio-pci,host=``: QMP query-pci and the inner
guest's own PCI listing show it; its host IRQs are steered both ways) -> release gives it back to
e1000e with its interface -> an operator SIGKILLed between unbind and probe leaves it driverless
and recover_interrupted gives it back.

... and the vpp-router template's domain (two passthrough NICs, pinned vCPUs and emulator, a 1Gi
hugepage) created by libvirt inside the machine, NodeTuning's real writes, and SR-IOV: the
PCIVirtualFunctionPolicy code creating VFs of the emulated NVMe PF, binding them to vfio-pci,
counting them, a QEMU opening one, then removing them. That is the CI form (the inner guests are created
and inspected, not booted). K3SVIRT_IOMMU_FULL=1 also boots both inner guests to their console
marker (TCG inside TCG: many minutes on a loaded 2-core host). Timings are printed (pytest -s);
none is asserted.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests/harness"))

import iommu_machine  # noqa: E402
import tiny_guest  # noqa: E402

# The first test also builds the image when it is not cached (5-8 min) and boots the machine.
pytestmark = pytest.mark.timeout(3600 if os.environ.get("K3SVIRT_IOMMU_FULL") == "1" else 1200)
E1000E = ("8086", "10d3")
FULL = os.environ.get("K3SVIRT_IOMMU_FULL") == "1"
TIMES: dict[str, float] = {}


@pytest.fixture(scope="package")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[iommu_machine.Machine]:
    t0 = time.monotonic()
    image = iommu_machine.build()
    TIMES["image build or cache hit"] = time.monotonic() - t0
    work = tmp_path_factory.mktemp("iommu")
    guest = tiny_guest.build(iommu_machine.cache_dir() / "tiny-guest")[0].parent
    # 4 vCPUs: the VPP VM's 2 dedicated cores + a housekeeping core; 4 GiB: room above the 32-bit
    # PCI hole for one 1 GiB page (3 GiB leave no aligned free GiB)
    m = iommu_machine.Machine(image, work, REPO, guest, cpus=4, memory_mib=4096, hugepages_1g=1)
    m.start()
    TIMES["boot to marker"] = m.boot_seconds
    yield m
    m.stop()
    print("\nIOMMU machine times (s): " + ", ".join(f"{k} {v:.1f}" for k, v in TIMES.items()))


def inside(machine: iommu_machine.Machine, *args: str, timeout: float = 600) -> dict:
    t0 = time.monotonic()
    rc, out = machine.run("python3 /repo/tests/iommu/inside.py " + " ".join(args) + "\n", timeout=timeout, name=args[0])
    TIMES[" ".join(args[:1])] = TIMES.get(args[0], 0) + time.monotonic() - t0
    assert rc == 0, out
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="package")
def nics(machine: iommu_machine.Machine) -> dict[str, dict]:
    """The three e1000e functions by role: uplink (default route), then a, b (free)."""
    inv = inside(machine, "inventory")
    found = [d for d in inv["devices"] if (d["vendorId"], d["deviceId"]) == E1000E]
    assert len(found) == 3, [d["address"] for d in inv["devices"]]
    uplink = [d for d in found if d["hostUse"]]
    assert len(uplink) == 1, found
    free = [d for d in found if not d["hostUse"]]
    return {"inventory": inv, "uplink": uplink[0], "a": free[0], "b": free[1]}


def test_inventory_shows_real_iommu_groups(nics):
    inv = nics["inventory"]
    assert inv["iommuEnabled"] is True and inv["iommuGroupCount"] >= 3
    assert inv["kernelCmdline"]["intelIommuOn"] is True and inv["kernelCmdline"]["iommuPassthrough"] is True
    ready = {c["type"]: c for c in inv["conditions"]}["IOMMUReady"]
    assert ready["status"] == "True", ready
    groups = [nics[k]["iommuGroup"] for k in ("uplink", "a", "b")]
    assert len(set(groups)) == 3 and None not in groups  # one group per NIC (separate root ports)
    for k in ("uplink", "a", "b"):
        d = nics[k]
        assert d["driver"] == "e1000e" and d["netInterfaces"], d
        assert d["iommuGroupMembers"] == [d["address"]]
        parent = next(p for p in inv["devices"] if p["address"] == d["parent"])
        assert parent["isBridge"] and parent["driver"] == "pcieport"


def test_uplink_nic_is_refused_naming_the_route(machine, nics):
    up = nics["uplink"]
    iface = up["netInterfaces"][0]
    assert any("default route" in u and iface in u for u in up["hostUse"]), up["hostUse"]
    st = inside(machine, "bind", up["address"])
    ready = {c["type"]: c for c in st["conditions"]}["Ready"]
    assert st["phase"] == "Failed" and ready["reason"] == "HostCritical", st
    assert up["address"] in ready["message"] and "default route" in ready["message"], ready["message"]
    assert st["nic"]["driver"] == "e1000e" and st["nic"]["driverOverride"] is None  # untouched


def test_bind_to_vfio_pci(machine, nics):
    a = nics["a"]
    st = inside(machine, "bind", a["address"], "/jobs/a.status.json")
    assert st["phase"] == "Bound", st
    assert st["driver"] == "vfio-pci" and st["originalDriver"] == "e1000e"
    assert st["nic"]["driver"] == "vfio-pci" and st["nic"]["netInterfaces"] == []
    assert st["vfioGroupNode"] is True  # /dev/vfio/<group> exists: the IOMMU group is usable
    TIMES["bind (operator code)"] = st["bindSeconds"]


def test_qemu_opens_the_device_and_irqs_are_steered(machine, nics):
    a = nics["a"]
    res = inside(machine, "qemu", *(["--boot"] if FULL else []), a["address"], timeout=2400)
    ours = [d for d in res["queryPci"] if d["qdev_id"] == "pt0"]
    assert ours and (ours[0]["vendor"], ours[0]["device"]) == (0x8086, 0x10D3), res["queryPci"]
    assert str(a["iommuGroup"]) in res["openGroups"]
    TIMES["inner QEMU up (QMP)"] = res["startSeconds"]
    if FULL:  # the inner guest booted and lists the device among its own PCI functions
        assert ["0x8086:0x10d3"] in [p[1:] for p in res["innerPci"]], res["innerPci"]
        TIMES["inner guest to marker"] = res["markerSeconds"]
    irqs = res["irq"]
    assert irqs["irqs"] and any("vfio" in line for line in irqs["lines"]), irqs
    last = irqs["online"].split("-")[-1]
    assert irqs["housekeeping"]["planned"] != last
    for policy in ("housekeeping", "vm"):
        planned = irqs[policy]["planned"]
        assert set(irqs[policy]["now"].values()) == {planned}, irqs
    assert irqs["vm"]["planned"] == last
    assert res["exit"] == 0 and res["nicAfter"][0]["driver"] == "vfio-pci"


def test_release_restores_e1000e_and_the_interface(machine, nics):
    st = inside(machine, "release", "/jobs/a.status.json")
    assert st["phase"] == "Available", st
    assert st["nic"]["driver"] == "e1000e" and st["nic"]["driverOverride"] is None
    assert st["nic"]["netInterfaces"], st["nic"]
    TIMES["release (operator code)"] = st["releaseSeconds"]


def test_operator_killed_mid_bind_leaves_no_driverless_device(machine, nics):
    b = nics["b"]
    res = inside(machine, "killbind", b["address"])
    assert res["before"]["driver"] == "e1000e"
    assert res["childSaid"] == "UNBOUND" and res["childSignal"] == 9
    # the kill really hit the window: override set, e1000e unbound, nothing probed yet
    assert res["leftByKill"]["driver"] is None and res["leftByKill"]["driverOverride"] == "vfio-pci"
    assert res["recovered"] == {b["address"]: "e1000e"}
    assert res["after"]["driver"] == "e1000e" and res["after"]["driverOverride"] is None
    assert res["after"]["netInterfaces"], res["after"]


# ---------------------------------------------------------------- the VPP router VM, for real
def vpp_router_domain(wan: str, lan: str, console_log: str, tmp_path: Path) -> tuple[str, dict]:
    """The vpp-router template's domain, scaled to the machine (say so in the docs): 2 dedicated
    cores instead of 4, pinned as the operator pins the exclusive CPUs a kubelet gave the VM's
    reservation (cpupin.with_pins: vCPUs on cores 2-3, the emulator on housekeeping core 1; no
    kubelet runs inside the machine), 1Gi of RAM on one 1Gi page,
    the tiny guest's kernel instead of the Ubuntu disk, no management NIC and no cloud-init (the
    machine has no network to install VPP from). The passthrough NICs, pinning and hugepage
    backing are the template's own."""
    import shutil
    import subprocess

    import yaml
    from k3svirt_common import templates as t
    from k3svirt_operator import cpupin
    from k3svirt_operator.domain_xml import DomainContext, VMRef, build_domain

    store = {p.stem: yaml.safe_load(p.read_text()) for p in (REPO / "vm-templates").glob("*.yaml")}
    vm = {
        "template": {"name": "vpp-router"},
        "cloudInit": {"sshAuthorizedKeys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE0test user@example"]},
        "cpu": {"cores": 2, "dedicatedCores": 2},
        "memory": {"size": "1Gi"},
        "boot": {"kernel": {"path": "/guest/vmlinuz", "initrdPath": "/guest/initramfs.img",
                            "cmdline": "console=ttyS0 panic=-1 quiet no_timer_check"}},
    }  # fmt: skip
    spec = cpupin.with_pins(t.expand(vm, store.get).spec, [2, 3], "1")
    for key in ("disks", "networks", "cloudInit"):
        spec.pop(key, None)
    ctx = DomainContext(domain_type="qemu", host_devices={"wan": wan, "lan": lan}, console_log=console_log,
                        guest_agent_channel=False)  # fmt: skip
    xml = build_domain(VMRef("net", "vpp", "7d4f3c1e-2b6a-4e8f-9a1d-5c3b2e1f0a9d"), spec, ctx).xml
    path = tmp_path / "vpp.xml"
    path.write_text(xml)
    if shutil.which("virt-xml-validate"):
        proc = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr + xml
    return xml, spec


def test_vpp_router_vm_runs_with_two_passthrough_nics(machine, nics, tmp_path):
    wan, lan = nics["a"]["address"], nics["b"]["address"]
    for role, addr in (("wan", wan), ("lan", lan)):
        st = inside(machine, "bind", addr, f"/jobs/vpp-{role}.status.json")
        assert st["phase"] == "Bound" and st["nic"]["driver"] == "vfio-pci", st
    xml, spec = vpp_router_domain(wan, lan, "/jobs/vpp-console.log", tmp_path)
    (machine.jobs / "vpp.xml").write_text(xml)
    res = inside(machine, "domain", *(["--boot"] if FULL else []), "/jobs/vpp.xml", "/jobs/vpp-console.log",
                 timeout=2400)  # fmt: skip
    TIMES["VPP router VM created"] = res["createSeconds"]
    if FULL:
        TIMES["VPP router VM to marker"] = res["markerSeconds"]
        assert "K3SVIRT-GUEST-READY" in res["console"], res["console"]
    assert res["hostdevs"] == {
        "ua-hostdev-wan": {"type": "vfio-pci", "host": wan},
        "ua-hostdev-lan": {"type": "vfio-pci", "host": lan},
    }, res["hostdevs"]
    assert res["hugepagesFreeRunning"] == res["hugepagesFreeBefore"] - 1  # guest RAM on the 1Gi page
    vcpus = {k: v for k, v in res["threads"].items() if k.startswith("CPU ")}
    assert sorted(vcpus.values()) == ["2", "3"], res["threads"]  # one dedicated core per vCPU
    others = {k: v for k, v in res["threads"].items() if not k.startswith("CPU ")}
    assert set(others.values()) == {"1"}, res["threads"]  # emulator + I/O threads on housekeeping
    for role in ("wan", "lan"):
        st = inside(machine, "release", f"/jobs/vpp-{role}.status.json")
        assert st["nic"]["driver"] == "e1000e" and st["nic"]["netInterfaces"], st


# ---------------------------------------------------------------- NodeTuning, real writes
# The machine's own tunables (disposable: nothing else reads them), read by the shell, not our code.
TUNABLE_FILES = {
    "ksm.run": "/sys/kernel/mm/ksm/run",
    "ksm.merge_across_nodes": "/sys/kernel/mm/ksm/merge_across_nodes",
    "thp.enabled": "/sys/kernel/mm/transparent_hugepage/enabled",
    "vm.swappiness": "/proc/sys/vm/swappiness",
}


def _machine_tunables(machine: iommu_machine.Machine) -> dict[str, str]:
    script = "".join(f'echo "{k}=$(cat {f})"\n' for k, f in TUNABLE_FILES.items())
    script += 'for d in /sys/block/vd*; do echo "block.${d##*/}.scheduler=$(cat $d/queue/scheduler)"; done\n'
    rc, text = machine.run(script, timeout=120, name="tunables")
    assert rc == 0, text
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def _other(options: list[str], now: str) -> str:
    return next(o for o in options if o != now)


def test_node_tuning_writes_reads_back_and_restores_the_real_kernel(machine):
    """A NodeTuning spec (valid by the CRD) applied by tuning.reconcile to the machine's real /sys and
    /proc: every value changed from what the kernel had, read back from the files; a second pass keeps
    `found`; a value changed behind its back is put back; the release restores what was found, except a
    value someone changed since (left alone, named), which the job then puts back by hand."""
    from k3svirt_common import schema
    from k3svirt_operator import tuning

    raw = _machine_tunables(machine)
    now = {k: tuning.parse(v) for k, v in raw.items()}
    disk = "vda"  # the machine's root disk (virtio-blk): a real blk-mq queue with its schedulers
    schedulers = raw[f"block.{disk}.scheduler"].replace("[", "").replace("]", "").split()
    assert {"none", "mq-deadline"} <= set(schedulers), raw
    other_scheduler = _other(["none", "mq-deadline"], now[f"block.{disk}.scheduler"])
    spec = {
        "ksm": {"enabled": now["ksm.run"] != "1", "mergeAcrossNodes": now["ksm.merge_across_nodes"] != "1"},
        "transparentHugepages": _other(["never", "madvise", "always"], now["thp.enabled"]),
        "swappiness": 10 if now["vm.swappiness"] != "10" else 20,
        "ioSchedulers": [{"device": "vd*", "scheduler": other_scheduler}],
    }
    assert schema.validate_spec("NodeTuning", spec) == []
    want = tuning.desired(spec, [disk])
    assert all(want[k] != now[k] for k in want), (want, now)  # every setting is a real change
    (machine.jobs / "tuning-spec.json").write_text(json.dumps(spec))
    drift = "77"
    res = inside(machine, "tuning", "/jobs/tuning-spec.json", "vm.swappiness", drift)
    TIMES["NodeTuning apply (tuning code)"] = res["applySeconds"]
    TIMES["NodeTuning release (tuning code)"] = res["releaseSeconds"]
    assert res["keys"] == sorted(want) and disk in res["blockDevices"], res

    def parsed(files: dict[str, str]) -> dict[str, str]:
        return {k: tuning.parse(v) for k, v in files.items()}

    assert parsed(res["before"]) == {k: now[k] for k in want}
    applied = res["applied"]
    assert applied["phase"] == "Applied" and applied["errors"] == [], applied
    assert applied["found"] == {k: now[k] for k in want} and applied["applied"] == want, applied
    assert parsed(res["afterApply"]) == want, res["afterApply"]  # the kernel holds every value
    assert res["resync"]["phase"] == "Applied" and res["resync"]["found"] == applied["found"], res["resync"]
    assert res["drifted"] == {"vm.swappiness": drift}
    assert res["repaired"]["phase"] == "Applied" and parsed(res["afterRepair"]) == want, res["afterRepair"]

    released = res["released"]
    assert released["phase"] == "Restored", released
    [left] = released["errors"]  # the one value someone changed since, named; nothing else failed
    assert left.startswith(f"vm.swappiness: left at {drift} "), released
    after = parsed(res["afterRelease"])
    assert after["vm.swappiness"] == drift  # not overwritten: someone else set it after the NodeTuning did
    assert {k: v for k, v in after.items() if k != "vm.swappiness"} == {k: now[k] for k in want if k != "vm.swappiness"}
    assert parsed(res["end"]) == {k: now[k] for k in want}


# ---------------------------------------------------------------- SR-IOV VFs, for real
NVME = ("1b36", "0010")  # QEMU's emulated NVMe controller (the SR-IOV physical function here)


def test_sriov_vfs_are_created_bound_to_vfio_counted_opened_and_given_back(machine, nics):
    """A PCIVirtualFunctionPolicy's steps (pci/sriov.py + the PCIPassthrough code, as the handler runs
    them) on the emulated NVMe PF: VFs created through sriov_numvfs by the nvme driver, each in its own
    IOMMU group, each bound to vfio-pci through its own PCIPassthrough, counted as one extended
    resource, opened by a QEMU inside, then given back and sriov_numvfs set to 0."""
    from k3svirt_common import pci_resources

    [pf] = [d for d in nics["inventory"]["devices"] if (d["vendorId"], d["deviceId"]) == NVME]
    total = iommu_machine.SRIOV_VFS
    assert pf["sriov"] == {"totalVFs": total, "numVFs": 0, "virtfns": []}, pf
    res = inside(machine, "sriov", pf["address"], str(total), "/jobs/sriov.state.json", timeout=900)
    assert res["pfUnbound"]["driver"] is None, res["pfUnbound"]  # a PF on no driver cannot make VFs: refused
    reason, message = res["refusedWithoutDriver"]
    assert reason == "PhysicalFunctionOnVFIO" and pf["address"] in message and "no driver" in message, message
    assert res["pfLoaded"]["driver"] == "nvme", res["pfLoaded"]
    assert res["tooMany"][0] == "TooManyVFs" and f"at most {total} VFs" in res["tooMany"][1], res["tooMany"]
    assert "applyRefusal" not in res, (res["applyRefusal"], res["dmesg"])
    assert res["plan"] == [total]
    TIMES["SR-IOV: sriov_numvfs -> VFs"] = res["applySeconds"]
    TIMES["SR-IOV: VF drivers settled"] = res["vfSettleSeconds"]
    # autoprobe off before the VFs came (sriov.apply): no host driver ever took one (nvme's failed probe
    # of an offline VF would otherwise race the vfio-pci bind).
    assert res["autoprobe"] == "0", res
    assert all(seen == [None] for seen in res["vfDriversSeen"].values()), res["vfDriversSeen"]
    TIMES["SR-IOV: VFs bound (operator code)"] = res["bindSeconds"]
    vfs = list(res["vfs"])
    assert len(vfs) == total and res["pfWithVfs"]["sriov"] == {"totalVFs": total, "numVFs": total, "virtfns": vfs}
    groups = {res["pfWithVfs"]["iommuGroup"]}
    for vf in vfs:
        f = res["vfs"][vf]
        assert f["physfn"] == pf["address"] and f["vendorId"] == NVME[0], f
        assert f["iommuGroupMembers"] == [vf], f  # alone in its group: passable on its own
        groups.add(f["iommuGroup"])
    assert len(groups) == total + 1 and None not in groups, groups
    children = res["children"]
    assert sorted(children) == [f"nvme-pf-vf{i}" for i in range(total)]
    for name, child in children.items():
        st = child["status"]
        assert st["phase"] == "Bound" and st["driver"] == "vfio-pci", (name, st)
        assert st["vfioGroupNode"] is True and st["function"]["driver"] == "vfio-pci", st
        assert child["spec"]["namespaces"] == ["t"]
    vf_resource = pci_resources.resource_name(res["vfs"][vfs[0]]["vendorId"], res["vfs"][vfs[0]]["deviceId"])
    assert res["capacity"] == {vf_resource: total}, res["capacity"]  # what the Node would advertise
    ps = res["policyStatus"]
    assert ps["phase"] == "Ready" and ps["numVfs"] == total and ps["totalVfs"] == total, ps
    assert [v["address"] for v in ps["virtualFunctions"]] == vfs

    # a QEMU inside takes the first VF: realizing vfio-pci opens its group and the VF's config space
    qemu = inside(machine, "qemu", vfs[0], timeout=1200)
    ours = [d for d in qemu["queryPci"] if d["qdev_id"] == "pt0"]
    assert ours and (ours[0]["vendor"], ours[0]["device"]) == (0x1B36, int(res["vfs"][vfs[0]]["deviceId"], 16)), qemu
    assert str(res["vfs"][vfs[0]]["iommuGroup"]) in qemu["openGroups"] and qemu["exit"] == 0, qemu
    TIMES["SR-IOV: inner QEMU with a VF up (QMP)"] = qemu["startSeconds"]

    back = inside(machine, "sriov-release", "/jobs/sriov.state.json", timeout=600)
    for name, r in back["released"].items():
        assert r["function"]["driver"] != "vfio-pci" and r["function"]["driverOverride"] is None, (name, r)
    assert back["vfsLeft"] == [] and back["vfDirsLeft"] == [], back
    assert back["pfAfter"]["driver"] == "nvme" and back["pfAfter"]["sriov"]["numVFs"] == 0, back["pfAfter"]
    assert back["autoprobeAfter"] == "1", back  # the kernel's default again once the VFs are gone
    TIMES["SR-IOV: VFs given back, sriov_numvfs 0"] = back["zeroSeconds"]
