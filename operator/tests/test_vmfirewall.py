"""The VM service firewall's rules: exactly the published endpoints, only DNATed traffic."""

from __future__ import annotations

import pytest
from k3svirt_operator.vmfirewall import chain_name, restore_input


def test_rules_admit_only_destination_nated_traffic_to_each_endpoint():
    text = restore_input("K3SVIRT-SVC-x", [("192.168.122.5", "TCP", 8080), ("192.168.122.5", "TCP", 8080),
                                            ("192.168.122.6", "UDP", 53)])  # fmt: skip
    assert text.splitlines() == [
        "*filter",
        ":K3SVIRT-SVC-x - [0:0]",
        "-A K3SVIRT-SVC-x -d 192.168.122.5/32 -p tcp -m tcp --dport 8080 -m conntrack --ctstate DNAT -j ACCEPT",
        "-A K3SVIRT-SVC-x -d 192.168.122.6/32 -p udp -m udp --dport 53 -m conntrack --ctstate DNAT -j ACCEPT",
        "COMMIT",
    ]
    assert restore_input("C", []).splitlines() == ["*filter", ":C - [0:0]", "COMMIT"]  # flushes the chain


@pytest.mark.parametrize(
    "bad",
    [
        ("1.2.3.4/0", "TCP", 80),
        ("1.2.3.4 -j DROP", "TCP", 80),
        ("fe80::1", "TCP", 80),
        ("1.2.3.4", "ICMP", 1),
        ("1.2.3.4", "TCP", 0),
        ("1.2.3.4", "TCP", 70000),
    ],  # fmt: skip
)
def test_nothing_but_an_address_protocol_and_port_becomes_a_rule(bad):
    with pytest.raises((ValueError, KeyError)):
        restore_input("C", [bad])


def test_chain_names_fit_iptables():
    assert len(chain_name("n" * 300)) <= 28 and chain_name("a") != chain_name("b")
