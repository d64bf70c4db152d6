"""The template/preset/override merge (the layering rules are in the package docstring)."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: top-level VM spec lists whose items are identified (and merged) by ``name``
NAMED_LISTS = ("disks", "networks", "hostDevices")
#: merge-only fragment sections, consumed by merge() and never part of the VM spec
MERGE_ONLY = ("diskDefaults", "networkDefaults")
#: mutually exclusive keys: setting one in a layer drops the others inherited from lower layers
_ONE_OF_DISK_SOURCE = ("blank", "image", "volume")
_ONE_OF_NETWORK = ("nat", "bridge")
_ONE_OF_HOST_DEVICE = ("pciPassthrough", "resource")  # a device by name, or any free one of a kind
#: VM fields that reference templates; not overridable content
_REF_FIELDS = ("template", "presets")


@dataclass(frozen=True)
class Layer:
    """A fragment and the label its fields are reported under (``template``, ``presets[0]``, ...)."""

    fragment: Mapping[str, Any]
    label: str
    source: str = ""  # human description: "VMTemplate minimal-linux version 1.0.0"


def _merge_map(base: dict[str, Any], overlay: Mapping[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overlay.items():
        if value is None:
            out.pop(key, None)
            continue
        here = (*path, key)
        if path == () and key in NAMED_LISTS and isinstance(value, list):
            out[key] = _merge_named(out.get(key) or [], value, here)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            if here[-1] == "source" and path[:1] == ("disks",):
                inherited = dict(out[key])
                if any(k in value for k in _ONE_OF_DISK_SOURCE):
                    for k in _ONE_OF_DISK_SOURCE:
                        inherited.pop(k, None)
                out[key] = _merge_map(inherited, value, here)
            else:
                out[key] = _merge_map(dict(out[key]), value, here)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _merge_named(base: list[Any], overlay: list[Any], path: tuple[str, ...]) -> list[Any]:
    out = [copy.deepcopy(i) for i in base]
    index = {i.get("name"): n for n, i in enumerate(out) if isinstance(i, Mapping)}
    for item in overlay:
        if not isinstance(item, Mapping) or "name" not in item:
            out.append(copy.deepcopy(item))  # let the schema report the missing name
            continue
        if item["name"] not in index:
            index[item["name"]] = len(out)
            out.append(_merge_map({}, item, path))
            continue
        inherited = dict(out[index[item["name"]]])
        if path == ("networks",) and any(k in item for k in _ONE_OF_NETWORK):
            for k in _ONE_OF_NETWORK:
                inherited.pop(k, None)
        if path == ("hostDevices",) and any(k in item for k in _ONE_OF_HOST_DEVICE):
            for k in _ONE_OF_HOST_DEVICE:
                inherited.pop(k, None)
        if path == ("disks",) and item.get("format") == "raw":
            inherited.pop("qcow2", None)
        # io native needs cache none/directsync: a layer choosing another cache resets an inherited io
        fast_cache = item.get("cache", "none") in ("none", "directsync")
        if path == ("disks",) and not fast_cache and "io" not in item and inherited.get("io") == "native":
            inherited.pop("io")
        out[index[item["name"]]] = _merge_map(inherited, item, path)
    return out


def _split(fragment: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    body = {k: v for k, v in (fragment or {}).items() if k not in MERGE_ONLY}
    return (
        body,
        dict((fragment or {}).get("diskDefaults") or {}),
        dict((fragment or {}).get("networkDefaults") or {}),
    )


def _defaults_layer(
    prelim: Mapping[str, Any], disk_defaults: Mapping[str, Any], net_defaults: Mapping[str, Any]
) -> dict[str, Any]:
    """Expand diskDefaults/networkDefaults into an ordinary layer naming every disk/network."""
    layer: dict[str, Any] = {}
    if disk_defaults:
        disks = []
        virtio = [d for d in prelim.get("disks") or [] if (d.get("bus") or "virtio") == "virtio"]
        threads = int(prelim.get("iothreads") or 0)
        for disk in prelim.get("disks") or []:
            entry = {k: copy.deepcopy(v) for k, v in disk_defaults.items() if k not in ("qcow2", "iothread")}
            if "qcow2" in disk_defaults and (disk.get("format") or "qcow2") == "qcow2":
                entry["qcow2"] = copy.deepcopy(disk_defaults["qcow2"])
            if "iothread" in disk_defaults and disk in virtio:
                want = disk_defaults["iothread"]
                if want == "auto":
                    if threads > 0:
                        entry["iothread"] = virtio.index(disk) % threads + 1
                else:
                    entry["iothread"] = want
            disks.append({"name": disk.get("name"), **entry})
        layer["disks"] = disks
    if net_defaults:
        layer["networks"] = [
            {"name": n.get("name"), **copy.deepcopy(net_defaults)} for n in prelim.get("networks") or []
        ]
    return layer


def merge_layers(layers: Sequence[Layer]) -> tuple[dict[str, Any], list[tuple[str, Mapping[str, Any]]]]:
    """Merge layers (lowest precedence first). Returns the spec and the effective (label, fragment)
    layers after defaults expansion, used to attribute validation errors."""
    bodies = [_split(layer.fragment) for layer in layers]
    prelim: dict[str, Any] = {}
    for body, _, _ in bodies:
        prelim = _merge_map(prelim, body, ())
    spec: dict[str, Any] = {}
    effective: list[tuple[str, Mapping[str, Any]]] = []
    for layer, (body, disk_defaults, net_defaults) in zip(layers, bodies, strict=True):
        expanded = _defaults_layer(prelim, disk_defaults, net_defaults)
        if expanded:
            spec = _merge_map(spec, expanded, ())
            effective.append((layer.label, _relabel_defaults(expanded)))
        spec = _merge_map(spec, body, ())
        effective.append((layer.label, body))
    return spec, effective


def _relabel_defaults(expanded: Mapping[str, Any]) -> dict[str, Any]:
    # errors in values coming from diskDefaults should name diskDefaults; mark the expanded items
    return {k: [{**i, "__defaults__": True} for i in v] for k, v in expanded.items()}
