"""The hostile-input table: every case is a VM (or a request body) an untrusted author could send.

A spec case is `Case(id, field, spec, expect)`: `spec` is merged into a minimal valid VM spec,
`field` is the path an error must name, and `expect` is
  "refuse"  the API server and the gateway must both refuse it, naming `field`;
  "either"  refused (naming `field`) or stored verbatim - by both paths alike.
Cases that an operator must meet (host paths, image sources, values rendered into domain XML)
live in test_hostile_operator.py, which needs the node's files; this module is pure data.

Rows of the older hostile tests are reused, not copied: tests/test_crd_hostile.py's HOSTILE list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tests.test_crd_hostile import HOSTILE as CRD_HOSTILE

REFUSE, EITHER = "refuse", "either"


@dataclass(frozen=True)
class Case:
    id: str
    field: str
    spec: dict[str, Any]
    expect: str
    name: str | None = None  # a hostile metadata.name instead of a hostile spec field


# Hostile strings: XML metacharacters and element injection, quotes, control characters, NUL,
# lone surrogates, unicode tricks, path traversal, shell metacharacters, sizes.
VALUES: dict[str, str] = {
    "xml-elem-sq": "'/><disk type='file' device='disk'><source file='/etc/shadow'/></disk><x y='",
    "xml-elem-dq": '"/><hostdev mode="subsystem" type="pci"/><x y="',
    "xml-text": "</cmdline><init>/bin/sh</init><cmdline>",
    "xml-cdata": "]]><![CDATA[<x/>",
    "xml-entity": "&lt;&amp;&#x0;&xxe;&#60;x/&#62;",
    "xml-doctype": "<!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]>&e;",
    "quote-single": "a'b",
    "quote-double": 'a"b',
    "backslash": "a\\b\\\\c",
    "newline": "a\nb",
    "cr": "a\rb",
    "crlf-header": "a\r\nX-Injected: 1",
    "nul": "a\x00b",
    "escape": "\x1b[2J\x1b]0;pwned\x07",
    "tab": "a\tb",
    "del": "a\x7fb",
    "c1-control": "a\x85b\x9bc",
    "lone-high-surrogate": "a\ud800b",
    "lone-low-surrogate": "a\udfffb",
    "latin": "café-naïve",
    "rtl-override": "a\u202eexe.txt",
    "zero-width": "a\u200bb\ufeff",
    "emoji": "\U0001f600\U0001f4a9",
    "fullwidth-slash": "\uff0e\uff0e\uff0fetc\uff0fpasswd",
    "nbsp": "a\u00a0b",
    "combining": "e\u0301\u0301\u0301",
    "traversal": "../../../../etc/passwd",
    "traversal-encoded": "..%2f..%2f..%2fetc%2fpasswd",
    "traversal-abs": "/etc/shadow",
    "dot": ".",
    "dotdot": "..",
    "shell-subst": "$(touch /tmp/k3svirt-pwned)",
    "shell-backtick": "`id`;reboot",
    "shell-glob": "*?[a]{b,c}",
    "space": "a b",
    "long": "a" * 5000,
    "empty": "",
}
CONTROL = {"newline", "cr", "crlf-header", "nul", "escape", "tab", "del"}

# Fields whose value is a name or token (a strict pattern): every hostile value is refused, save the
# few that happen to be valid tokens of that field (listed).
NAME_FIELDS: dict[str, tuple[str, set[str]]] = {
    # field -> (spec fragment template, values that are valid tokens there)
    "spec.disks[0].name": ('{"disks": [{"name": V, "source": {"blank": {}}, "size": "1Mi"}]}', set()),
    "spec.networks[0].name": ('{"networks": [{"name": V, "nat": {}}]}', set()),
    "spec.nodeName": ('{"nodeName": V}', set()),
    "spec.cpu.model": ('{"cpu": {"model": V}}', set()),
    "spec.disks[0].serial": (
        '{"disks": [{"name": "d", "serial": V, "source": {"blank": {}}, "size": "1Mi"}]}',
        {"dot", "dotdot"},
    ),
    "spec.networks[0].nat.network": ('{"networks": [{"name": "n", "nat": {"network": V}}]}', set()),
    "spec.networks[0].bridge.name": ('{"networks": [{"name": "n", "bridge": {"name": V}}]}', set()),
    "spec.hostDevices[0].pciPassthrough": ('{"hostDevices": [{"name": "h", "pciPassthrough": V}]}', set()),
    "spec.hostDevices[0].resource": ('{"hostDevices": [{"name": "h", "resource": V}]}', set()),
    "spec.template.name": ('{"template": {"name": V}}', set()),
    "spec.presets[0].version": ('{"presets": [{"name": "p", "version": V}]}', set()),
}

# Fields that take free text but no control characters: control characters are refused (the
# issue's anchored control-character rules), anything else may be stored and is rendered safely.
TEXT_FIELDS: dict[str, tuple[str, str]] = {
    # field -> (spec fragment template, prefix that makes the rest of the value well-formed)
    "spec.boot.kernel.path": ('{"boot": {"kernel": {"path": V}}}', "/var/lib/k3svirt/guest/"),
    "spec.boot.kernel.initrdPath": (
        '{"boot": {"kernel": {"path": "/var/lib/k3svirt/guest/vmlinuz", "initrdPath": V}}}',
        "/var/lib/k3svirt/guest/",
    ),
    "spec.boot.kernel.cmdline": (
        '{"boot": {"kernel": {"path": "/var/lib/k3svirt/guest/vmlinuz", "cmdline": V}}}',
        "console=ttyS0 ",
    ),
    "spec.disks[0].source.volume.path": ('{"disks": [{"name": "d", "source": {"volume": {"path": V}}}]}', "/v/"),
    "spec.cloudInit.sshAuthorizedKeys[0]": ('{"cloudInit": {"sshAuthorizedKeys": [V]}}', "ssh-ed25519 AAAA "),
}
# Free text: stored whatever it holds (it reaches the guest as a cloud-init file, never XML or a shell).
FREE_FIELDS: dict[str, str] = {
    "spec.cloudInit.userData": '{"cloudInit": {"userData": V}}',
    "spec.cloudInit.metaData": '{"cloudInit": {"metaData": V}}',
}
URL_FIELD = "spec.disks[0].source.image.url"
URL_SPEC = '{"disks": [{"name": "d", "source": {"image": {"url": V}}}]}'


def _fill(template: str, value: Any) -> dict[str, Any]:
    import json

    return json.loads(template.replace("V", json.dumps(value)))


def _string_cases() -> list[Case]:
    out = []
    for field, (tmpl, tokens) in NAME_FIELDS.items():
        for vid, v in VALUES.items():
            out.append(Case(f"{field}={vid}", field, _fill(tmpl, v), EITHER if vid in tokens else REFUSE))
    for field, (tmpl, prefix) in TEXT_FIELDS.items():
        for vid, v in VALUES.items():
            expect = REFUSE if vid in CONTROL else EITHER
            out.append(Case(f"{field}={vid}", field, _fill(tmpl, prefix + v), expect))
    for field, tmpl in FREE_FIELDS.items():
        for vid, v in VALUES.items():
            out.append(Case(f"{field}={vid}", field, _fill(tmpl, v), EITHER))
    for vid, v in VALUES.items():
        # the URL pattern also refuses spaces (an HTTP request line would split there)
        expect = REFUSE if vid in CONTROL or vid in ("space", "nbsp") and " " in v else EITHER
        out.append(Case(f"{URL_FIELD}=http-{vid}", URL_FIELD, _fill(URL_SPEC, "http://example.invalid/" + v), expect))
    for vid, v in VALUES.items():
        out.append(Case(f"metadata.name={vid}", "metadata.name", {}, REFUSE, name=v))
    for i, (field, extra) in enumerate(CRD_HOSTILE):
        out.append(Case(f"crd-hostile-{i}:{field}", field, extra, REFUSE))
    return out


def _number_cases() -> list[Case]:
    ints = {
        "spec.cpu.cores": ("cpu", "cores"),
        "spec.cpu.sockets": ("cpu", "sockets"),
        "spec.cpu.threads": ("cpu", "threads"),
        "spec.iothreads": (None, "iothreads"),
    }
    bad = {
        "negative": -1,
        "zero": 0,
        "fraction": 1.5,
        "huge": 10**30,
        "int64-overflow": 2**63,
        "string": "2",
        "bool": True,
        "list": [1],
        "object": {"n": 1},
        "exp-notation": 1e300,
    }
    out = []
    for field, (parent, key) in ints.items():
        for vid, v in bad.items():
            if field == "spec.iothreads" and vid == "zero":
                continue  # 0 iothreads is valid
            spec = {parent: {key: v}} if parent else {key: v}
            out.append(Case(f"{field}={vid}", field, spec, REFUSE))
    for field, key in (("spec.disks[0].iothread", "iothread"), ("spec.disks[0].bootOrder", "bootOrder")):
        for vid, v in {"zero": 0, "negative": -5, "over": 65, "fraction": 2.5, "string": "1"}.items():
            disk = {"name": "d", "source": {"blank": {}}, "size": "1Mi", key: v}
            out.append(Case(f"{field}={vid}", field, {"disks": [disk]}, REFUSE))
    sizes = {
        "negative": ("-64Mi", REFUSE),
        "exp": ("1e9", REFUSE),
        "hex": ("0x10Mi", REFUSE),
        "space": ("64 Mi", REFUSE),
        "unit-bytes": ("64MiB", REFUSE),
        "lower-unit": ("64mi", REFUSE),
        "newline": ("64Mi\n", REFUSE),
        "empty": ("", REFUSE),
        "dot-only": (".5Mi", REFUSE),
        "trailing-dot": ("1.Mi", REFUSE),
        "number": (64, REFUSE),
        "fraction": ("1.5Mi", EITHER),
        "zero": ("0", EITHER),
        "huge": ("99999999999999999999Ti", EITHER),
        "too-long": ("9" * 40, REFUSE),
    }
    # memory: below 16Mi, fractions of a byte and beyond int64 are CRD (CEL quantity) rules
    memory_refused = {"fraction", "zero", "huge"}
    for vid, (v, expect) in sizes.items():
        mem_expect = REFUSE if vid in memory_refused else expect
        out.append(Case(f"spec.memory.size={vid}", "spec.memory.size", {"memory": {"size": v}}, mem_expect))
        disk = {"name": "d", "source": {"blank": {}}, "size": v}
        out.append(Case(f"spec.disks[0].size={vid}", "spec.disks[0].size", {"disks": [disk]}, expect))
    for vid, mem in {
        "16Mi-less-a-byte": {"size": "16777215"},
        "half-byte": {"size": "16777216.5"},
        "not-whole-2Mi-pages": {"size": "65M", "hugepages": {"pageSize": "2Mi"}},
        "not-whole-1Gi-pages": {"size": "1536Mi", "hugepages": {"pageSize": "1Gi"}},
    }.items():
        out.append(Case(f"spec.memory.size={vid}", "spec.memory.size", {"memory": mem}, REFUSE))
    # whole bytes the API server's isInteger() calls "not integers" (off its parser's fast path): both
    # doors must store them (the CRD rules do not use isInteger for this reason)
    whole = {"16Mi-exactly": "16Mi", "fraction-of-Gi": "1.5Gi", "100Ti": "100Ti", "100000Gi": "100000Gi"}
    for vid, size in whole.items():
        out.append(Case(f"spec.memory.size={vid}", "spec.memory.size", {"memory": {"size": size}}, EITHER))
    hp = {"size": "2.5Gi", "hugepages": {"pageSize": "2Mi"}}
    out.append(Case("spec.memory.size=fraction-of-Gi-in-2Mi-pages", "spec.memory.size", {"memory": hp}, EITHER))
    counts = {
        "spec.disks": {"disks": [{"name": f"d{i}", "source": {"blank": {}}, "size": "1Mi"} for i in range(33)]},
        "spec.networks": {"networks": [{"name": f"n{i}", "nat": {}} for i in range(17)]},
        "spec.presets": {"presets": [{"name": f"p{i}"} for i in range(17)]},
        "spec.cloudInit.sshAuthorizedKeys": {"cloudInit": {"sshAuthorizedKeys": ["ssh-ed25519 AAAA"] * 33}},
        "spec.hostDevices": {"hostDevices": [{"name": f"h{i}", "pciPassthrough": "p"} for i in range(17)]},
        "spec.devices.inputs": {"devices": {"inputs": [{"type": "tablet"}] * 9}},
        "spec.cloudInit.userData": {"cloudInit": {"userData": "x" * 65537}},
    }
    for field, spec in counts.items():
        out.append(Case(f"{field}=too-many", field, spec, REFUSE))
    kind = "k3svirt.io/pci-8086-10fb"
    for vid, entry in {
        "both": {"name": "h", "pciPassthrough": "p", "resource": kind},  # one device or any of a kind, not both
        "neither": {"name": "h"},
        "upper-hex": {"name": "h", "resource": "k3svirt.io/pci-8086-10FB"},
        "other-group": {"name": "h", "resource": "nvidia.com/gpu"},
    }.items():
        out.append(Case(f"spec.hostDevices[0]={vid}", "spec.hostDevices[0]", {"hostDevices": [entry]}, REFUSE))
    return out


def _cpuset_mac_enum_cases() -> list[Case]:
    out = []
    cpusets = {
        "open-range": "0-",
        "negative": "-1",
        "double-comma": "0,,1",
        "trailing-comma": "0,1,",
        "letters": "a-b",
        "semicolon": "0;1",
        "space": "0 1",
        "newline": "0-1\n",
        "empty": "",
        "caret": "^0",
        "too-long": ",".join(["1"] * 200),
    }
    for field in ("spec.cpu.dedicatedCpuSet", "spec.cpu.emulatorCpuSet"):
        key = field.rsplit(".", 1)[1]
        for vid, v in cpusets.items():
            out.append(Case(f"{field}={vid}", field, {"cpu": {key: v}}, REFUSE))
        # well-formed but wrong: CRD (CEL) rules, so both doors refuse them
        for vid, v in {
            "reversed": "3-1",
            "huge-cpu": "0-4294967296",
            "beyond-8191": "0,8192",
            "repeated": "1,1",
            "overlap": "0-3,2-5",
        }.items():
            out.append(Case(f"{field}={vid}", field, {"cpu": {key: v}}, REFUSE))
        # CPUs this node may lack: stored; the node decides
        out.append(Case(f"{field}=high-cpu", field, {"cpu": {key: "8191"}}, EITHER))
    for vid, request in {"zero": "0", "zero-milli": "0m", "zero-fraction": "0.000"}.items():
        out.append(Case(f"spec.cpu.request={vid}", "spec.cpu.request", {"cpu": {"request": request}}, REFUSE))
    for vid, cpu in {
        "too-few-for-vcpus": {"cores": 4, "dedicatedCpuSet": "0-2"},
        "too-few-for-threads": {"cores": 2, "threads": 2, "dedicatedCpuSet": "0,2,4"},
    }.items():
        out.append(Case(f"spec.cpu.dedicatedCpuSet={vid}", "spec.cpu.dedicatedCpuSet", {"cpu": cpu}, REFUSE))
    macs = {
        "multicast": "01:00:5e:00:00:01",
        "broadcast": "ff:ff:ff:ff:ff:ff",
        "short": "52:54:00:12:34:5",
        "dashes": "52-54-00-12-34-56",
        "no-separators": "525400123456",
        "seven-octets": "52:54:00:12:34:56:78",
        "non-hex": "52:54:00:12:34:zz",
        "newline": "52:54:00:12:34:56\n",
        "xml": "52:54:00:12:34:56'/><x y='",
        "empty": "",
    }
    for vid, v in macs.items():
        nic = {"name": "n", "nat": {}, "macAddress": v}
        field = "spec.networks[0].macAddress"
        out.append(Case(f"{field}={vid}", field, {"networks": [nic]}, REFUSE))
    enums = {
        "spec.runStrategy": [("newline", "Always\n"), ("lower", "always"), ("xml", "Always'/><x/>")],
        "spec.disks[0].bus": [("ide", "ide"), ("xml", "virtio'/><x/>")],
        "spec.disks[0].format": [("vmdk", "vmdk"), ("qcow", "qcow"), ("trailing-space", "raw ")],
        "spec.disks[0].cache": [("bogus", "writeback,unsafe")],
        "spec.boot.firmware": [("xml", "uefi'/><loader>/etc/shadow</loader>")],
        "spec.networks[0].model": [("other", "ne2k_pci")],
        "spec.devices.watchdog.action": [("xml", "<x/>")],
        "spec.disks[0].source.image.checksum": [("md5", "md5:abc"), ("short", "sha256:abc")],
        "spec.disks[0].qcow2.compression": [("lz4", "lz4"), ("upper", "ZSTD"), ("xml", "zstd'/><x/>"), ("empty", "")],
    }
    for field, values in enums.items():
        for vid, v in values:
            out.append(Case(f"{field}={vid}", field, _enum_spec(field, v), REFUSE))
    shapes = {
        "spec.disks": {"disks": {"name": "d"}},
        "spec.disks[0]": {"disks": ["d"]},
        "spec.cpu": {"cpu": [1]},
        "spec.memory.size": {"memory": {"size": None}},
        "spec.networks[0].nat": {"networks": [{"name": "n", "nat": "default"}]},
        "spec.cloudInit.userData": {"cloudInit": {"userData": {"a": 1}}},
        "spec.boot.kernel": {"boot": {"kernel": "/vmlinuz"}},
    }
    for field, spec in shapes.items():
        out.append(Case(f"{field}=wrong-type", field, spec, REFUSE))
    # Valid values in the wrong place: qcow2 compression only for a thin copy of an image.
    zstd = {"compression": "zstd"}
    misplaced = {
        "blank": {"name": "d", "source": {"blank": {}}, "size": "1Mi", "qcow2": zstd},
        "overlay": {"name": "d", "source": {"image": {"url": "https://example.invalid/a"}}, "qcow2": zstd},
        "thick": {
            "name": "d",
            "provisioning": "thick",
            "qcow2": zstd,
            "source": {"image": {"url": "https://example.invalid/a", "clone": "copy"}},
        },  # fmt: skip
    }
    for vid, disk in misplaced.items():
        field = "spec.disks[0].qcow2.compression"
        out.append(Case(f"{field}={vid}", field, {"disks": [disk]}, REFUSE))
    return out


def _enum_spec(field: str, v: str) -> dict[str, Any]:
    disk = {"name": "d", "source": {"blank": {}}, "size": "1Mi"}
    if field == "spec.runStrategy":
        return {"runStrategy": v}
    if field == "spec.boot.firmware":
        return {"boot": {"firmware": v}}
    if field == "spec.networks[0].model":
        return {"networks": [{"name": "n", "nat": {}, "model": v}]}
    if field == "spec.devices.watchdog.action":
        return {"devices": {"watchdog": {"model": "i6300esb", "action": v}}}
    if field == "spec.disks[0].qcow2.compression":
        image = {"image": {"url": "https://example.invalid/a", "clone": "copy"}}
        return {"disks": [{"name": "d", "source": image, "qcow2": {"compression": v}}]}
    if field == "spec.disks[0].source.image.checksum":
        return {"disks": [{"name": "d", "source": {"image": {"url": "https://example.invalid/a", "checksum": v}}}]}
    key = field.rsplit(".", 1)[1]
    return {"disks": [{**disk, key: v}]}


SPEC_CASES: list[Case] = _string_cases() + _number_cases() + _cpuset_mac_enum_cases()

_ids = [c.id for c in SPEC_CASES]
assert len(_ids) == len(set(_ids)), "case ids must be unique"
