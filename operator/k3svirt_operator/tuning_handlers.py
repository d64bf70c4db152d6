"""kopf wiring of NodeTuning (cluster-scoped): apply on the nodes it selects, restore when it goes.

Every node's operator looks at every NodeTuning: one that selects the node (spec.nodeSelector against
the node's labels) is applied there through tuning.reconcile on the node's roots (Settings.node_roots);
one that no longer selects it but still has this node's entry in status.nodes is released (the values
found are put back) and the entry removed. Deleting a NodeTuning waits for the node's finalizer,
which is removed once the values are restored. Writes go to status.nodes.<node> only (a merge patch,
so the nodes never overwrite each other's entries).
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Mapping
from typing import Any

import kopf
from k3svirt_common import names

from . import context as ctx
from . import tuning

ROOTS = tuning.Roots(sys=ctx.SETTINGS.node_roots.sys_root, proc=ctx.SETTINGS.node_roots.proc_root)


def _entry(status: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    return ((status or {}).get("nodes") or {}).get(ctx.SETTINGS.node_name)


def touches_this_node(spec: Mapping[str, Any], status: Mapping[str, Any], **_: Any) -> bool:
    return tuning.selects(spec, ctx.NODE_LABELS) or _entry(status) is not None


@kopf.index(names.GROUP, names.VERSION, names.NODETUNING_PLURAL)
def nodetunings_here(name: str, spec: Mapping[str, Any], meta: Mapping[str, Any], **_: Any) -> dict[str, Any]:
    """The NodeTunings selecting this node, with their age: the oldest applies (tuning.winner_among)."""
    return {"selecting": (name, dict(spec.get("nodeSelector") or {}), str(meta.get("creationTimestamp") or ""))}


def _winner(name: str, index: kopf.Index) -> str | None:
    candidates = {}
    for other, selector, created in index.get("selecting", []):
        if tuning.selects({"nodeSelector": selector}, ctx.NODE_LABELS):
            candidates[other] = (created, other)
    return tuning.winner_among(name, candidates) if name in candidates else None


def _host_settings() -> dict[str, Mapping[str, Any]]:
    """hostSettings of the template and preset versions the VMs on this node were built from."""
    out: dict[str, Mapping[str, Any]] = {}
    for vm in ctx.rt().list_objects(names.VM_PLURAL):
        status = vm.get("status") or {}
        if status.get("node") != ctx.SETTINGS.node_name:
            continue
        ns = vm["metadata"]["namespace"]
        for ref in [status.get("resolvedTemplate") or {}, *(status.get("resolvedPresets") or [])]:
            if not ref.get("name"):
                continue
            template = ctx.get_template(ns, ref["name"]) or {}
            for version in (template.get("spec") or {}).get("versions") or []:
                if version.get("version") == ref.get("version") and version.get("hostSettings"):
                    out[f"{ns}/{ref['name']}@{ref['version']}"] = version["hostSettings"]
    return out


def _write(name: str, state: dict[str, Any] | None) -> None:
    if state is not None:
        state["lastUpdateTime"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    ctx.rt().patch_status(names.NODETUNING_PLURAL, None, name, {"nodes": {ctx.SETTINGS.node_name: state}})


def _pass(body: Mapping[str, Any], winner: str | None) -> tuple[dict[str, Any] | None, bool]:
    """One pass; returns the entry to write (None: remove it) and whether it changed."""
    spec = body.get("spec") or {}
    previous = _entry(body.get("status"))
    if not tuning.selects(spec, ctx.NODE_LABELS):
        if previous is None:
            return None, False
        tuning.release(tuning.NodeState.of(previous), ROOTS)
        return None, True
    state = tuning.reconcile(spec, tuning.NodeState.of(previous), ROOTS, _host_settings(), winner).as_status()
    old = {k: v for k, v in (previous or {}).items() if k != "lastUpdateTime"}
    return state, state != old


@kopf.on.resume(names.GROUP, names.VERSION, names.NODETUNING_PLURAL, when=touches_this_node)
@kopf.on.create(names.GROUP, names.VERSION, names.NODETUNING_PLURAL, when=touches_this_node)
@kopf.on.update(names.GROUP, names.VERSION, names.NODETUNING_PLURAL, when=touches_this_node, field="spec")
@kopf.timer(names.GROUP, names.VERSION, names.NODETUNING_PLURAL, when=touches_this_node, interval=30, idle=5)
async def nodetuning_changed(body: kopf.Body, name: str, nodetunings_here: kopf.Index, **_: Any) -> None:
    if not ctx.LABELS_READ.is_set():
        raise kopf.TemporaryError("this node's labels are not read yet", delay=5)
    state, changed = await asyncio.to_thread(_pass, dict(body), _winner(name, nodetunings_here))
    if changed:
        await asyncio.to_thread(_write, name, state)
        entry = state or {}
        message = entry.get("message") or "restored the values found before (no longer selected)"
        if entry.get("errors"):  # the Event says what is wrong, not only how many settings hold
            message += ": " + "; ".join(entry["errors"])
        kind = "Warning" if entry.get("errors") else "Normal"
        reason = entry.get("phase") or "Restored"
        kopf.event(body, type=kind, reason=reason, message=f"{ctx.SETTINGS.node_name}: {message}"[:1000])


@kopf.on.delete(names.GROUP, names.VERSION, names.NODETUNING_PLURAL, when=touches_this_node)
async def nodetuning_deleted(body: kopf.Body, name: str, **_: Any) -> None:
    """Puts back what was found; the node's finalizer goes once that is done."""
    previous = _entry(body.get("status"))
    if previous is None:
        return
    state = await asyncio.to_thread(tuning.release, tuning.NodeState.of(previous), ROOTS)
    if state.errors:
        kopf.event(body, type="Warning", reason="RestoreIncomplete",
                   message=f"{ctx.SETTINGS.node_name}: {'; '.join(state.errors)}"[:1000])  # fmt: skip
