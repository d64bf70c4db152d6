"""Each real part of the test bed works: libvirt boots the tiny guest, the API server serves CRDs."""

from __future__ import annotations

import json
import subprocess
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.polling import poll


def _tiny_domain_xml(name: str, domain_type: str, guest, log: Path) -> str:
    dom = ET.Element("domain", type=domain_type)
    ET.SubElement(dom, "name").text = name
    ET.SubElement(dom, "memory", unit="MiB").text = "128"
    ET.SubElement(dom, "vcpu").text = "1"
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine="pc").text = "hvm"
    ET.SubElement(os_el, "kernel").text = str(guest.kernel)
    ET.SubElement(os_el, "initrd").text = str(guest.initrd)
    ET.SubElement(os_el, "cmdline").text = "console=ttyS0 quiet"
    devices = ET.SubElement(dom, "devices")
    serial = ET.SubElement(devices, "serial", type="pty")
    ET.SubElement(serial, "log", file=str(log), append="off")
    ET.SubElement(serial, "target", port="0")
    return ET.tostring(dom, encoding="unicode")


def test_tiny_guest_boots_and_prints_its_marker(libvirt_conn, domain_type, tiny_guest, storage_root):
    log = storage_root / "tmp" / f"smoke-{uuid.uuid4().hex[:6]}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    name = f"k3svirt-smoke-{uuid.uuid4().hex[:6]}"
    dom = libvirt_conn.createXML(_tiny_domain_xml(name, domain_type, tiny_guest, log), 0)
    try:
        poll(lambda: log.exists() and tiny_guest.marker in log.read_text(errors="replace"), 60)
        text = log.read_text(errors="replace") if log.exists() else ""
        assert tiny_guest.marker in text, f"no marker on the console; console said: {text[-500:]!r}"
        assert dom.isActive()
    finally:
        dom.destroy()
        log.unlink(missing_ok=True)


def _kubectl(kubeconfig: str, *args: str, stdin: str | None = None) -> str:
    proc = subprocess.run(
        ["kubectl", "--kubeconfig", kubeconfig, *args], input=stdin, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_api_server_lists_namespaces(kubeconfig):
    names = {i["metadata"]["name"] for i in json.loads(_kubectl(kubeconfig, "get", "ns", "-o", "json"))["items"]}
    assert {"default", "kube-system"} <= names


def test_api_server_creates_and_reads_a_crd(kubeconfig):
    suffix = uuid.uuid4().hex[:6]
    plural, group = f"smokes{suffix}", "smoke.k3svirt.io"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": f"smoke{suffix}", "kind": f"Smoke{suffix}"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {"spec": {"type": "object", "properties": {"size": {"type": "integer"}}}},
                        }
                    },
                }
            ],
        },
    }
    _kubectl(kubeconfig, "apply", "-f", "-", stdin=json.dumps(crd))
    try:
        _kubectl(kubeconfig, "wait", "--for=condition=Established", f"crd/{plural}.{group}", "--timeout=60s")
        obj = {"apiVersion": f"{group}/v1", "kind": f"Smoke{suffix}", "metadata": {"name": "one"}, "spec": {"size": 3}}
        _kubectl(kubeconfig, "apply", "-n", "default", "-f", "-", stdin=json.dumps(obj))
        got = json.loads(_kubectl(kubeconfig, "get", plural, "one", "-n", "default", "-o", "json"))
        assert got["spec"]["size"] == 3
    finally:
        _kubectl(kubeconfig, "delete", "crd", f"{plural}.{group}", "--wait=false")
