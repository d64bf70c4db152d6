import re

import pytest
from k3svirt_common import names

QUALIFIED = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


def test_constants():
    assert names.API_VERSION == "k3svirt.io/v1alpha1"
    assert names.PLURALS[names.VM_KIND] == "virtualmachines"
    assert names.ANNOTATION_ACTION == "k3svirt.io/action-request"
    assert names.XML_NAMESPACE == "https://k3svirt.io/xmlns/domain/v1"


@pytest.mark.parametrize("node", ["node1", "k3s-a.example.com", "a" * 58, "a" * 59, "x" * 253, "n-" + "b.c" * 80])
def test_finalizer_valid(node):
    f = names.finalizer_for(node)
    prefix, _, part = f.partition("/")
    assert prefix == "k3svirt.io"
    assert len(part) <= 63 and QUALIFIED.match(part), part
    assert f == names.finalizer_for(node)  # deterministic


def test_finalizer_short_is_plain():
    assert names.finalizer_for("node1") == "k3svirt.io/node-node1"
    assert names.finalizer_for("a" * 300) != names.finalizer_for("a" * 301)


def test_domain_name_roundtrip():
    assert names.domain_name("default", "vm1") == "default_vm1"
    assert names.parse_domain_name("default_vm1") == ("default", "vm1")
    assert names.parse_domain_name("probe-vm") is None


def test_action_request():
    assert names.parse_action_request("restart/abc-1") == ("restart", "abc-1")
    for bad in ("reboot/1", "start", "start/", ""):
        with pytest.raises(ValueError):
            names.parse_action_request(bad)
