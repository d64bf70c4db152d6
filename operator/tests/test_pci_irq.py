"""IRQ affinity of passed-through devices: the pure plan and the applier on a scratch /proc and /sys
(the real kernel is exercised inside the IOMMU machine: tests/iommu/test_iommu_machine.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from k3svirt_operator.pci import irq

ADDR = "0000:03:00.0"
INTERRUPTS = """\
           CPU0       CPU1       CPU2       CPU3
  24:          0          0          0          0  IR-PCI-MSI 1572864-edge      vfio-msix[0](0000:03:00.0)
  25:          3          0          0          0  IR-PCI-MSI 1572865-edge      vfio-msix[1](0000:03:00.0)
  26:          0          0          0          0  IR-IO-APIC   16-fasteoi   vfio-intx(0000:03:00.0)
  27:          9          0          0          0  IR-PCI-MSI 2097152-edge      vfio-msix[0](0000:04:00.0)
  28:         11          0          0          0  IR-PCI-MSI 524288-edge      enp1s0
"""


def test_cpuset_round_trip():
    assert irq.parse_cpuset("0-2,5, 7") == {0, 1, 2, 5, 7}
    assert irq.format_cpuset({7, 0, 1, 2, 5}) == "0-2,5,7"
    for bad in ("1-", "a", "3-1"):
        with pytest.raises(irq.AffinityError):
            irq.parse_cpuset(bad)


def test_housekeeping_prefers_the_emulator_cores():
    online = set(range(8))
    plan = irq.plan_affinity([25, 24], "housekeeping", online=online, dedicated={4, 5, 6, 7}, emulator={3})
    assert plan.cpus == "3" and plan.irqs == {24: "3", 25: "3"}
    # without emulator cores: everything outside the VM's dedicated set
    assert irq.plan_affinity([24], "housekeeping", online=online, dedicated={4, 5, 6, 7}).cpus == "0-3"


def test_vm_policy_uses_the_dedicated_cores():
    assert irq.plan_affinity([24], "vm", online=set(range(8)), dedicated={4, 5, 6, 7}, emulator={3}).cpus == "4-7"


@pytest.mark.parametrize(
    ("policy", "dedicated", "emulator", "words"),
    [
        ("vm", None, None, "cpu.dedicatedCpuSet"),
        ("vm", {9}, None, "names no online CPU"),
        ("housekeeping", {0, 1, 2, 3}, None, "leave one core to the host"),
        ("nearest", {1}, None, "housekeeping, vm"),
    ],
)
def test_impossible_plans_name_the_setting(policy, dedicated, emulator, words):
    with pytest.raises(irq.AffinityError, match=words):
        irq.plan_affinity([24], policy, online={0, 1, 2, 3}, dedicated=dedicated, emulator=emulator)


def fake_host(tmp_path: Path) -> tuple[Path, Path]:
    sys_root, proc = tmp_path / "sys", tmp_path / "proc"
    dev = sys_root / "bus/pci/devices" / ADDR / "msi_irqs"
    dev.mkdir(parents=True)
    for n in (24, 25):
        (dev / str(n)).write_text("msix\n")
    (sys_root / "devices/system/cpu").mkdir(parents=True)
    (sys_root / "devices/system/cpu/online").write_text("0-3\n")
    proc.mkdir()
    (proc / "interrupts").write_text(INTERRUPTS)
    for n in (24, 25, 26, 27, 28):
        (proc / "irq" / str(n)).mkdir(parents=True)
        (proc / "irq" / str(n) / "smp_affinity_list").write_text("0-3\n")
    return sys_root, proc


def test_device_irqs_are_its_vectors_and_its_vfio_lines(tmp_path):
    sys_root, proc = fake_host(tmp_path)
    assert irq.device_irqs(ADDR, sys_root, proc) == [24, 25, 26]  # not 27 (another device) nor 28


def test_steer_and_restore(tmp_path):
    sys_root, proc = fake_host(tmp_path)
    plan, previous = irq.steer_device(ADDR, "vm", dedicated={2, 3}, sys_root=sys_root, proc_root=proc)
    assert plan.cpus == "2-3" and previous == {24: "0-3", 25: "0-3", 26: "0-3"}
    assert (proc / "irq/25/smp_affinity_list").read_text() == "2-3"
    assert (proc / "irq/27/smp_affinity_list").read_text() == "0-3\n"  # another device: untouched
    # applying again changes nothing (the pass repeats while the guest enables more vectors)
    assert irq.steer_device(ADDR, "vm", dedicated={2, 3}, sys_root=sys_root, proc_root=proc)[1] == {}
    irq.restore_affinity(previous, proc)
    assert (proc / "irq/25/smp_affinity_list").read_text() == "0-3"


def test_an_irq_the_kernel_refuses_is_skipped(tmp_path):
    sys_root, proc = fake_host(tmp_path)

    def write(path: Path, value: str) -> None:
        if path.parent.name == "24":
            raise OSError(5, "Input/output error")
        path.write_text(value)

    _, previous = irq.steer_device(
        ADDR, "housekeeping", dedicated={2, 3}, sys_root=sys_root, proc_root=proc, write=write
    )
    assert set(previous) == {25, 26} and (proc / "irq/26/smp_affinity_list").read_text() == "0-1"


def test_the_vm_pass_reports_what_it_steered(tmp_path):
    """VMReconciler._steer_irqs: the IRQAffinity condition the VM's status carries."""
    from types import SimpleNamespace

    from k3svirt_operator.config import PciHost
    from k3svirt_operator.vm_reconciler import VMReconciler

    sys_root, proc = fake_host(tmp_path)
    fake = SimpleNamespace(settings=SimpleNamespace(pci=PciHost(sys_root=sys_root, proc_root=proc)))
    spec = {"cpu": {"dedicatedCpuSet": "2-3", "emulatorCpuSet": "1"}}
    cond = VMReconciler._steer_irqs(fake, spec, {"wan": ADDR})
    assert (cond["type"], cond["status"], cond["reason"]) == ("IRQAffinity", "True", "Applied")
    assert cond["message"] == f"housekeeping: {ADDR}: 3 IRQs on CPUs 1"
    assert (proc / "irq/24/smp_affinity_list").read_text() == "1"
    spec = {"cpu": {"dedicatedCpuSet": "0-3", "irqAffinity": "housekeeping"}}
    cond = VMReconciler._steer_irqs(fake, spec, {"wan": ADDR})
    assert cond["status"] == "False" and "spec.cpu.irqAffinity housekeeping" in cond["message"]
    assert "leave one core to the host" in cond["message"]
