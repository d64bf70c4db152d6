"""Host IRQ affinity of passed-through devices: where the kernel delivers a VFIO device's interrupts.

Once QEMU opened a device through VFIO, the host kernel owns one IRQ per enabled vector
(``vfio-intx(<addr>)``, ``vfio-msi[n](<addr>)``, ``vfio-msix[n](<addr>)`` in ``/proc/interrupts``)
and forwards each to the guest. Left alone, irqbalance or the default mask lets them land on
any core, including the VM's dedicated ones, where a host interrupt preempts a vCPU.

The choice (``policy``), documented in docs/pci-passthrough.md:

* ``housekeeping`` (default): the IRQs go to the housekeeping cores — the VM's emulator cores
  (``cpu.emulatorCpuSet``) when it has them, else every online core outside the VM's dedicated
  set. Right for poll-mode guests (VPP/DPDK poll the NIC; the few interrupts must not disturb
  the polling cores) and for any pinned VM.
* ``vm``: the IRQs go to the VM's own dedicated cores (``cpu.dedicatedCpuSet``): the host handler
  runs where the vCPU that takes the interrupt runs (lower latency for interrupt-driven guests,
  at the cost of host work on those cores).

:func:`plan_affinity` is pure; :func:`device_irqs` reads, :func:`apply_affinity` writes
``/proc/irq/<n>/smp_affinity_list`` and returns the previous values for :func:`restore_affinity`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from . import sysfs

log = logging.getLogger(__name__)

POLICY_HOUSEKEEPING = "housekeeping"
POLICY_VM = "vm"
POLICIES = (POLICY_HOUSEKEEPING, POLICY_VM)


class AffinityError(ValueError):
    """A plan that cannot be made; the message names the setting at fault and what to do."""


def parse_cpuset(text: str) -> set[int]:
    """``"0-2,5"`` -> ``{0, 1, 2, 5}`` (the kernel's cpulist format)."""
    cpus: set[int] = set()
    for part in (p.strip() for p in text.strip().split(",")):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise AffinityError(f"not a CPU list: {text!r}")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise AffinityError(f"not a CPU list: {text!r}")
        cpus.update(range(lo, hi + 1))
    return cpus


def format_cpuset(cpus: Iterable[int]) -> str:
    """``{0, 1, 2, 5}`` -> ``"0-2,5"``."""
    out: list[str] = []
    run: list[int] = []
    for c in sorted(set(cpus)):
        if run and c == run[-1] + 1:
            run.append(c)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [c]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


@dataclass(frozen=True)
class AffinityPlan:
    cpus: str  # the cpulist every IRQ of the device gets
    irqs: dict[int, str]  # irq -> cpulist


def target_cpus(
    policy: str, *, online: set[int], dedicated: set[int] | None = None, emulator: set[int] | None = None
) -> set[int]:
    """The cores the device's IRQs go to under ``policy`` (see the module docstring)."""
    dedicated, emulator = set(dedicated or ()), set(emulator or ())
    if policy not in POLICIES:
        raise AffinityError(f"IRQ affinity policy {policy!r} is unknown: use one of {', '.join(POLICIES)}")
    if policy == POLICY_VM:
        if not dedicated:
            raise AffinityError(
                "IRQ affinity policy 'vm' needs the VM's cpu.dedicatedCpuSet: set it or use 'housekeeping'"
            )
        cpus = dedicated & online
        if not cpus:
            raise AffinityError(
                f"cpu.dedicatedCpuSet {format_cpuset(dedicated)} names no online CPU (online: {format_cpuset(online)})"
            )
        return cpus
    cpus = (emulator & online) if emulator else (online - dedicated)
    if not cpus:
        raise AffinityError(
            f"no housekeeping CPU for the IRQs: cpu.dedicatedCpuSet {format_cpuset(dedicated)} covers every "
            f"online CPU ({format_cpuset(online)}); leave one core to the host or set cpu.emulatorCpuSet"
        )
    return cpus


def plan_affinity(
    irqs: Iterable[int],
    policy: str,
    *,
    online: set[int],
    dedicated: set[int] | None = None,
    emulator: set[int] | None = None,
) -> AffinityPlan:
    """Pure: every IRQ of the device -> the cpulist ``policy`` picks."""
    cpus = format_cpuset(target_cpus(policy, online=online, dedicated=dedicated, emulator=emulator))
    return AffinityPlan(cpus=cpus, irqs={irq: cpus for irq in sorted(set(irqs))})


_INTERRUPTS_LINE = re.compile(r"^\s*(\d+):")


def device_irqs(address: str, sys_root: Path | str | None = None, proc_root: Path | str | None = None) -> list[int]:
    """The host IRQs of one PCI function: its MSI/MSI-X vectors (``msi_irqs/``) and the ``vfio-*``
    lines of ``/proc/interrupts`` that name it (INTx included, which has no ``msi_irqs`` entry)."""
    address = sysfs.normalize_address(address)
    found: set[int] = set()
    msi = sysfs.pci_device_dir(sysfs.sysfs_root(sys_root), address) / "msi_irqs"
    if msi.is_dir():
        found.update(int(p.name) for p in msi.iterdir() if p.name.isdigit())
    try:
        lines = (sysfs.proc_root(proc_root) / "interrupts").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        m = _INTERRUPTS_LINE.match(line)
        if m and f"({address})" in line:
            found.add(int(m.group(1)))
    return sorted(found)


def online_cpus(sys_root: Path | str | None = None) -> set[int]:
    text = sysfs.read_attr(sysfs.sysfs_root(sys_root) / "devices/system/cpu/online")
    if not text:
        raise AffinityError("cannot read devices/system/cpu/online")
    return parse_cpuset(text)


def apply_affinity(
    plan: AffinityPlan, proc_root: Path | str | None = None, *, write: sysfs.Writer = sysfs.write_attr
) -> dict[int, str]:
    """Write the plan; return ``{irq: previous cpulist}`` of the IRQs it changed (for restore).

    An IRQ the kernel refuses to move (``EIO``: e.g. a per-CPU or managed IRQ) is logged and skipped.
    """
    proc = sysfs.proc_root(proc_root)
    previous: dict[int, str] = {}
    for irq, cpus in plan.irqs.items():
        path = proc / "irq" / str(irq) / "smp_affinity_list"
        before = sysfs.read_attr(path)
        if before is None:
            continue  # the IRQ went away (QEMU closed the vector)
        if parse_cpuset(before) == parse_cpuset(cpus):
            continue
        try:
            write(path, cpus)
        except OSError as e:
            log.warning("IRQ %d cannot be moved to %s: %s", irq, cpus, e, extra={"irq": irq, "cpus": cpus})
            continue
        previous[irq] = before
        log.info("IRQ %d moved to CPUs %s (was %s)", irq, cpus, before, extra={"irq": irq, "cpus": cpus})
    return previous


def restore_affinity(
    previous: Mapping[int, str], proc_root: Path | str | None = None, *, write: sysfs.Writer = sysfs.write_attr
) -> None:
    proc = sysfs.proc_root(proc_root)
    for irq, cpus in previous.items():
        path = proc / "irq" / str(irq) / "smp_affinity_list"
        if path.exists():
            try:
                write(path, cpus)
            except OSError as e:
                log.warning("IRQ %d cannot be restored to %s: %s", irq, cpus, e, extra={"irq": irq})


def steer_device(
    address: str,
    policy: str,
    *,
    dedicated: set[int] | None = None,
    emulator: set[int] | None = None,
    sys_root: Path | str | None = None,
    proc_root: Path | str | None = None,
    write: sysfs.Writer = sysfs.write_attr,
) -> tuple[AffinityPlan, dict[int, str]]:
    """Read the device's IRQs and the online CPUs, plan, apply: (plan, previous values).

    A device without host IRQs yet (no QEMU has opened it, or the guest enabled no vector) is
    nothing to do."""
    irqs = device_irqs(address, sys_root, proc_root)
    if not irqs:
        return AffinityPlan(cpus="", irqs={}), {}
    plan = plan_affinity(
        irqs,
        policy,
        online=online_cpus(sys_root),
        dedicated=dedicated,
        emulator=emulator,
    )
    return plan, apply_affinity(plan, proc_root, write=write)
