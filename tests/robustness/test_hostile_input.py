"""Hostile input through both doors: every case of cases.SPEC_CASES goes to the API server (what
kubectl sends, as raw JSON) and to the real gateway. Each is refused with a clear error naming the
field (API server: 4xx Status whose causes name it; gateway: 4xx problem+json whose errors name it)
or stored verbatim - and both doors agree. Never a 5xx.

Raw request bodies (deep nesting, duplicate keys, wrong content types, oversized, invalid UTF-8, ...)
go to both doors too. Whether stored values are rendered safely is test_hostile_operator.py's job.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from typing import Any

import pytest

from .cases import REFUSE, SPEC_CASES, Case
from .conftest import ApiServer, Gateway, count

BASE_SPEC = {"runStrategy": "Halted", "nodeName": "no-operator-here", "memory": {"size": "64Mi"}}


def _obj(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "k3svirt.io/v1alpha1", "kind": "VirtualMachine", "metadata": {"name": name}, "spec": spec}


def _subset(want: Any, got: Any) -> bool:
    if isinstance(want, dict):
        return isinstance(got, dict) and all(k in got and _subset(v, got[k]) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(got, list) and len(want) == len(got) and all(map(_subset, want, got))
    return want == got and type(want) is type(got)


def _api_names_field(body: dict[str, Any], field: str) -> bool:
    """The API server's Status names the field in its causes (or, for decode errors, its message)."""
    causes = [c.get("field", "") for c in (body.get("details") or {}).get("causes") or []]
    leaf = field.rsplit(".", 1)[-1].split("[")[0]
    return any(c == field or c.startswith(field) for c in causes) or (leaf in body.get("message", ""))


def _gateway_names_field(body: dict[str, Any], field: str) -> bool:
    fields = [e.get("field", "") for e in body.get("errors") or []]
    gw_field = "name" if field == "metadata.name" else field
    return any(f == gw_field or f.startswith(gw_field) for f in fields) or gw_field in body.get("detail", "")


SURROGATE = re.compile("[\ud800-\udfff]")


def _as_go_decodes(value: Any) -> Any:
    """What the API server stores for a JSON value: Go's decoder replaces an unpaired surrogate
    escape with U+FFFD (the gateway refuses such strings instead, see api._shape_problem)."""
    if isinstance(value, dict):
        return {k: _as_go_decodes(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_go_decodes(v) for v in value]
    return SURROGATE.sub("\ufffd", value) if isinstance(value, str) else value


def _through_api_server(api: ApiServer, ns: str, case: Case, name: str, spec: dict) -> str:
    vm_name = case.name if case.name is not None else name
    r = api.request("POST", api.vms(ns), json.dumps(_obj(vm_name, spec)).encode())
    assert r.status_code < 500, f"API server {r.status_code}: {r.text[:500]}"
    if r.status_code == 201:
        stored = api.request("GET", api.vms(ns, vm_name)).json()
        want = _as_go_decodes(spec)
        assert _subset(want, stored["spec"]), f"stored altered: sent {spec}, stored {stored['spec']}"
        api.request("DELETE", api.vms(ns, vm_name))
        return "stored"
    assert 400 <= r.status_code < 500 and _api_names_field(r.json(), case.field), (
        f"API server refusal does not name {case.field}: {r.status_code} {r.text[:600]}"
    )
    return "refused"


def _through_gateway(gw: Gateway, ns: str, case: Case, name: str, spec: dict) -> str:
    vm_name = case.name if case.name is not None else name
    r = gw.request("POST", f"/api/v1/vms?namespace={ns}", json={"name": vm_name, "spec": spec})
    assert r.status_code < 500, f"gateway {r.status_code}: {r.text[:500]}"
    if r.status_code == 201:
        stored = gw.request("GET", f"/api/v1/vms/{vm_name}?namespace={ns}").json()
        assert _subset(spec, stored["spec"]), f"stored altered: sent {spec}, stored {stored['spec']}"
        assert gw.request("DELETE", f"/api/v1/vms/{vm_name}?namespace={ns}").status_code == 202
        return "stored"
    assert r.headers["Content-Type"].startswith("application/problem+json"), r.headers
    if SURROGATE.search(json.dumps(_obj(vm_name, spec), ensure_ascii=False)):
        assert r.status_code == 400 and "surrogate" in r.json()["detail"], r.text[:600]
        return "refused"
    assert 400 <= r.status_code < 500 and _gateway_names_field(r.json(), case.field), (
        f"gateway refusal does not name {case.field}: {r.status_code} {r.text[:600]}"
    )
    return "refused"


@pytest.mark.parametrize("case", SPEC_CASES, ids=[c.id.encode("unicode_escape").decode()[:90] for c in SPEC_CASES])
def test_spec_case_is_refused_naming_the_field_or_stored_verbatim(apiserver, gateway, robust_ns, case: Case):
    spec = {**BASE_SPEC, **case.spec}
    name = f"h-{uuid.uuid4().hex[:8]}"
    by_api = _through_api_server(apiserver, robust_ns, case, name, spec)
    by_gateway = _through_gateway(gateway, robust_ns, case, name, spec)
    count("spec values (API server)")
    count("spec values (gateway)")
    if case.expect == REFUSE:
        assert by_api == "refused", f"the API server stored {case.id}"
        assert by_gateway == "refused", f"the gateway stored {case.id}"
    if SURROGATE.search(case.id + json.dumps(case.spec, ensure_ascii=False) + (case.name or "")):
        return  # the API server stores U+FFFD for it, the gateway refuses it (both checked above)
    assert by_api == by_gateway, f"the doors disagree on {case.id}: API server {by_api}, gateway {by_gateway}"


def test_a_sample_through_the_real_kubectl(kubeconfig, robust_ns):
    """kubectl itself (client-side encoding included) gets the same refusals, naming the field."""
    sample = [c for c in SPEC_CASES if c.expect == REFUSE and c.name is None][::25]
    assert len(sample) >= 10
    for case in sample:
        obj = _obj(f"k-{uuid.uuid4().hex[:8]}", {**BASE_SPEC, **case.spec})
        proc = subprocess.run(
            ["kubectl", "--kubeconfig", kubeconfig, "-n", robust_ns, "create", "-f", "-"],
            input=json.dumps(obj),
            capture_output=True,
            text=True,
            timeout=60,
        )
        leaf = case.field.rsplit(".", 1)[-1].split("[")[0]
        assert proc.returncode != 0 and leaf in proc.stderr, f"{case.id}: {proc.stderr[:400]}"
        count("spec values (kubectl)")


DEEP = b"[" * 20_000 + b"]" * 20_000
GOOD_BODY = {"name": "rawbody", "spec": BASE_SPEC}

# (id, bytes, content type, expected gateway status or None for "any 4xx")
RAW_BODIES: list[tuple[str, bytes, str | None, int | None]] = [
    ("deep-array", DEEP, "application/json", 400),
    ("deep-object", b'{"a":' * 5000 + b"1" + b"}" * 5000, "application/json", 400),
    (
        "deep-in-spec",
        json.dumps({"name": "x", "spec": {"cloudInit": {}}}).encode()[:-2] + b"," + b'"a":[' * 200 + b"]" * 200 + b"}}",
        "application/json",
        400,
    ),  # fmt: skip
    (
        "duplicate-keys",
        b'{"name":"dup-a","name":"dup-b","spec":{"runStrategy":"Halted","nodeName":"x"}}',
        "application/json",
        None,
    ),  # fmt: skip
    (
        "duplicate-spec-keys",
        b'{"name":"dup","spec":{"runStrategy":"Halted","runStrategy":"Always"}}',
        "application/json",
        None,
    ),  # fmt: skip
    ("text-plain", json.dumps(GOOD_BODY).encode(), "text/plain", 415),
    ("form", b"name=x&spec=y", "application/x-www-form-urlencoded", 415),
    (
        "multipart",
        b"--b\r\nContent-Disposition: form-data; name=x\r\n\r\ny\r\n--b--\r\n",
        "multipart/form-data; boundary=b",
        415,
    ),  # fmt: skip
    ("no-content-type", json.dumps(GOOD_BODY).encode(), None, 415),
    ("xml-body", b"<vm><name>x</name></vm>", "application/xml", 415),
    ("yaml-on-json-route", b"name: x\nspec: {}\n", "application/yaml", 415),
    ("utf16", json.dumps(GOOD_BODY).encode("utf-16"), "application/json", None),  # RFC 8259 8.1: may be read
    ("invalid-utf8", b'{"name":"\xff\xfe","spec":{}}', "application/json", 400),
    ("lone-surrogate-escape", b'{"name":"a\\ud800","spec":{}}', "application/json", None),
    ("nan", b'{"name":"n","spec":{"cpu":{"cores":NaN}}}', "application/json", 400),
    ("infinity", b'{"name":"n","spec":{"cpu":{"cores":Infinity}}}', "application/json", 400),
    ("huge-exponent", b'{"name":"n","spec":{"cpu":{"cores":1e400}}}', "application/json", None),
    ("huge-integer", b'{"name":"n","spec":{"cpu":{"cores":' + b"9" * 5000 + b"}}}", "application/json", None),
    ("trailing-garbage", json.dumps(GOOD_BODY).encode() + b"xyz", "application/json", 400),
    ("two-documents", json.dumps(GOOD_BODY).encode() * 2, "application/json", 400),
    ("empty", b"", "application/json", 400),
    ("null", b"null", "application/json", None),
    ("array", b"[]", "application/json", None),
    ("string", b'"vm"', "application/json", None),
    ("number", b"42", "application/json", None),
    ("truncated", json.dumps(GOOD_BODY).encode()[:-3], "application/json", 400),
    ("nul-byte", b'{"name":"x\x00","spec":{}}', "application/json", 400),
    (
        "oversized",
        b'{"name":"big","spec":{"cloudInit":{"userData":"' + b"x" * (2 << 20) + b'"}}}',
        "application/json",
        413,
    ),  # fmt: skip
    (
        "many-keys",
        b'{"name":"k","spec":{"nodeSelector":{' + b",".join(b'"k%d":"v"' % i for i in range(20000)) + b"}}}",
        "application/json",
        None,
    ),  # fmt: skip
    ("bom", b"\xef\xbb\xbf" + json.dumps(GOOD_BODY).encode(), "application/json", None),
    ("charset-latin1", json.dumps(GOOD_BODY).encode(), "application/json; charset=latin-1", None),
]


@pytest.mark.parametrize(("rid", "body", "ctype", "want"), RAW_BODIES, ids=[r[0] for r in RAW_BODIES])
def test_raw_body_through_the_gateway(gateway, robust_ns, rid, body, ctype, want):
    headers = {"Content-Type": ctype} if ctype else {}  # a 413 closes its connection and says so
    r = gateway.request("POST", f"/api/v1/vms?namespace={robust_ns}", data=body, headers=headers)
    count("raw bodies (gateway)")
    assert r.status_code < 500, f"{rid}: {r.status_code} {r.text[:400]}"
    if r.status_code in (200, 201):  # accepted: must be a well-formed VM, stored as the JSON said
        gateway.request("DELETE", f"/api/v1/vms/{r.json()['metadata']['name']}?namespace={robust_ns}")
        assert want is None, f"{rid}: accepted ({r.status_code}), expected {want}"
        return
    assert r.headers["Content-Type"].startswith("application/problem+json"), (rid, r.headers, r.text[:300])
    assert r.json().get("detail"), r.text
    if want is not None:
        assert r.status_code == want, f"{rid}: {r.status_code} (expected {want}): {r.text[:400]}"
    else:
        assert 400 <= r.status_code < 500


@pytest.mark.parametrize(("rid", "body", "ctype", "want"), RAW_BODIES, ids=[r[0] for r in RAW_BODIES])
def test_raw_body_through_the_api_server(apiserver, robust_ns, rid, body, ctype, want):
    """The same bytes wrapped as a VirtualMachine where they are a fragment; as they are otherwise."""
    r = apiserver.request("POST", apiserver.vms(robust_ns), body, ctype or "application/json")
    count("raw bodies (API server)")
    assert r.status_code < 500, f"{rid}: {r.status_code} {r.text[:400]}"
    if r.status_code == 201:
        apiserver.request("DELETE", apiserver.vms(robust_ns, r.json()["metadata"]["name"]))
    else:
        assert 400 <= r.status_code < 500, (rid, r.status_code)


def test_same_name_twice_is_a_409_problem(gateway, robust_ns):
    body = {"name": "twice", "spec": BASE_SPEC}
    assert gateway.request("POST", f"/api/v1/vms?namespace={robust_ns}", json=body).status_code == 201
    r = gateway.request("POST", f"/api/v1/vms?namespace={robust_ns}", json=body)
    count("raw bodies (gateway)")
    assert r.status_code == 409 and r.headers["Content-Type"].startswith("application/problem+json"), r.text
    gateway.request("DELETE", f"/api/v1/vms/twice?namespace={robust_ns}")


HOSTILE_PATHS = [
    "/api/v1/vms/..%2f..%2fetc?namespace=default",
    "/api/v1/vms/a%00b",
    "/api/v1/vms/%3Cx%3E",
    "/api/v1/vms/" + "a" * 5000,
    "/api/v1/vms?namespace=..%2fkube-system",
    "/api/v1/vms?namespace=%0aX",
    "/api/v1/vms?namespace=" + "n" * 300,
    "/api/v1/pci-devices/0000:00%2f02.0",
    "/api/v1/templates/%2e%2e",
    "/api/v1/vms/x/stats?namespace=%00",
    "/api/v1/vms/x/snapshots/..%2f..%2fetc",
    "/api/v1/vms/x/snapshots/a%00b",
    "/api/v1/vms/x/snapshots/.hidden",
    "/api/v1/vms/x/snapshots/" + "s" * 5000,
    "/api/v1/vms/%3Cx%3E/snapshots",
    "/api/v1/vms/x/snapshots?namespace=%0aX",
    "/api/v1/vms/x/snapshots?limit=-1",
]


@pytest.mark.parametrize("path", HOSTILE_PATHS)
def test_hostile_urls_are_problems(gateway, path):
    for method in ("GET", "DELETE"):
        r = gateway.request(method, path, allow_redirects=False)
        count("hostile URLs (gateway)")
        assert 400 <= r.status_code < 500, f"{method} {path}: {r.status_code} {r.text[:300]}"
        assert r.headers["Content-Type"].startswith("application/problem+json"), (path, r.headers)


# The PCI routes take the address from the path: an encoded "/" once answered an HTML 308 redirect.
PCI_ADDRESSES = ["0000:00%2f02.0", "..%2f..%2fetc", "0000:00:02.0%00", "%3Cx%3E", "0000:00:02.0%0aX", "a" * 5000]


@pytest.mark.parametrize("action", ["assign", "unassign"])
@pytest.mark.parametrize("address", PCI_ADDRESSES, ids=range(len(PCI_ADDRESSES)))
def test_hostile_pci_addresses_at_the_real_routes_are_problems(gateway, robust_ns, action, address):
    body = {"node": "no-such-node", "vm": "no-such-vm", "namespace": robust_ns}
    r = gateway.request("POST", f"/api/v1/pci-devices/{address}/{action}", json=body, allow_redirects=False)
    count("hostile URLs (gateway)")
    assert 400 <= r.status_code < 500, f"POST {address}/{action}: {r.status_code} {r.text[:300]}"
    assert r.headers["Content-Type"].startswith("application/problem+json"), (address, r.headers, r.text[:200])
    assert r.json().get("detail"), r.text
