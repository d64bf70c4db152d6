"""/vms: VirtualMachine custom resources (the node operator does the rest)."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from typing import Any

import urllib3
from flask import Blueprint, current_app, json
from k3svirt_common import templates as tmod
from k3svirt_common.names import ConditionType, PrintableStatus, RunStrategy, run_strategy

from .. import contract as c
from ..api import check_name, created, json_body, namespace, op
from ..cache import STALE_HEADER, Resource
from ..conventions import as_precondition_failure, check_version, delete_options, if_match, versioned, with_version
from ..errors import Problem, validation_problem
from ..k8s import k3svirt_path
from ..schemas import require_object, validate
from . import clean_metadata, deletion_accepted, kube, list_items

bp = Blueprint("vms", __name__)

_http = urllib3.PoolManager(num_pools=4, maxsize=4, retries=False)


def blueprints() -> list[Blueprint]:
    return [bp]


def vm_path(ns: str | None, name: str | None = None, sub: str | None = None) -> str:
    return k3svirt_path(c.VM_PLURAL, ns, name, sub)


def template_path(ns: str, name: str | None = None) -> str:
    return k3svirt_path(c.TEMPLATE_PLURAL, ns, name)


def summary(obj: dict[str, Any]) -> dict[str, Any]:
    md = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    ready = any(
        cond.get("type") == ConditionType.READY and cond.get("status") == "True"
        for cond in status.get("conditions") or []
        if isinstance(cond, dict)
    )
    out: dict[str, Any] = {
        "name": md.get("name", ""),
        "namespace": md.get("namespace", ""),
        "runStrategy": run_strategy(spec),
        "printableStatus": status.get("printableStatus")
        or (PrintableStatus.TERMINATING if md.get("deletionTimestamp") else PrintableStatus.PENDING),
        "ready": ready,
        "deleting": bool(md.get("deletionTimestamp")),
    }
    if status.get("node"):
        out["node"] = status["node"]
    tmpl = spec.get("template") or {}
    if tmpl.get("name"):
        out["template"] = tmpl["name"]
    version = (status.get("resolvedTemplate") or {}).get("version") or tmpl.get("version")
    if version:
        out["templateVersion"] = version
    interfaces = [
        {k: i[k] for k in ("name", "macAddress", "ipAddress") if isinstance(i.get(k), str)}
        for i in status.get("interfaces") or []
        if isinstance(i, dict)
    ]
    if interfaces:
        out["interfaces"] = interfaces
        address = next((i["ipAddress"] for i in interfaces if i.get("ipAddress")), None)
        if address:
            out["ipAddress"] = address
    if md.get("creationTimestamp"):
        out["created"] = md["creationTimestamp"]
    return out


VMS = Resource(c.VM_KIND, c.VM_PLURAL, summary)


def build_spec(ns: str, body: dict[str, Any]) -> dict[str, Any]:
    """The VM spec to write: as given, or template/presets references + overrides (the operator merges)."""
    if "spec" in body:
        return copy.deepcopy(body["spec"])
    overrides = copy.deepcopy(body.get("overrides") or {})
    for key in ("template", "presets"):
        if key in overrides:
            raise validation_problem(
                [
                    {
                        "field": f"overrides.{key}",
                        "message": f"set {key} at the top level of the request, not in overrides",
                    }
                ]
            )
    spec: dict[str, Any] = {"template": {k: v for k, v in body["template"].items() if k in ("name", "version")}}
    presets = [{"name": p} if isinstance(p, str) else dict(p) for p in body.get("presets") or []]
    if presets:
        spec["presets"] = presets
    spec.update(overrides)
    return spec


def _rename(errors: list[dict[str, str]], from_template: bool) -> list[dict[str, str]]:
    """Name fields as the caller sent them: VM-own fields are `overrides.*` in a template request."""
    if not from_template:
        return errors
    for e in errors:
        f = e["field"]
        if f.startswith("spec.") and not f.startswith(("spec.template", "spec.presets")):
            e["field"] = "overrides." + f[len("spec.") :]
        elif f.startswith(("spec.template", "spec.presets")):
            e["field"] = f[len("spec.") :]
    return errors


def check_spec(ns: str, spec: dict[str, Any], from_template: bool) -> None:
    """422 naming the field when the spec (or its merge with the template/presets) is invalid."""
    errors = c.validate_spec(c.VM_KIND, spec)
    if errors:
        raise validation_problem(_rename(errors, from_template))
    if not spec.get("template") and not spec.get("presets"):
        return

    def get_template(name: str) -> dict[str, Any] | None:
        return kube().get_or_none(template_path(ns, name))

    try:
        tmod.expand(spec, get_template, validate=True)
    except tmod.TemplateError as exc:
        errs = [{"field": str(getattr(e, "field", "")), "message": str(getattr(e, "message", e))} for e in exc.errors]
        raise validation_problem(_rename(errs, from_template)) from exc


@op(
    bp,
    "/vms",
    "POST",
    summary="Create a VirtualMachine from a template (+presets, overrides) or a full spec",
    body="VMCreate",
    response=(201, "VirtualMachine", "created"),
    query=("namespace",),
)
def create_vm():
    ns = namespace()
    body = require_object(json_body())
    if ("spec" in body) == ("template" in body):
        raise validation_problem([{"field": "spec", "message": "give exactly one of spec or template"}])
    validate("VMCreateFromSpec" if "spec" in body else "VMCreateFromTemplate", body)
    spec = build_spec(ns, body)
    check_spec(ns, spec, from_template="spec" not in body)
    obj = {
        "apiVersion": c.API_VERSION,
        "kind": c.VM_KIND,
        "metadata": {"name": body["name"], "namespace": ns, "labels": body.get("labels") or {}},
        "spec": spec,
    }
    out = kube().post(vm_path(ns), obj)
    return created(clean_metadata(out), f"/api/v1/vms/{body['name']}?namespace={ns}")


@op(
    bp,
    "/vms",
    "GET",
    summary="List VirtualMachines with a status summary",
    response=(200, "VMList", "VMs"),
    query=("namespace", "labelSelector"),
    response_headers=STALE_HEADER,
    paged=True,
)
def list_vms():
    return list_items(lambda ns, query: kube().get(vm_path(ns), query=query), summary, cached=VMS)


@op(
    bp,
    "/vms/<name>",
    "GET",
    summary="Get one VirtualMachine (spec + status)",
    response=(200, "VirtualMachine", "the VM"),
    query=("namespace",),
    names="label",
    etag=True,
)
def get_vm(name: str):
    ns = namespace()
    return clean_metadata(versioned(kube().get(vm_path(ns, check_name(name, label=True)))))


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge member by member, `null` removes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


MERGE_PATCH_TYPES = ("application/merge-patch+json", "application/json")
EDIT_RETRIES = 3


def _edit(name: str, new_spec: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    """Read the VM, compute its new spec, validate it (the one validation path: check_spec) and write it
    at the version read. With If-Match: 412 unless the VM is at that version, before and during the
    write. Without: a write lost to a concurrent one is computed again on the fresh object."""
    ns = namespace()
    check_name(name, label=True)
    for attempt in range(EDIT_RETRIES):
        vm = kube().get(vm_path(ns, name))
        check_version(vm)
        md = vm.get("metadata") or {}
        if md.get("deletionTimestamp"):
            raise Problem(409, f"VirtualMachine {name!r} is being deleted", reason="Deleting")
        spec = new_spec(vm.get("spec") or {})
        check_spec(ns, spec, from_template=False)
        obj = {"apiVersion": vm["apiVersion"], "kind": vm["kind"], "metadata": md, "spec": spec}
        try:
            out = kube().put(vm_path(ns, name), obj)
        except Problem as exc:
            stale = exc.status == 409 and exc.extra.get("reason") == "Conflict"
            if stale and if_match() is None and attempt + 1 < EDIT_RETRIES:
                continue
            if stale and if_match() is None:
                raise Problem(409, f"VirtualMachine {name!r} kept changing while it was edited; try again",
                              reason="Conflict") from None  # fmt: skip
            raise as_precondition_failure(exc) from None
        return clean_metadata(versioned(out))
    raise AssertionError("unreachable")


def _spec_body(schema: str) -> dict[str, Any]:
    body = require_object(json_body())
    validate(schema, body)
    return body["spec"]


@op(
    bp,
    "/vms/<name>",
    "PATCH",
    summary="Edit a VirtualMachine: JSON merge patch of its spec",
    description=(
        'Body `{"spec": {...}}`, merged into the spec as RFC 7386 says (`null` removes a field); the result '
        "is validated like a created VM (422 naming the field). `If-Match` with the VM's ETag: 412 when it "
        "changed meanwhile. Changes a running guest cannot take are applied by the next restart (condition "
        "RestartRequired); memory (up to memory.maxSize) and vCPUs (up to cpu.maxVcpus) are applied live "
        "where the guest accepts them (status.liveResources says so)."
    ),
    body="VMSpecPatch",
    body_types=MERGE_PATCH_TYPES,
    response=(200, "VirtualMachine", "the VM as written"),
    query=("namespace",),
    names="label",
)
def patch_vm(name: str):
    patch = _spec_body("VMSpecPatch")
    return _edit(name, lambda spec: merge_patch(spec, patch))


@op(
    bp,
    "/vms/<name>",
    "PUT",
    summary="Replace a VirtualMachine's spec",
    description='Body `{"spec": {...}}`: the whole new spec (validated like a created VM). `If-Match` as for PATCH.',
    body="VMSpecReplace",
    response=(200, "VirtualMachine", "the VM as written"),
    query=("namespace",),
    names="label",
)
def replace_vm(name: str):
    spec = _spec_body("VMSpecReplace")
    return _edit(name, lambda _old: copy.deepcopy(spec))


@op(
    bp,
    "/vms/<name>",
    "DELETE",
    summary="Delete a VirtualMachine (the operator removes the domain)",
    response=(202, "Accepted", "deletion accepted"),
    query=("namespace",),
    names="label",
)
def delete_vm(name: str):
    ns = namespace()
    kube().delete(vm_path(ns, check_name(name, label=True)), body=delete_options())
    return deletion_accepted(c.VM_KIND, name, ns)


def _action(name: str, action: str) -> tuple[dict[str, Any], int]:
    ns = namespace()
    check_name(name, label=True)
    vm = kube().get(vm_path(ns, name))
    check_version(vm)  # with If-Match: 412 unless at that version; the patch below carries it too
    md = vm.get("metadata") or {}
    if md.get("deletionTimestamp"):
        raise Problem(409, f"VirtualMachine {name!r} is being deleted")
    strategy = run_strategy(vm.get("spec") or {})
    result: dict[str, Any] = {"name": name, "namespace": ns, "action": action}
    if action == "restart" or strategy == RunStrategy.MANUAL:
        if action == "restart":
            status = (vm.get("status") or {}).get("printableStatus")
            if strategy == RunStrategy.HALTED or status in (PrintableStatus.STOPPED, PrintableStatus.STOPPING):
                raise Problem(
                    409,
                    f"VirtualMachine {name!r} is not running (runStrategy {strategy}, "
                    f"status {status}); start it instead",
                )
        request_id = f"{action}/{uuid.uuid4()}"
        # No resourceVersion precondition: the operator rewrites status all the time, and a one-shot
        # request with a unique id is judged against the VM's runStrategy when the operator performs it.
        patch = {"metadata": {"annotations": {c.ACTION_ANNOTATION: request_id}}}
        result["requestId"] = request_id
    else:
        target = RunStrategy.ALWAYS if action == "start" else RunStrategy.HALTED
        patch = {"spec": {"runStrategy": target}}
        strategy = target
    kube().patch(vm_path(ns, name), with_version(patch))
    result["runStrategy"] = str(strategy)
    return result, 202


@op(
    bp,
    "/vms/<name>/start",
    "POST",
    role="operate",
    summary="Start: runStrategy Always (Manual: a start action request)",
    response=(202, "VMAction", "requested"),
    query=("namespace",),
    names="label",
    conditional=True,
)
def start_vm(name: str):
    return _action(name, "start")


@op(
    bp,
    "/vms/<name>/stop",
    "POST",
    role="operate",
    summary="Stop: runStrategy Halted (Manual: a stop action request)",
    response=(202, "VMAction", "requested"),
    query=("namespace",),
    names="label",
    conditional=True,
)
def stop_vm(name: str):
    return _action(name, "stop")


@op(
    bp,
    "/vms/<name>/reboot",
    "POST",
    role="operate",
    summary="Reboot: a restart action request (any runStrategy)",
    response=(202, "VMAction", "requested"),
    query=("namespace",),
    names="label",
    conditional=True,
)
def reboot_vm(name: str):
    return _action(name, "restart")


@op(
    bp,
    "/vms/<name>/stats",
    "GET",
    summary="Live resource figures from the node operator's monitoring endpoint",
    response=(200, "VMStats", "stats JSON"),
    query=("namespace",),
    names="label",
)
def vm_stats(name: str):
    ns = namespace()
    vm = kube().get(vm_path(ns, check_name(name, label=True)))
    status = vm.get("status") or {}
    printable = status.get("printableStatus") or PrintableStatus.PENDING
    if printable != PrintableStatus.RUNNING:
        raise Problem(409, f"VirtualMachine {name!r} is not running (status {printable})", reason="NotRunning")
    endpoint = (status.get("monitoring") or {}).get("endpoint")
    if not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://")):
        raise Problem(503, f"VirtualMachine {name!r} has no monitoring endpoint yet", headers={"Retry-After": "5"})
    timeout = float(current_app.config.get("STATS_TIMEOUT", 2.0))
    try:
        resp = _http.request(
            "GET",
            endpoint,
            timeout=urllib3.Timeout(connect=timeout, read=timeout),
            headers={"Accept": "application/json"},
        )
        if resp.status != 200:
            raise Problem(503, f"monitoring endpoint answered HTTP {resp.status}", headers={"Retry-After": "5"})
        data = json.loads(resp.data)
    except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
        raise Problem(
            503, f"monitoring endpoint unreachable: {type(exc).__name__}", headers={"Retry-After": "5"}
        ) from exc
    if not isinstance(data, dict):
        raise Problem(503, "monitoring endpoint returned non-object JSON")
    return data
