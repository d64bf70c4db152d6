"""NodeTuning: node-wide kernel settings applied, recorded and restored (KSM, THP, swappiness, IO schedulers).

Pure decisions (`desired`, `plan_apply`, `plan_restore`, `conflicts`, `reconcile`, `release`) and a
small applier (`read_current`, `write`) that works on a sysfs root and a procfs root, so tests run on
fixture trees; the operator passes the node's real roots (Settings.node_roots).

A setting is a key -> a file:
    ksm.run                 <sys>/kernel/mm/ksm/run                      "1" / "0"
    ksm.merge_across_nodes  <sys>/kernel/mm/ksm/merge_across_nodes       "1" / "0"
    thp.enabled             <sys>/kernel/mm/transparent_hugepage/enabled "always [madvise] never"
    vm.swappiness           <proc>/sys/vm/swappiness                     "60"
    block.<dev>.scheduler   <sys>/block/<dev>/queue/scheduler            "[mq-deadline] kyber bfq none"

`found` holds the value of each key before this NodeTuning first changed it; `applied` what it holds
now. On removal a key is put back to `found` unless someone changed it since (then it is left alone and
reported). The kernel refuses a new merge_across_nodes while pages are merged: the plan unmerges first
(run = 2), writes it, then sets run again.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_BRACKET = re.compile(r"\[([^\]]+)\]")
_DEVICE = re.compile(r"^[a-z][a-z0-9]*$")


@dataclass(frozen=True)
class Roots:
    sys: Path = Path("/sys")
    proc: Path = Path("/proc")


def path_of(key: str, roots: Roots) -> Path:
    fixed = {
        "ksm.run": roots.sys / "kernel/mm/ksm/run",
        "ksm.merge_across_nodes": roots.sys / "kernel/mm/ksm/merge_across_nodes",
        "thp.enabled": roots.sys / "kernel/mm/transparent_hugepage/enabled",
        "vm.swappiness": roots.proc / "sys/vm/swappiness",
    }
    if key in fixed:
        return fixed[key]
    m = re.fullmatch(r"block\.([a-z][a-z0-9]*)\.scheduler", key)
    if not m:
        raise ValueError(f"unknown tuning key {key!r}")
    return roots.sys / "block" / m.group(1) / "queue/scheduler"


def parse(raw: str) -> str:
    """The selected value of a sysfs choice list ("always [madvise] never" -> "madvise"), or the value."""
    m = _BRACKET.search(raw)
    return m.group(1) if m else raw.strip()


def choices(raw: str) -> list[str]:
    """The values a sysfs choice list offers ("[mq-deadline] kyber none" -> ["mq-deadline", "kyber", "none"])."""
    return [word.strip("[]") for word in raw.split()]


def read_current(keys: Sequence[str], roots: Roots) -> dict[str, str | None]:
    """key -> value on the node; None where the file is missing (no KSM in the kernel, no such device)."""
    out: dict[str, str | None] = {}
    for key in keys:
        try:
            out[key] = parse(path_of(key, roots).read_text())
        except OSError:
            out[key] = None
    return out


def block_devices(roots: Roots) -> list[str]:
    base = roots.sys / "block"
    return sorted(p.name for p in base.iterdir() if _DEVICE.match(p.name)) if base.is_dir() else []


def desired(spec: Mapping[str, Any], devices: Sequence[str]) -> dict[str, str]:
    """What a NodeTuning spec asks of a node with these block devices (key -> value); unset = not touched."""
    out: dict[str, str] = {}
    ksm = spec.get("ksm") or {}
    if "mergeAcrossNodes" in ksm:
        out["ksm.merge_across_nodes"] = "1" if ksm["mergeAcrossNodes"] else "0"
    if "enabled" in ksm:
        out["ksm.run"] = "1" if ksm["enabled"] else "0"
    if spec.get("transparentHugepages"):
        out["thp.enabled"] = str(spec["transparentHugepages"])
    if spec.get("swappiness") is not None:
        out["vm.swappiness"] = str(int(spec["swappiness"]))
    for dev in devices:
        for entry in spec.get("ioSchedulers") or []:
            if fnmatch.fnmatchcase(dev, entry["device"]):
                out[f"block.{dev}.scheduler"] = str(entry["scheduler"])
                break
    return out


def unmatched_devices(spec: Mapping[str, Any], devices: Sequence[str], roots: Roots) -> list[str]:
    """Errors for the ioSchedulers entries that name one device (no `*`) this node does not have. A prefix
    entry ("sd*") matching nothing is not an error: one NodeTuning serves nodes with different disks."""
    out: list[str] = []
    for i, entry in enumerate(spec.get("ioSchedulers") or []):
        name = str(entry["device"])
        if not name.endswith("*") and name not in devices:
            have = ", ".join(devices) or "none"
            out.append(
                f"ioSchedulers[{i}] (device {name}): no such block device on this node "
                f"({roots.sys / 'block' / name} is missing; its block devices: {have})"
            )
    return out


def unoffered(want: Mapping[str, str], roots: Roots) -> dict[str, str]:
    """key -> error for the block devices whose scheduler file does not offer the wanted scheduler (the
    kernel would refuse the write: the scheduler's module is not loaded or not built for that queue)."""
    out: dict[str, str] = {}
    for key, value in want.items():
        if not key.startswith("block."):
            continue
        path = path_of(key, roots)
        try:
            offered = choices(path.read_text())
        except OSError:
            continue  # missing: reported as not on this node
        if value not in offered:
            dev = key.split(".")[1]
            out[key] = (
                f"{key}: device {dev} does not offer the {value} scheduler (it offers "
                f"{', '.join(offered) or 'none'}; load its module, modprobe {value}, or pick an offered one)"
            )
    return out


Write = tuple[str, str]


def _ordered(writes: list[Write], current: Mapping[str, str | None], run_after: str | None) -> list[Write]:
    """merge_across_nodes only changes while nothing is merged: run=2 first, then run back."""
    if not any(k == "ksm.merge_across_nodes" for k, _ in writes):
        return writes
    rest = [w for w in writes if w[0] not in ("ksm.merge_across_nodes", "ksm.run")]
    merge = next(w for w in writes if w[0] == "ksm.merge_across_nodes")
    run = run_after if run_after is not None else (current.get("ksm.run") or "0")
    return [("ksm.run", "2"), merge, ("ksm.run", "0" if run == "2" else run), *rest]


def plan_apply(
    want: Mapping[str, str], current: Mapping[str, str | None], found: Mapping[str, str]
) -> tuple[list[Write], dict[str, str]]:
    """Writes that bring the node to `want`, and `found` grown by the keys changed the first time."""
    new_found = dict(found)
    writes: list[Write] = []
    for key, value in want.items():
        now = current.get(key)
        if now is None:
            continue  # not on this node: reported by reconcile
        if key not in new_found:
            new_found[key] = now
        if now != value:
            writes.append((key, value))
    return _ordered(writes, current, want.get("ksm.run")), new_found


def plan_restore(
    found: Mapping[str, str], applied: Mapping[str, str], current: Mapping[str, str | None], keep: Sequence[str] = ()
) -> tuple[list[Write], list[str]]:
    """Writes that put `found` back (keys in `keep` stay: the NodeTuning still wants them), and what is
    left alone because it changed since this NodeTuning applied it."""
    writes: list[Write] = []
    left: list[str] = []
    for key, old in found.items():
        if key in keep:
            continue
        now = current.get(key)
        if now is None or now == old:
            continue
        if key in applied and now != applied[key]:
            left.append(f"{key}: left at {now} (changed since this NodeTuning set {applied[key]}; found {old})")
            continue
        writes.append((key, old))
    restore_run = found.get("ksm.run") if "ksm.run" not in keep else applied.get("ksm.run")
    return _ordered(writes, current, restore_run), left


def write(writes: Sequence[Write], roots: Roots) -> list[str]:
    """Carry out the writes in order; the errors, naming key, file and value."""
    errors: list[str] = []
    for key, value in writes:
        path = path_of(key, roots)
        try:
            path.write_text(value + "\n")
        except OSError as exc:
            errors.append(f"{key}: writing {value!r} to {path} failed: {exc.strerror or exc}")
    return errors


# --- templates' hostSettings ----------------------------------------------------------------------

_HOST_SETTING_KEYS = {
    "ksm": ("ksm.run", lambda v: "1" if v else "0"),
    "ksmMergeAcrossNodes": ("ksm.merge_across_nodes", lambda v: "1" if v else "0"),
    "transparentHugepages": ("thp.enabled", str),
    "swappiness": ("vm.swappiness", lambda v: str(int(v))),
}


def conflicts(want: Mapping[str, str], host_settings: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Where the hostSettings of the template/preset versions in use (source -> hostSettings) disagree
    with what the NodeTuning sets on this node."""
    out: list[str] = []
    for source, hs in sorted(host_settings.items()):
        for name, value in hs.items():
            if name == "ioScheduler":
                for key, sched in want.items():
                    if key.startswith("block.") and sched != value:
                        out.append(f"{source} wants ioScheduler {value}; {key} is set to {sched}")
                continue
            if name not in _HOST_SETTING_KEYS:
                continue
            key, conv = _HOST_SETTING_KEYS[name]
            if key in want and want[key] != conv(value):
                out.append(f"{source} wants {name} {value!r}; this NodeTuning sets {key} = {want[key]}")
    return out


# --- one pass ---------------------------------------------------------------------------------------


@dataclass
class NodeState:
    """status.nodes.<node> of one NodeTuning."""

    phase: str = ""
    found: dict[str, str] = field(default_factory=dict)
    applied: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    message: str = ""

    @classmethod
    def of(cls, status: Mapping[str, Any] | None) -> NodeState:
        s = status or {}
        return cls(
            phase=str(s.get("phase") or ""),
            found=dict(s.get("found") or {}),
            applied=dict(s.get("applied") or {}),
            errors=list(s.get("errors") or []),
            conflicts=list(s.get("conflicts") or []),
            message=str(s.get("message") or ""),
        )

    def as_status(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "found": self.found,
            "applied": self.applied,
            "errors": self.errors,
            "conflicts": self.conflicts,
            "message": self.message,
        }


def reconcile(
    spec: Mapping[str, Any],
    previous: NodeState,
    roots: Roots,
    host_settings: Mapping[str, Mapping[str, Any]] = {},  # noqa: B006 (read only)
    winner: str | None = None,
) -> NodeState:
    """Apply `spec` on the node at `roots`; `winner`: the name of another NodeTuning that applies here
    instead (this one then holds nothing: what it applied before is restored)."""
    if winner is not None:
        state = release(previous, roots)
        state.phase, state.message = "Conflict", f"NodeTuning {winner} applies on this node (older, or lower name)"
        return state
    want = desired(spec, block_devices(roots))
    keys = set(want) | set(previous.found)
    if "ksm.merge_across_nodes" in keys:
        keys.add("ksm.run")  # the unmerge dance returns run to its value
    current = read_current(sorted(keys), roots)
    refused = unoffered(want, roots)
    writes, found = plan_apply({k: v for k, v in want.items() if k not in refused}, current, previous.found)
    # keys this NodeTuning no longer sets (spec edited) go back to what was found
    dropped = {k: v for k, v in previous.found.items() if k not in want}
    undo, left = plan_restore(dropped, previous.applied, current)
    errors = write([*undo, *writes], roots)
    missing = [
        f"{key}: not on this node ({path_of(key, roots)} is missing)" for key in want if current.get(key) is None
    ]
    absent = unmatched_devices(spec, block_devices(roots), roots)
    after = read_current(list(want), roots)
    applied = {k: v for k, v in after.items() if v is not None and v == want[k]}
    errors += [
        f"{k}: wanted {want[k]}, the node reports {v}"
        for k, v in after.items()
        if v not in (None, want[k]) and k not in refused
    ]
    state = NodeState(
        found={k: v for k, v in found.items() if k in want},
        applied=applied,
        errors=[*errors, *refused.values(), *missing, *absent, *left],
        conflicts=conflicts(want, host_settings),
    )
    state.phase = "Applied" if not state.errors else "PartlyApplied"
    state.message = f"{len(applied)} of {len(want) + len(absent)} settings hold"
    if state.conflicts:
        state.message += f"; {len(state.conflicts)} conflict(s) with the hostSettings of VMs' templates"
    return state


def release(previous: NodeState, roots: Roots) -> NodeState:
    """Put back what this NodeTuning found on the node (deleted, or no longer selecting it)."""
    current = read_current(sorted(set(previous.found) | ({"ksm.run"} if previous.found else set())), roots)
    writes, left = plan_restore(previous.found, previous.applied, current)
    errors = write(writes, roots)
    restored = {k for k, _ in writes if k != "ksm.run" or "ksm.run" in previous.found}
    message = f"restored {len(restored)} setting(s) to the values found before"
    return NodeState(
        phase="Restored", errors=[*errors, *left], message=message if not errors else "restore failed in part"
    )


def selects(spec: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in (spec.get("nodeSelector") or {}).items())


def winner_among(name: str, candidates: Mapping[str, tuple[str, str]]) -> str | None:
    """Of the NodeTunings selecting this node (name -> (creationTimestamp, name)), the one that applies
    when it is not `name`; None when `name` applies."""
    if not candidates:
        return None
    first = min(candidates, key=lambda n: candidates[n])
    return None if first == name else first
