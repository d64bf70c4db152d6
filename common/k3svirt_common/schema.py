"""THE validation path for k3svirt objects: the CRD's openAPIV3Schema, evaluated with jsonschema.

Used by the gateway (before it writes to the API server, to answer with field paths) and by the
operator (a VM spec merged with its template/presets never passes the API server, so
templates.validate_merged validates it here, as a spec without template references).

Where the CRDs come from (first match wins):
  1. $K3SVIRT_CRDS_DIR
  2. the repository's crds/ directory, `../../crds` relative to this package (source checkout or
     editable install)
  3. package data `k3svirt_common/crds/` (a built wheel: common/setup.py copies ../crds/*.yaml into
     the package at build time, no symlink needed)

Kubernetes extensions are translated for jsonschema:
  * nullable: true                      -> the type also admits null
  * x-kubernetes-int-or-string: true    -> integer or string
  * x-kubernetes-preserve-unknown-fields-> any extra fields allowed (otherwise, with strict=True,
                                           unknown fields are errors, like kubectl's strict field
                                           validation)
  * x-kubernetes-list-type: map / set   -> keys / items must be unique
  * x-kubernetes-validations (CEL)      -> evaluated with k3svirt_common.cel (every CRD rule is pinned
                                           against it in common/tests/test_cel_crd_rules.py; a rule
                                           that fails to evaluate refuses, as in the API server);
                                           oldSelf transition rules need the stored object and are
                                           left to the API server.
"""

from __future__ import annotations

import copy
import functools
import os
import re
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from jsonschema import validators

from . import cel
from .fielderror import FieldError
from .names import API_VERSION, DEFAULT_RUN_STRATEGY, PLURALS, VERSION

__all__ = [
    "FieldError",
    "SchemaNotFound",
    "apply_vm_defaults",
    "crds_dir",
    "load_crd",
    "openapi_schema",
    "validate_object",
    "validate_spec",
]


class SchemaNotFound(LookupError):
    """No CRD for the kind (or version) was found."""


def crds_dir() -> Path:
    """The directory holding the CRD YAML files (see the module docstring for the search order)."""
    env = os.environ.get("K3SVIRT_CRDS_DIR")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parent.parent.parent / "crds"
    if repo.is_dir():
        return repo
    packaged = resources.files(__package__) / "crds"
    if packaged.is_dir():
        return Path(str(packaged))
    raise SchemaNotFound("no crds directory: set K3SVIRT_CRDS_DIR or install k3svirt-common from a checkout")


@functools.lru_cache(maxsize=32)
def _load_crd(directory: str, kind: str) -> dict[str, Any]:
    base = Path(directory)
    candidates: list[Path] = []
    if kind in PLURALS:
        candidates.append(base / f"{PLURALS[kind]}.yaml")
    candidates += sorted(p for p in base.glob("*.y*ml") if p not in candidates)
    for path in candidates:
        if not path.is_file():
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if (
                isinstance(doc, dict)
                and doc.get("kind") == "CustomResourceDefinition"
                and doc.get("spec", {}).get("names", {}).get("kind") == kind
            ):
                return doc
    raise SchemaNotFound(f"no CustomResourceDefinition for kind {kind!r} in {base}")


def load_crd(kind: str) -> dict[str, Any]:
    """The CRD document for `kind` (cached; call clear_cache() after editing CRD files)."""
    return _load_crd(str(crds_dir()), kind)


def clear_cache() -> None:
    _load_crd.cache_clear()
    _validator.cache_clear()


def openapi_schema(kind: str, version: str = VERSION) -> dict[str, Any]:
    """The version's openAPIV3Schema of `kind`, as written in the CRD."""
    for v in load_crd(kind)["spec"]["versions"]:
        if v["name"] == version:
            return v["schema"]["openAPIV3Schema"]
    raise SchemaNotFound(f"kind {kind!r} has no version {version!r}")


# --- translation of Kubernetes extensions -------------------------------------------------------

_TYPES = {"object", "array", "string", "integer", "number", "boolean"}


def _translate(schema: dict[str, Any], strict: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {k: _translate(v, strict) for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _translate(value, strict)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [_translate(v, strict) for v in value]
        elif key == "not":
            out[key] = _translate(value, strict)
        elif key == "format":
            continue  # int32/int64/date-time/...: informational here
        else:
            out[key] = value
    if schema.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if schema.get("nullable") and out.get("type") in _TYPES:
        out["type"] = [out["type"], "null"]
    if (
        strict
        and schema.get("type") == "object"
        and "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.lru_cache(maxsize=256)
def _compiled(rule: str) -> Any:
    try:
        return cel.compile_rule(rule)
    except cel.CelUnsupported:
        return None


def _kube_validations(validator: Any, rules: list[dict[str, Any]], instance: Any, schema: Any) -> Iterator[Any]:
    for rule in rules:
        fn = _compiled(rule.get("rule", ""))
        if fn is None:
            continue
        message = rule.get("message") or f"failed rule: {rule.get('rule')}"
        try:
            ok = fn(instance)
        except cel.CelUnsupported:
            continue  # compiled rules never reach this; the API server decides
        except (cel.CelError, TypeError, ValueError, ZeroDivisionError) as e:
            # The API server refuses an object whose rule fails to evaluate (no such key, a bad
            # conversion): so does this path, or a value the rule guards would reach the operator.
            # A value that already breaks its schema (a string where a number belongs) is refused
            # there, naming the exact field; the rule's error would only repeat it.
            rest = {k: v for k, v in schema.items() if k != "x-kubernetes-validations"}
            if not validator.evolve(schema=rest).is_valid(instance):
                continue
            ok, message = False, f"{message} (the rule could not be evaluated: {e})"
        if not ok:
            err = jsonschema.ValidationError(message, validator="x-kubernetes-validations")
            err._k3svirt_field_path = rule.get("fieldPath", "")  # type: ignore[attr-defined]
            yield err


def _kube_list_type(validator: Any, list_type: str, instance: Any, schema: Any) -> Iterator[Any]:
    if not isinstance(instance, list):
        return
    if list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys") or []
        seen: set[tuple[Any, ...]] = set()
        for i, item in enumerate(instance):
            if not isinstance(item, dict):
                continue
            key = tuple(repr(item.get(k)) for k in keys)
            if key in seen:
                desc = ", ".join(f"{k}={item.get(k)!r}" for k in keys)
                err = jsonschema.ValidationError(f"Duplicate value: {{{desc}}}", validator="list-type")
                err.path.append(i)
                yield err
            seen.add(key)
    elif list_type == "set":
        seen_items: list[Any] = []
        for i, item in enumerate(instance):
            if item in seen_items:
                err = jsonschema.ValidationError(f"Duplicate value: {item!r}", validator="list-type")
                err.path.append(i)
                yield err
            seen_items.append(item)


@functools.lru_cache(maxsize=256)
def _go_regex(pattern: str) -> re.Pattern[str]:
    """The API server matches `pattern` with Go's RE2, where a final `$` is the end of the text;
    Python's `$` also matches before a trailing newline ("x\n" would pass '^[a-z]*$'). Same answer
    as the API server: a trailing unescaped `$` becomes `\\Z`."""
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


def _kube_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    if isinstance(instance, str) and not _go_regex(pattern).search(instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


_KubeValidator = validators.extend(
    jsonschema.Draft202012Validator,
    {
        "x-kubernetes-validations": _kube_validations,
        "x-kubernetes-list-type": _kube_list_type,
        "pattern": _kube_pattern,
    },
)


@functools.lru_cache(maxsize=64)
def _validator(kind: str, version: str, part: str, strict: bool) -> Any:
    schema = openapi_schema(kind, version)
    if part:
        schema = schema.get("properties", {}).get(part)
        if schema is None:
            raise SchemaNotFound(f"kind {kind!r} has no top-level {part!r}")
    return _KubeValidator(_translate(schema, strict))


# --- error formatting ----------------------------------------------------------------------------


def _join(prefix: str, parts: Iterable[Any]) -> str:
    path = prefix
    for p in parts:
        if isinstance(p, int):
            path += f"[{p}]"
        else:
            path = f"{path}.{p}" if path else str(p)
    return path


def _fmt(v: Any) -> str:
    return f'"{v}"' if isinstance(v, str) else repr(v)


def _errors(err: Any, prefix: str) -> Iterator[FieldError]:
    path = _join(prefix, err.absolute_path)
    v, val, inst = err.validator, err.validator_value, err.instance
    if v == "required":
        for name in val:
            if isinstance(inst, dict) and name not in inst:
                yield FieldError(_join(path, [name]), "Required value")
        return
    if v == "additionalProperties" and val is False and isinstance(inst, dict):
        allowed = set(err.schema.get("properties", {}))
        for name in sorted(set(inst) - allowed):
            yield FieldError(_join(path, [name]), "unknown field")
        return
    if v == "x-kubernetes-validations":
        fp = getattr(err, "_k3svirt_field_path", "")
        yield FieldError(path + fp if fp else path, f"Invalid value: {err.message}")
        return
    messages = {
        "enum": lambda: f"Unsupported value: {_fmt(inst)}: supported values: " + ", ".join(_fmt(x) for x in val),
        "type": lambda: (
            f"Invalid value: {_fmt(inst)}: must be of type " + (" or ".join(val) if isinstance(val, list) else val)
        ),
        "pattern": lambda: f"Invalid value: {_fmt(inst)}: must match '{val}'",
        "minimum": lambda: f"Invalid value: {inst}: must be greater than or equal to {val}",
        "maximum": lambda: f"Invalid value: {inst}: must be less than or equal to {val}",
        "minLength": lambda: f"Invalid value: {_fmt(inst)}: must be at least {val} characters",
        "maxLength": lambda: f"Too long: may not be more than {val} characters",
        "minItems": lambda: f"Invalid value: must have at least {val} items",
        "maxItems": lambda: f"Too many: {len(inst)}: must have at most {val} items",
        "minProperties": lambda: f"Invalid value: must have at least {val} properties",
        "maxProperties": lambda: f"Too many: {len(inst)}: must have at most {val} properties",
    }
    yield FieldError(path, messages[v]() if v in messages else err.message)


def _run(validator: Any, instance: Any, prefix: str) -> list[FieldError]:
    out: set[FieldError] = set()
    for err in validator.iter_errors(instance):
        out.update(_errors(err, prefix))
    return sorted(out)


# --- public API ----------------------------------------------------------------------------------


def validate_spec(
    kind: str,
    spec: Any,
    *,
    strict: bool = True,
    version: str = VERSION,
) -> list[FieldError]:
    """Validate `spec` against the CRD's spec schema; [] when valid.

    strict: unknown fields are errors (set False to ignore them, as the API server's pruning does).
    """
    if not isinstance(spec, dict):
        return [FieldError("spec", f"Invalid value: {type(spec).__name__}: must be of type object")]
    return _run(_validator(kind, version, "spec", strict), spec, "spec")


def validate_object(kind: str, obj: Any, *, strict: bool = True, version: str = VERSION) -> list[FieldError]:
    """Validate a whole object (apiVersion, kind, metadata.name rules, spec, status)."""
    if not isinstance(obj, dict):
        return [FieldError("", f"Invalid value: {type(obj).__name__}: must be of type object")]
    errors = _run(_validator(kind, version, "", strict), obj, "")
    want_api = API_VERSION if version == VERSION else API_VERSION.replace(VERSION, version)
    if obj.get("apiVersion") != want_api:
        errors.append(
            FieldError(
                "apiVersion",
                f"Unsupported value: {_fmt(obj.get('apiVersion'))}: supported values: {_fmt(want_api)}",
            )
        )
    if obj.get("kind") != kind:
        errors.append(FieldError("kind", f"Unsupported value: {_fmt(obj.get('kind'))}: supported values: {_fmt(kind)}"))
    if not (obj.get("metadata") or {}).get("name") and not (obj.get("metadata") or {}).get("generateName"):
        errors.append(FieldError("metadata.name", "Required value"))
    return sorted(set(errors))


# --- operator-side defaults of the VirtualMachine spec ------------------------------------------
# Applied AFTER the template/preset merge, so they never shadow a template's value (the CRD itself
# defaults only runStrategy and deletionPolicy). The CRD descriptions state each default.


def apply_vm_defaults(spec: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of a (merged) VM spec with every documented default filled in. Idempotent."""
    s = copy.deepcopy(spec)
    s.setdefault("runStrategy", str(DEFAULT_RUN_STRATEGY))
    s.setdefault("deletionPolicy", "Delete")
    s.setdefault("iothreads", 0)
    cpu = s.setdefault("cpu", {})
    for k in ("sockets", "cores", "threads"):
        cpu.setdefault(k, 1)
    s.setdefault("boot", {}).setdefault("firmware", "bios")
    for disk in s.setdefault("disks", []):
        disk.setdefault("bus", "virtio")
        disk.setdefault("format", "qcow2")
        disk.setdefault("provisioning", "thin")
        disk.setdefault("cache", "none")
        disk.setdefault("io", "native" if disk["cache"] in ("none", "directsync") else "threads")
        disk.setdefault("readOnly", False)
        image = (disk.get("source") or {}).get("image")
        if image is not None:
            image.setdefault("clone", "overlay")
        if disk["format"] == "qcow2":
            q = disk.setdefault("qcow2", {})
            q.setdefault("clusterSize", "64Ki")
            q.setdefault("preallocation", "full" if disk["provisioning"] == "thick" else "off")
            q.setdefault("lazyRefcounts", False)
    for net in s.setdefault("networks", []):
        net.setdefault("model", "virtio")
        if "nat" in net:
            net["nat"].setdefault("network", "default")
    s.setdefault("hostDevices", [])
    dev = s.setdefault("devices", {})
    dev.setdefault("memballoon", True)
    dev.setdefault("serialConsole", True)
    dev.setdefault("rng", False)
    graphics = dev.setdefault("graphics", {})
    graphics.setdefault("type", "none")
    dev.setdefault("video", {}).setdefault("model", "none" if graphics["type"] == "none" else "virtio")
    if "watchdog" in dev:
        dev["watchdog"].setdefault("action", "reset")
    if "tpm" in dev:
        dev["tpm"].setdefault("model", "tpm-crb")
        dev["tpm"].setdefault("version", "2.0")
    for inp in dev.setdefault("inputs", []):
        inp.setdefault("bus", "usb")
    life = s.setdefault("lifecycle", {})
    life.setdefault("onPoweroff", "destroy")
    life.setdefault("onReboot", "restart")
    life.setdefault("onCrash", "destroy")
    feat = s.setdefault("features", {})
    feat.setdefault("acpi", True)
    feat.setdefault("apic", True)
    feat.setdefault("hyperv", False)
    return s
