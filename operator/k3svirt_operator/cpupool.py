"""The node's shared CPU pool: where ordinary VMs (no dedicated cores) run, so that the exclusive
CPUs of dedicated VMs and of Guaranteed pods are exclusive against every VM, not only against pods.

The pool is the node's online CPUs minus the exclusive ones, which are
- the CPUs the vCPUs of running VMs with dedicated cores are pinned to (the `<vcpupin>`s of each
  active domain's definition: what the builder wrote from cpu.dedicatedCpuSet or the kubelet's pick);
- where it can be read, every exclusive assignment in the kubelet's CPU manager checkpoint
  (`<kubelet root>/cpu_manager_state`, static policy): Guaranteed pods with whole CPUs, the
  dedicated VMs' own reservation pods among them (so their CPUs leave the pool as soon as the
  kubelet assigns them, before the domain starts).

No exclusive CPU (or nothing left beside them): the pool is None, every CPU, and ordinary VMs are
not confined. Ordinary VMs get the pool twice: in their definition (`<vcpu cpuset=…>`, built by
domain_xml from DomainContext.shared_cpus, for the next start) and live, whenever the pool changes,
through virDomainPinVcpuFlags / PinEmulator / PinIOThread (AFFECT_LIVE) on their running domains.
The decisions are the pure functions below; SharedPool only reads and applies them.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import libvirt
from k3svirt_common import names

from .cputopo import fmt

log = logging.getLogger(__name__)
MAX_CPU = 8191  # as the CRD's cpuset rules
_LIST = re.compile(r"^\d{1,4}(-\d{1,4})?(,\d{1,4}(-\d{1,4})?)*$")


def parse_list(text: str) -> set[int] | None:
    """A kernel/kubelet CPU list ("0-3,6") of a file we did not write; None when malformed, "" = no CPU."""
    text = text.strip()
    if not text:
        return set()
    if not _LIST.match(text):
        return None
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        a, b = int(lo), int(hi or lo)
        if a > b or b > MAX_CPU:
            return None
        out.update(range(a, b + 1))
    return out


def kubelet_exclusive(state_text: str) -> set[int] | None:
    """The exclusive CPUs of the kubelet's CPU manager checkpoint (its `entries`: pod uid ->
    container -> CPU list); None when it is not a checkpoint we can read (then it is ignored)."""
    try:
        state = json.loads(state_text)
    except ValueError:
        return None
    entries = state.get("entries", {}) if isinstance(state, dict) else None
    if not isinstance(entries, dict):
        return None
    out: set[int] = set()
    for containers in entries.values():
        if not isinstance(containers, dict):
            return None
        for cpus in containers.values():
            parsed = parse_list(cpus) if isinstance(cpus, str) else None
            if parsed is None:
                return None
            out |= parsed
    return out


def pinned_cpus(definition_xml: str) -> set[int]:
    """The host CPUs a domain definition pins its vCPUs to (`<cputune><vcpupin cpuset>`): a VM with
    dedicated cores. Ordinary VMs have no vcpupin in their definition (their pool is `<vcpu cpuset>`)."""
    root = ET.fromstring(definition_xml)
    out: set[int] = set()
    for pin in root.findall("cputune/vcpupin"):
        out |= parse_list(pin.get("cpuset") or "") or set()
    return out


def vcpu_cpuset(definition_xml: str) -> frozenset[int] | None:
    """`<vcpu cpuset>` of a domain definition: the CPUs it may run on by default; None = every CPU."""
    el = ET.fromstring(definition_xml).find("vcpu")
    value = el.get("cpuset") if el is not None else None
    parsed = parse_list(value) if value else None
    return frozenset(parsed) if parsed else None


def shared_pool(online: Iterable[int], exclusive: Iterable[int]) -> frozenset[int] | None:
    """Where ordinary VMs run: the online CPUs no one holds exclusively; None (every CPU) when no
    online CPU is exclusive, or when all of them are (an ordinary VM is never left without a CPU)."""
    on = set(online)
    rest = on - set(exclusive)
    if rest == on or not rest:
        return None
    return frozenset(rest)


@dataclass(frozen=True)
class Ordinary:
    """A running domain of this node's that the pool applies to, as libvirt reports its pinning."""

    name: str
    vcpus: dict[int, tuple[bool, ...]]  # online vCPU -> its affinity (virDomainGetVcpus)
    emulator: tuple[bool, ...] | None  # None: its definition pins the emulator (spec.cpu.emulatorCpuSet)
    iothreads: dict[int, tuple[bool, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Repin:
    vcpus: list[int]  # vCPUs whose pinning differs from the pool
    emulator: bool
    iothreads: list[int]

    def __bool__(self) -> bool:
        return bool(self.vcpus or self.emulator or self.iothreads)


def cpumap(cpus: Iterable[int], width: int) -> tuple[bool, ...]:
    wanted = set(cpus)
    return tuple(i in wanted for i in range(width))


def repin(domain: Ordinary, wanted: tuple[bool, ...]) -> Repin:
    """What must move for the domain to run on `wanted` (a cpumap): maps are compared on the
    CPUs both describe (libvirt's are as wide as the host's CPU count)."""

    def same(a: tuple[bool, ...]) -> bool:
        n = max(len(a), len(wanted))
        return all((a[i] if i < len(a) else False) == (wanted[i] if i < len(wanted) else False) for i in range(n))

    return Repin(
        vcpus=[i for i, m in sorted(domain.vcpus.items()) if not same(m)],
        emulator=domain.emulator is not None and not same(domain.emulator),
        iothreads=[t for t, m in sorted(domain.iothreads.items()) if not same(m)],
    )


@dataclass(frozen=True)
class Seen:
    """What the pool needs of a running domain's definition."""

    pins: frozenset[int]  # its vCPUs' pinned CPUs (a VM with dedicated cores); empty: ordinary
    ours: bool  # a k3svirt VM (its metadata element)
    emulator_pinned: bool  # cpu.emulatorCpuSet pins its emulator: the pool leaves that alone

    @classmethod
    def of(cls, definition_xml: str) -> Seen:
        root = ET.fromstring(definition_xml)
        return cls(frozenset(pinned_cpus(definition_xml)),
                   root.find(f"metadata/{{{names.XML_NAMESPACE}}}vm") is not None,
                   root.find("cputune/emulatorpin") is not None)  # fmt: skip


class SharedPool:
    """The pool as last computed (`cpuset()`, for the builder) and `sync()`, which recomputes it and
    re-pins this node's running ordinary domains to it (a worker thread calls it: libvirt blocks)."""

    def __init__(self, sys_root: Path = Path("/sys"), kubelet_root: Path | None = Path("/var/lib/kubelet")) -> None:
        self.sys_root, self.kubelet_root = sys_root, kubelet_root
        self._pool: frozenset[int] | None = None
        self._seen: dict[tuple[str, int], Seen] = {}  # running domains' definitions, by (UUID, domain id)
        self._lock = threading.Lock()  # one sync at a time

    def cpuset(self) -> str | None:
        pool = self._pool
        return fmt(pool) if pool else None

    def online(self) -> set[int]:
        return parse_list((self.sys_root / "devices/system/cpu/online").read_text()) or set()

    def kubelet(self) -> set[int]:
        """The kubelet checkpoint's exclusive CPUs; none when there is no readable checkpoint."""
        if self.kubelet_root is None:
            return set()
        try:
            text = (self.kubelet_root / "cpu_manager_state").read_text()
        except OSError:
            return set()
        found = kubelet_exclusive(text)
        if found is None:
            log.warning("kubelet CPU manager checkpoint not understood; ignored",
                        extra={"path": str(self.kubelet_root / "cpu_manager_state")})  # fmt: skip
            return set()
        return found

    def sync(self, conn: libvirt.virConnect, mine: Callable[[tuple[str, str]], bool],
             repair: bool = True) -> tuple[bool, list[str]]:  # fmt: skip
        """Recomputes the pool; re-pins the running ordinary domains of VMs `mine` says this node runs
        when the pool changed, or always with `repair` (drift), and those started since the last
        sync. (The pool changed, the domains moved.)
        Each running domain's definition is read once per run (cached by UUID and domain id, which a
        start renews): a burst of starts costs one listing per sync, not one XML per domain."""
        with self._lock:
            online = self.online()
            exclusive = self.kubelet()
            seen: dict[tuple[str, int], Seen] = {}
            ordinary: list[tuple[libvirt.virDomain, Seen, bool]] = []
            for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                key = (dom.UUIDString(), dom.ID())
                known = self._seen.get(key)
                fresh = known is None  # started since the last sync
                if known is None:
                    try:
                        known = Seen.of(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
                    except libvirt.libvirtError:
                        continue  # gone meanwhile
                seen[key] = known
                exclusive |= known.pins
                if not known.pins and known.ours:
                    ordinary.append((dom, known, fresh))
            self._seen = seen
            pool = shared_pool(online, exclusive)
            changed, self._pool = pool != self._pool, pool
            if changed:
                log.info("shared CPU pool", extra={"pool": fmt(pool) if pool else "all",
                                                   "exclusive": fmt(exclusive & online)})  # fmt: skip
            # A domain started since the last sync is checked too: it was defined with the pool its
            # VM pass saw, which a dedicated VM stopping or starting meanwhile may have changed.
            due = [(d, known) for d, known, fresh in ordinary if changed or repair or fresh]
            if not due:
                return changed, []
            width = max(online) + 1 if online else 1
            wanted = cpumap(pool if pool is not None else online, width)
            moved = [d.name() for d, known in due if self._apply(d, known, wanted, mine)]
            return changed, moved

    @staticmethod
    def _apply(dom: libvirt.virDomain, known: Seen, wanted: tuple[bool, ...],
               mine: Callable[[tuple[str, str]], bool]) -> bool:  # fmt: skip
        key = names.parse_domain_name(dom.name())
        if key is None or not mine(key):
            return False  # not a VM this node's operator runs
        live = libvirt.VIR_DOMAIN_AFFECT_LIVE
        try:
            info, maps = dom.vcpus()  # online vCPUs only: offline ones take their pin from the definition
            current = Ordinary(
                dom.name(),
                {int(v[0]): tuple(m) for v, m in zip(info, maps, strict=False)},
                None if known.emulator_pinned else tuple(dom.emulatorPinInfo(live)),
                {int(t[0]): tuple(t[1]) for t in (dom.ioThreadInfo(live) or [])},
            )
            plan = repin(current, wanted)
            for i in plan.vcpus:
                dom.pinVcpuFlags(i, wanted, live)
            if plan.emulator:
                dom.pinEmulator(wanted, live)
            for t in plan.iothreads:
                dom.pinIOThread(t, wanted, live)
        except libvirt.libvirtError as exc:  # stopped meanwhile, or a vCPU offline: the next sync
            log.warning("shared CPU pool not applied", extra={"domain": dom.name(), "error": exc.get_error_message()})
            return False
        return bool(plan)
