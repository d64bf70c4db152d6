"""Admits Service traffic into the VM networks, and nothing else.

libvirt's NAT networks reject every new connection forwarded into them (LIBVIRT_FWI: only replies
pass), so a pod reaching a VM through a ClusterIP, or a NodePort forwarded to it, would be refused.
This node's chain, jumped to first from the filter FORWARD chain, accepts exactly the connections
kube-proxy destination-NATed (conntrack state DNAT: a Service's ClusterIP or NodePort) to a
published, ready endpoint (VM address, protocol, port). A direct connection to the VM's address
stays refused, and so does every port the Service does not name. Host-originated traffic (a NodePort
on 127.0.0.1 or the node address) is not forwarded and needs nothing here.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import subprocess
from collections.abc import Iterable

log = logging.getLogger(__name__)

PROTOCOLS = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}


def chain_name(node: str) -> str:
    """K3SVIRT-SVC-<hash>: per node (several test operators may share one machine), <= 28 characters."""
    return "K3SVIRT-SVC-" + hashlib.sha256(node.encode()).hexdigest()[:10]


def restore_input(chain: str, open_ports: Iterable[tuple[str, str, int]]) -> str:
    """iptables-restore input that replaces the chain's rules at once (one transaction)."""
    lines = ["*filter", f":{chain} - [0:0]"]
    for ip, protocol, port in sorted(set(open_ports)):
        addr = ipaddress.IPv4Address(ip)  # raises on anything else: never write a rule from bad data
        proto = PROTOCOLS[protocol]
        if not 1 <= int(port) <= 65535:
            raise ValueError(f"port {port} out of range")
        lines.append(f"-A {chain} -d {addr}/32 -p {proto} -m {proto} --dport {int(port)} "
                     f"-m conntrack --ctstate DNAT -j ACCEPT")  # fmt: skip
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


class Firewall:
    """Keeps this node's chain equal to the union of what every Service loop asked for."""

    def __init__(self, node: str, enabled: bool = True) -> None:
        self.chain = chain_name(node)
        self.enabled = enabled
        self._wanted: dict[tuple[str, str], frozenset[tuple[str, str, int]]] = {}
        self._applied: frozenset[tuple[str, str, int]] | None = None

    def want(self, service: tuple[str, str], ports: Iterable[tuple[str, str, int]]) -> None:
        self._wanted[service] = frozenset(ports)
        self._sync()

    def forget(self, service: tuple[str, str]) -> None:
        self._wanted.pop(service, None)
        self._sync()

    def _sync(self) -> None:
        union = frozenset().union(*self._wanted.values()) if self._wanted else frozenset()
        if not self.enabled or union == self._applied:
            return
        try:
            subprocess.run(["iptables-restore", "-w", "5", "--noflush"], input=restore_input(self.chain, union),
                           text=True, check=True, capture_output=True, timeout=30)  # fmt: skip
            jump = ["FORWARD", "-j", self.chain]
            if subprocess.run(["iptables", "-w", "5", "-C", *jump], capture_output=True, timeout=30).returncode:
                subprocess.run(["iptables", "-w", "5", "-I", jump[0], "1", *jump[1:]], check=True,
                               capture_output=True, timeout=30)  # fmt: skip
        except (OSError, subprocess.SubprocessError) as exc:
            err = getattr(exc, "stderr", "") or str(exc)
            log.warning("the VM service firewall was not updated", extra={"chain": self.chain, "error": err})
            return  # the next change or resync tries again
        self._applied = union
        log.info("VM service firewall updated", extra={"chain": self.chain, "rules": len(union)})
