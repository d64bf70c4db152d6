"""Console tickets: genuine, unexpired, for this VM, used once."""

from __future__ import annotations

import pytest
from k3svirt_common import console_ticket as t

KEY = b"k" * 32


def test_round_trip_names_the_vm():
    claims = t.verify(KEY, t.mint(KEY, "ns1", "vm1", "uid-1"), "ns1", "vm1")
    assert (claims.namespace, claims.name, claims.uid) == ("ns1", "vm1", "uid-1")


@pytest.mark.parametrize(
    ("ticket", "why"),
    [
        ("", "no console ticket"),
        ("x" * 2000, "longer"),
        ("abc", "not signed"),
        ("!!!.###", "not signed"),
        (t.mint(b"o" * 32, "ns1", "vm1", "u"), "not signed"),
    ],
)
def test_forged_or_malformed_tickets_are_refused(ticket, why):
    with pytest.raises(t.TicketError, match=why):
        t.verify(KEY, ticket, "ns1", "vm1")


def test_a_ticket_opens_only_its_own_vm():
    ticket = t.mint(KEY, "ns1", "vm1", "u")
    with pytest.raises(t.TicketError, match="is for VM ns1/vm1"):
        t.verify(KEY, ticket, "ns2", "vm1")
    with pytest.raises(t.TicketError, match="is for VM ns1/vm1"):
        t.verify(KEY, ticket, "ns1", "vm2")


def test_expired_ticket_is_refused():
    ticket = t.mint(KEY, "ns1", "vm1", "u", lifetime=1)
    with pytest.raises(t.TicketError, match="expired"):
        t.verify(KEY, ticket, "ns1", "vm1", now=__import__("time").time() + 5)


def test_a_ticket_is_used_once():
    ledger = t.NonceLedger()
    claims = t.verify(KEY, t.mint(KEY, "ns1", "vm1", "u"), "ns1", "vm1")
    ledger.use(claims)
    with pytest.raises(t.TicketError, match="already used"):
        ledger.use(claims)


def test_short_keys_are_refused(tmp_path):
    (tmp_path / "k").write_text("short")
    with pytest.raises(ValueError, match="at least 32"):
        t.load_key(tmp_path / "k")
    (tmp_path / "k").write_text(t.new_key() + "\n")
    assert len(t.load_key(tmp_path / "k")) >= 32
