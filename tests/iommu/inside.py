"""Runs INSIDE the IOMMU test machine (tests/harness/iommu_machine.py) against its real sysfs.

Each subcommand calls the operator's PCI code from the repository share and prints one JSON
object on the last line of stdout; tests/iommu/test_iommu_machine.py sends the commands.

  inventory                       NodePCIInventory.status of the machine
  bind ADDR [STATUS_FILE]         reconcile_passthrough for {address: ADDR}; status -> STATUS_FILE
  release STATUS_FILE             release_passthrough of that status
  qemu [--boot] ADDR...           a QEMU with -device vfio-pci,host=ADDR (each): QMP query-pci, IRQ
                                  steering while it runs; --boot: the inner guest's marker and PCI IDs
  killbind ADDR                   a child binds ADDR and is SIGKILLed after the unbind; the state it
                                  left, then recover_interrupted (what a restarted operator runs)
  nic ADDR                        driver, interfaces and the link state of ADDR
  domain [--boot] XML CONSOLE     libvirtd + virtlogd, virsh create the domain: query-pci, the threads'
                                  CPU affinity, the 1Gi page; --boot: its console marker; then destroy
  tuning SPEC_FILE DRIFT_KEY DRIFT_VALUE
                                  a NodeTuning spec applied by the operator's tuning code to the machine's
                                  real /sys and /proc, read back, a resync, a drift put back, then released
                                  (DRIFT_KEY changed behind its back first: left alone) and read back
  sriov PF NUM STATE_FILE         a PCIVirtualFunctionPolicy's steps on the emulated NVMe PF: refused while
                                  the PF has no driver, nvme loaded, sriov.plan/apply create NUM VFs via
                                  sriov_numvfs, each VF's PCIPassthrough (sriov.children) bound to vfio-pci
                                  by reconcile_passthrough, counted by pci_resources.node_capacity;
                                  the VFs' statuses -> STATE_FILE
  sriov-release STATE_FILE        each VF's PCIPassthrough released, then sriov_numvfs back to 0
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path[:0] = ["/repo/operator", "/repo/common"]

from k3svirt_common import pci_resources  # noqa: E402
from k3svirt_operator import pci, tuning  # noqa: E402
from k3svirt_operator.pci import binding, irq, sriov  # noqa: E402

GUEST = Path("/guest")
MARKER = "K3SVIRT-GUEST-READY"


def out(obj: object) -> None:
    print(json.dumps(obj, sort_keys=True))


def nic(address: str) -> dict:
    dev = pci.read_device(None, address)
    assert dev is not None, address
    d = dev.to_dict()
    links = {}
    for name in d["netInterfaces"]:
        links[name] = Path(f"/sys/class/net/{name}/operstate").read_text().strip()
    return {
        "driver": d["driver"],
        "driverOverride": d["driverOverride"],
        "netInterfaces": d["netInterfaces"],
        "operstate": links,
    }


def cmd_inventory() -> None:
    out(pci.node_inventory_status())


def cmd_bind(address: str, status_file: str | None = None) -> None:
    t0 = time.monotonic()
    status = pci.reconcile_passthrough({"nodeName": "iommu", "address": address})
    status["bindSeconds"] = round(time.monotonic() - t0, 3)
    status["nic"] = nic(address)
    status["vfioGroupNode"] = os.path.exists(f"/dev/vfio/{status.get('iommuGroup')}")
    if status_file:
        Path(status_file).write_text(json.dumps(status))
    out(status)


def cmd_release(status_file: str) -> None:
    status = json.loads(Path(status_file).read_text())
    t0 = time.monotonic()
    new = pci.release_passthrough(status)
    new["releaseSeconds"] = round(time.monotonic() - t0, 3)
    # the interface is back once e1000e probed it; udev is absent here, the kernel names it itself
    new["nic"] = nic(status["address"])
    out(new)


class QMP:
    def __init__(self, path: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while True:  # the socket file exists before QEMU listens on it
            self.sock = socket.socket(socket.AF_UNIX)
            try:
                self.sock.connect(path)
                break
            except (ConnectionRefusedError, FileNotFoundError):
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        self.file = self.sock.makefile("rw")
        json.loads(self.file.readline())  # greeting
        self.call("qmp_capabilities")

    def call(self, command: str, **args: object) -> object:
        self.file.write(json.dumps({"execute": command, "arguments": args}) + "\n")
        self.file.flush()
        while True:
            msg = json.loads(self.file.readline())
            if "return" in msg:
                return msg["return"]
            if "error" in msg:
                raise RuntimeError(msg["error"])


def _wait_file(path: Path, text: str, timeout: float, proc: subprocess.Popen) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if path.exists() and text in path.read_text(errors="replace"):
            return time.monotonic() - t0
        if proc.poll() is not None:
            raise RuntimeError(f"qemu exited {proc.returncode}: {path.read_text(errors='replace')[-2000:]}")
        time.sleep(0.5)
    raise TimeoutError(
        f"no {text} after {timeout}s: {path.read_text(errors='replace')[-2000:] if path.exists() else ''}"
    )


# Printed by the inner guest: the PCI IDs it sees (vendor:device per function), then a marker.
INNER_SCRIPT = (
    "for d in /sys/bus/pci/devices/*; do "
    'echo "K3SVIRT-INNER-PCI ${d##*/} $(cat $d/vendor):$(cat $d/device)"; done > /dev/console; '
    "echo K3SVIRT-INNER-DONE > /dev/console"
)


def cmd_qemu(*args: str) -> None:
    """``qemu [--boot] ADDR...``: without --boot, stop once QMP answered (the device is attached and
    its group open; TCG inside TCG needs minutes to boot the inner guest on a loaded host)."""
    boot = args[:1] == ("--boot",)
    addresses = args[1:] if boot else args
    # the console on the job share: the host sees the inner boot while it runs
    console, qmp_path = Path("/jobs/inner-console.log"), "/tmp/inner-qmp.sock"
    console.unlink(missing_ok=True)
    run = base64.b64encode(INNER_SCRIPT.encode()).decode()
    cmd = [
        "qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-m", "256", "-smp", "1",
        "-kernel", str(GUEST / "vmlinuz"), "-initrd", str(GUEST / "initramfs.img"),
        # no_timer_check: TCG inside TCG on a loaded host misses the kernel's IO-APIC timer check,
        # which panics (panic=-1 + -no-reboot: QEMU exits before the marker); as in every test guest
        "-append", f"console=ttyS0 panic=-1 quiet no_timer_check k3svirt.run={run}",
        "-nic", "none", "-display", "none", "-serial", f"file:{console}", "-no-reboot",
        "-qmp", f"unix:{qmp_path},server=on,wait=off",
    ]  # fmt: skip
    for i, a in enumerate(addresses):
        cmd += ["-device", f"vfio-pci,host={a},id=pt{i},rombar=0"]
    t0 = time.monotonic()
    with open("/tmp/inner-qemu.err", "wb") as err:
        proc = subprocess.Popen(cmd, stderr=err)
    result: dict = {}
    try:
        while not os.path.exists(qmp_path):
            if proc.poll() is not None:
                raise RuntimeError(f"qemu exited {proc.returncode}: {Path('/tmp/inner-qemu.err').read_text()}")
            time.sleep(0.2)
        time.sleep(0.5)
        qmp = QMP(qmp_path)
        result["startSeconds"] = round(time.monotonic() - t0, 1)
        devices = [d for bus in qmp.call("query-pci") for d in bus["devices"]]  # type: ignore[union-attr]
        result["queryPci"] = [
            {"qdev_id": d.get("qdev_id"), "vendor": d["id"]["vendor"], "device": d["id"]["device"]} for d in devices
        ]
        result["irq"] = _irq_checks(addresses[0])
        if boot:
            result["markerSeconds"] = round(_wait_file(console, MARKER, 1800, proc) + result["startSeconds"], 1)
            _wait_file(console, "K3SVIRT-INNER-DONE", 300, proc)
            result["innerPci"] = [
                line.split()[1:]
                for line in console.read_text(errors="replace").splitlines()
                if line.startswith("K3SVIRT-INNER-PCI")
            ]
        result["openGroups"] = sorted(p.name for p in Path("/dev/vfio").iterdir() if p.name != "vfio")
        qmp.call("quit")
    finally:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    result["exit"] = proc.returncode
    result["totalSeconds"] = round(time.monotonic() - t0, 1)
    result["nicAfter"] = [nic(a) for a in addresses]
    out(result)


def _irq_checks(address: str) -> dict:
    """While QEMU holds the device its host IRQs (vfio-intx/msi) exist: steer them both ways, restore."""
    found = irq.device_irqs(address)
    lines = [line.strip() for line in Path("/proc/interrupts").read_text().splitlines() if f"({address})" in line]
    online = irq.online_cpus()
    dedicated = {max(online)}  # the VM's core: the last one; housekeeping: the rest
    res: dict = {"irqs": found, "lines": lines, "online": irq.format_cpuset(online)}
    for policy in irq.POLICIES:
        plan, previous = irq.steer_device(address, policy, dedicated=dedicated)
        res[policy] = {
            "planned": plan.cpus,
            "now": {n: Path(f"/proc/irq/{n}/smp_affinity_list").read_text().strip() for n in plan.irqs},
            "previous": previous,
        }
        if policy == irq.POLICY_VM:
            irq.restore_affinity(previous)
    return res


KILL_CHILD = """
import sys, time
sys.path[:0] = ["/repo/operator", "/repo/common"]
from k3svirt_operator import pci
from k3svirt_operator.pci import sysfs

def write(path, value):
    sysfs.write_attr(path, value)
    if path.name == "unbind":  # the device is now on no driver: stop here until killed
        print("UNBOUND", flush=True)
        time.sleep(3600)

pci.reconcile_passthrough({"nodeName": "iommu", "address": sys.argv[1]}, write=write)
print("NOT-KILLED", flush=True)
"""


def cmd_killbind(address: str) -> None:
    before = nic(address)
    child = subprocess.Popen([sys.executable, "-c", KILL_CHILD, address], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    line = child.stdout.readline().strip()
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    left = nic(address)
    t0 = time.monotonic()
    touched = binding.recover_interrupted()
    seconds = round(time.monotonic() - t0, 3)
    time.sleep(1)  # the link comes up asynchronously after the probe
    out({"before": before, "childSaid": line, "childSignal": -child.returncode, "leftByKill": left,
         "recovered": touched, "recoverSeconds": seconds, "after": nic(address)})  # fmt: skip


QEMU_CONF = 'user = "root"\ngroup = "root"\nsecurity_driver = "none"\n'


def _libvirtd() -> None:
    """Start virtlogd + libvirtd (no systemd here) once; QEMU as root, no security driver."""
    if subprocess.run(["virsh", "-c", "qemu:///system", "version"], capture_output=True).returncode == 0:
        return
    Path("/etc/libvirt/qemu.conf").write_text(QEMU_CONF)
    # libvirt-daemon-system (which creates libvirt's users) is not in the image: no systemd here
    for db, line in (("passwd", "libvirt-qemu:x:64055:64055::/var/lib/libvirt:/usr/sbin/nologin"),
                     ("group", "libvirt-qemu:x:64055:"), ("group", "kvm:x:64056:")):  # fmt: skip
        path = Path("/etc") / db
        if not any(x.split(":")[0] == line.split(":")[0] for x in path.read_text().splitlines()):
            path.write_text(path.read_text() + line + "\n")
    subprocess.run(["virtlogd", "-d"], check=False)  # already running from an earlier try: fine
    with open("/jobs/libvirtd.log", "wb") as log:  # its errors, on the share for the host to read
        proc = subprocess.Popen(["libvirtd"], stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 600  # it probes QEMU's capabilities first: slow under TCG
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"libvirtd exited {proc.returncode}: {Path('/jobs/libvirtd.log').read_text()[-2000:]}")
        if subprocess.run(["virsh", "-c", "qemu:///system", "version"], capture_output=True).returncode == 0:
            return
        time.sleep(2)
    raise RuntimeError(f"libvirtd did not answer: {Path('/jobs/libvirtd.log').read_text()[-2000:]}")


def virsh(*args: str) -> str:
    proc = subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"virsh {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def cmd_domain(*args: str) -> None:
    """``domain [--boot] XML_FILE CONSOLE_LOG``: libvirt inside the machine runs the domain XML the
    operator's builder made (its devices, its pins, its hugepage); --boot also waits for the guest's
    console marker."""
    boot = args[:1] == ("--boot",)
    xml_file, console_log = args[1:] if boot else args
    t0 = time.monotonic()
    _libvirtd()
    res: dict = {"libvirtdSeconds": round(time.monotonic() - t0, 1)}
    Path(console_log).unlink(missing_ok=True)
    pages = Path("/sys/kernel/mm/hugepages/hugepages-1048576kB")
    if int((pages / "free_hugepages").read_text()) < 1:  # none reserved at boot: try one now
        (pages / "nr_hugepages").write_text(str(int((pages / "nr_hugepages").read_text()) + 1))
        res["hugepageReservedAtRuntime"] = True
    free_before = int((pages / "free_hugepages").read_text())
    name = virsh("create", xml_file).split()[1].strip("'")  # Domain 'net_vpp' created from ...
    try:
        res["name"] = name
        t1 = time.monotonic()
        res["createSeconds"] = round(t1 - t0, 1)
        res["hugepagesFreeBefore"] = free_before
        res["hugepagesFreeRunning"] = int(
            Path("/sys/kernel/mm/hugepages/hugepages-1048576kB/free_hugepages").read_text()
        )
        qmp = json.loads(virsh("qemu-monitor-command", name, '{"execute":"query-pci"}'))["return"]
        res["queryPci"] = [{"qdev_id": d.get("qdev_id"), "vendor": d["id"]["vendor"], "device": d["id"]["device"]}
                           for bus in qmp for d in _all_devices(bus["devices"])]  # fmt: skip
        # query-pci lists devices behind a root port only once the guest's firmware numbered its bus;
        # QOM names every device at once: the hostdevs by their libvirt alias (ua-hostdev-<name>)
        res["hostdevs"] = {}
        for alias in ("ua-hostdev-wan", "ua-hostdev-lan"):
            path = f"/machine/peripheral/{alias}"
            res["hostdevs"][alias] = {
                prop: json.loads(virsh("qemu-monitor-command", name, json.dumps(
                    {"execute": "qom-get", "arguments": {"path": path, "property": prop}})))["return"]
                for prop in ("type", "host")
            }  # fmt: skip
        pid = int(Path(f"/run/libvirt/qemu/{name}.pid").read_text())
        res["threads"] = _thread_affinity(pid)
        res["vcpuinfo"] = virsh("vcpuinfo", name)
        res["emulatorpin"] = virsh("emulatorpin", name)
        if boot:
            deadline = t1 + 1800
            while time.monotonic() < deadline:
                if Path(console_log).exists() and MARKER in Path(console_log).read_text(errors="replace"):
                    break
                time.sleep(1)
            res["markerSeconds"] = round(time.monotonic() - t1, 1)
            res["console"] = Path(console_log).read_text(errors="replace")[-1500:] if Path(console_log).exists() else ""
    finally:
        subprocess.run(["virsh", "-c", "qemu:///system", "destroy", name], capture_output=True)
    out(res)


def _all_devices(devices: list) -> list:
    """query-pci nests the devices behind bridges (pcie-root-port) under pci_bridge.devices."""
    found = []
    for d in devices:
        found.append(d)
        found += _all_devices(((d.get("pci_bridge") or {}).get("devices")) or [])
    return found


def _thread_affinity(pid: int) -> dict[str, str]:
    """QEMU's threads (comm, e.g. 'CPU 0/TCG', 'qemu-system-x86') -> their allowed CPUs."""
    res = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        comm = (task / "comm").read_text().strip()
        cpus = next(line.split(":", 1)[1].strip() for line in (task / "status").read_text().splitlines()
                    if line.startswith("Cpus_allowed_list"))  # fmt: skip
        res[f"{comm}#{task.name}"] = cpus
    return res


def _raw(keys: list[str]) -> dict[str, str]:
    """The files behind the keys as the kernel shows them (read here, not through the tuning code)."""
    return {k: tuning.path_of(k, tuning.Roots()).read_text().strip() for k in keys}


def cmd_tuning(spec_file: str, drift_key: str, drift_value: str) -> None:
    """NodeTuning on the real kernel: apply (the operator's reconcile on /sys and /proc), read back, a
    second pass (a resync: nothing written, `found` kept), a value changed behind its back put back,
    then `drift_key` changed again and the NodeTuning released: everything else restored, that key left
    alone and named. Each raw read is the kernel's own text of the file."""
    spec = json.loads(Path(spec_file).read_text())
    roots = tuning.Roots()
    keys = sorted(tuning.desired(spec, tuning.block_devices(roots)))
    res: dict = {"keys": keys, "before": _raw(keys), "blockDevices": tuning.block_devices(roots)}
    t0 = time.monotonic()
    state = tuning.reconcile(spec, tuning.NodeState(), roots)
    res["applySeconds"] = round(time.monotonic() - t0, 3)
    res["applied"], res["afterApply"] = state.as_status(), _raw(keys)
    again = tuning.reconcile(spec, state, roots)
    res["resync"] = again.as_status()
    tuning.write([(drift_key, drift_value)], roots)  # someone else changes it: the next pass puts it back
    res["drifted"] = _raw([drift_key])
    state = tuning.reconcile(spec, again, roots)
    res["repaired"], res["afterRepair"] = state.as_status(), _raw(keys)
    tuning.write([(drift_key, drift_value)], roots)  # changed again: the release must leave it alone
    t0 = time.monotonic()
    released = tuning.release(state, roots)
    res["releaseSeconds"] = round(time.monotonic() - t0, 3)
    res["released"], res["afterRelease"] = released.as_status(), _raw(keys)
    # put the drifted key back by hand, so the machine ends as it started
    tuning.write([(drift_key, tuning.parse(res["before"][drift_key]))], roots)
    res["end"] = _raw(keys)
    out(res)


def _function(address: str) -> dict:
    dev = pci.read_device(None, address)
    assert dev is not None, address
    d = dev.to_dict()
    keys = ("address", "vendorId", "deviceId", "driver", "driverOverride", "iommuGroup", "iommuGroupMembers",
            "sriov", "physfn", "parent")  # fmt: skip
    return {k: d.get(k) for k in keys}


def _wait_driver(address: str, driver: str, timeout: float = 120) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        dev = pci.read_device(None, address)
        if dev is not None and dev.driver == driver:
            return time.monotonic() - t0
        time.sleep(0.5)
    raise TimeoutError(f"{address} not on {driver} after {timeout:.0f}s: {_function(address)}")


def _dmesg() -> list[str]:
    text = subprocess.run(["dmesg"], capture_output=True, text=True).stdout
    return [line for line in text.splitlines() if any(w in line for w in ("nvme", "IOV", "VF", "BAR", "iommu"))][-40:]


def _settle(addresses: list[str], host_driver: str, quiet: float = 3.0, timeout: float = 120) -> tuple[dict, float]:
    """Waits until no function is on `host_driver` (its probe of an offline VF gives up after the
    controller's ready timeout, CAP.TO 7.5 s, and its removal work must not race our bind) and none
    changed for `quiet` seconds, or `timeout`; every driver seen per function."""
    t0 = last_change = time.monotonic()
    seen: dict[str, list] = {a: [] for a in addresses}
    while time.monotonic() - t0 < timeout:
        for a in addresses:
            dev = pci.read_device(None, a)
            drv = dev.driver if dev else "gone"
            if not seen[a] or seen[a][-1] != drv:
                seen[a].append(drv)
                last_change = time.monotonic()
        on_host = any(seen[a][-1] == host_driver for a in addresses)
        if not on_host and time.monotonic() - last_change >= quiet:
            break
        time.sleep(0.25)
    return seen, round(time.monotonic() - t0, 1)


def cmd_sriov(pf: str, num: str, state_file: str) -> None:
    """What the operator's PCIVirtualFunctionPolicy handler does (handlers._reconcile_vf_policy), with
    the API calls replaced by local objects: plan, apply (sriov_numvfs), one PCIPassthrough per VF,
    each reconciled (bound to vfio-pci), the node's capacity computed from them."""
    policy = {
        "metadata": {"name": "nvme-pf", "uid": "0b7e5a52-8d0c-4c4e-9f0e-5a1f3c2d6e7a", "generation": 1},
        "spec": {"nodeName": "iommu", "physicalFunction": pf, "numVfs": int(num), "namespaces": ["t"]},
    }
    res: dict = {"pfBefore": _function(pf)}
    # 1. without its driver the PF cannot create VFs (sriov_numvfs needs the driver's sriov_configure):
    # the refusal the operator reports. The initramfs' udev has usually loaded nvme: unbind it first.
    subprocess.run(["modprobe", "nvme"], check=True)
    if res["pfBefore"]["driver"] == "nvme":
        Path("/sys/bus/pci/drivers/nvme/unbind").write_text(pf)
    res["pfUnbound"] = _function(pf)
    refused = sriov.plan(policy["spec"], pci.read_device(None, pf))
    res["refusedWithoutDriver"] = [refused.reason, refused.message] if isinstance(refused, sriov.Refusal) else None
    Path("/sys/bus/pci/drivers_probe").write_text(pf)
    res["pfDriverSeconds"] = round(_wait_driver(pf, "nvme"), 1)
    res["pfLoaded"] = _function(pf)
    too_many = sriov.plan({**policy["spec"], "numVfs": 99}, pci.read_device(None, pf))
    res["tooMany"] = [too_many.reason, too_many.message] if isinstance(too_many, sriov.Refusal) else None
    # 2. the VFs, through sriov_numvfs
    vf_plan = sriov.plan(policy["spec"], pci.read_device(None, pf))
    assert isinstance(vf_plan, sriov.VFPlan), vf_plan
    res["plan"] = vf_plan.writes
    t0 = time.monotonic()
    vfs = sriov.apply(None, pf, vf_plan, timeout=60)
    res["applySeconds"] = round(time.monotonic() - t0, 2)
    res["autoprobe"] = Path(f"/sys/bus/pci/devices/{pf}/sriov_drivers_autoprobe").read_text().strip()
    if isinstance(vfs, sriov.Refusal):  # say why, with the kernel's words
        res["applyRefusal"] = [vfs.reason, vfs.message]
        res["dmesg"] = _dmesg()
        out(res)
        return
    # sriov.apply turned the PF's sriov_drivers_autoprobe off first: nvme must never probe a VF (an
    # emulated NVMe VF without flexible resources is offline, nvme's probe would fail after the
    # controller's timeout, and its removal work would release whatever driver the VF has then).
    # Watch for a few quiet seconds that no driver comes.
    res["vfDriversSeen"], res["vfSettleSeconds"] = _settle(vfs, "nvme")
    res["vfs"] = {vf: _function(vf) for vf in vfs}
    res["pfWithVfs"] = _function(pf)
    # 3. each VF offered through its own PCIPassthrough and bound to vfio-pci
    children = sriov.children(policy, vfs)
    t0 = time.monotonic()
    for child in children:
        child["status"] = pci.reconcile_passthrough(child["spec"])
        vf = child["spec"]["address"]
        child["status"]["vfioGroupNode"] = os.path.exists(f"/dev/vfio/{child['status'].get('iommuGroup')}")
        child["status"]["function"] = _function(vf)
    res["bindSeconds"] = round(time.monotonic() - t0, 2)
    res["children"] = {c["metadata"]["name"]: c for c in children}
    # 4. advertised: the node's capacity as the operator publishes it, and the policy's status
    res["capacity"] = pci_resources.node_capacity(children, "iommu")
    res["dmesg"] = _dmesg()
    res["policyStatus"] = sriov.status({}, 1, pci.read_device(None, pf), vfs, "nvme-pf", now="2026-01-01T00:00:00Z")
    Path(state_file).write_text(json.dumps({"pf": pf, "children": children}))
    out(res)


def cmd_sriov_release(state_file: str) -> None:
    """The policy deleted: each VF's PCIPassthrough gives its VF back, then sriov_numvfs = 0."""
    state = json.loads(Path(state_file).read_text())
    res: dict = {"released": {}}
    for child in state["children"]:
        new = pci.release_passthrough(child["status"], spec=child["spec"])
        res["released"][child["metadata"]["name"]] = {"phase": new.get("phase"),
                                                      "function": _function(child["spec"]["address"])}  # fmt: skip
    t0 = time.monotonic()
    left = sriov.apply(None, state["pf"], sriov.VFPlan([0]), timeout=60)
    res["zeroSeconds"] = round(time.monotonic() - t0, 2)
    res["vfsLeft"] = left if not isinstance(left, sriov.Refusal) else [left.reason, left.message]
    res["pfAfter"] = _function(state["pf"])
    res["autoprobeAfter"] = Path(f"/sys/bus/pci/devices/{state['pf']}/sriov_drivers_autoprobe").read_text().strip()
    res["vfDirsLeft"] = [a for a in (c["spec"]["address"] for c in state["children"])
                         if Path(f"/sys/bus/pci/devices/{a}").exists()]  # fmt: skip
    out(res)


def main() -> None:
    name, *args = sys.argv[1:]
    {"inventory": cmd_inventory, "bind": cmd_bind, "release": cmd_release, "qemu": cmd_qemu,
     "killbind": cmd_killbind, "domain": cmd_domain, "tuning": cmd_tuning, "sriov": cmd_sriov,
     "sriov-release": cmd_sriov_release,
     "nic": lambda a: out(nic(a))}[name](*args)  # fmt: skip


if __name__ == "__main__":
    main()
