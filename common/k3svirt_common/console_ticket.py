"""Console tickets: what lets a client open one VM's serial console on the operator of its node.

The REST gateway (after checking the caller's API key, its role and namespace scope) and the kubectl
plugin (for a user who may read the console key Secret) mint a ticket; the operator's console
endpoint verifies it. A ticket names exactly one VM (namespace, name and uid, so it is useless for a
VM of the same name created later), lives at most MAX_LIFETIME seconds, is used once (the operator
remembers nonces until they expire) and is signed with HMAC-SHA256 under a key shared by the gateway
and the operators (the Secret k3svirt-system/k3svirt-console-key, mounted as a file). Nobody else
learns the key: a node address reachable by a tenant still refuses every connection without a
valid ticket. Threat model: SECURITY.md ("Serial consoles").

    ticket = mint(key, namespace, name, uid)              # base64url(payload) "." base64url(mac)
    claims = verify(key, ticket, namespace, name)         # TicketError naming why not
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

MAX_LIFETIME = 60.0  # seconds: a ticket is used at once, by a program, right after it was minted
DEFAULT_LIFETIME = 30.0
MAX_TICKET_CHARS = 1024
MIN_KEY_BYTES = 32
KEY_SECRET = "k3svirt-console-key"  # in the release namespace; data key "key"
KEY_SECRET_DATA = "key"


class TicketError(ValueError):
    """The ticket is not acceptable; the message says why (for the refusal the client sees)."""


@dataclass(frozen=True)
class Claims:
    namespace: str
    name: str
    uid: str
    expires: float
    nonce: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, b"k3svirt-console-v1\0" + payload, hashlib.sha256).digest()


def load_key(path: str | os.PathLike[str]) -> bytes:
    """The shared key from a file (a mounted Secret): its bytes, stripped of surrounding whitespace.
    ValueError when it is too short to be a secret (a misconfiguration must not weaken the check)."""
    key = Path(path).read_bytes().strip()
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"console key {path} holds {len(key)} bytes; at least {MIN_KEY_BYTES} are needed")
    return key


def new_key() -> str:
    """A fresh key, as text for a Secret or a file."""
    return secrets.token_urlsafe(48)


def mint(key: bytes, namespace: str, name: str, uid: str, lifetime: float = DEFAULT_LIFETIME) -> str:
    lifetime = min(max(lifetime, 1.0), MAX_LIFETIME)
    payload = json.dumps(
        {
            "v": 1,
            "ns": namespace,
            "n": name,
            "u": uid,
            "exp": round(time.time() + lifetime, 3),
            "nonce": secrets.token_urlsafe(16),
        },  # fmt: skip
        separators=(",", ":"),
    ).encode()
    return _b64(payload) + "." + _b64(_mac(key, payload))


def verify(key: bytes, ticket: str, namespace: str, name: str, now: float | None = None) -> Claims:
    """The ticket's claims if it is genuine, unexpired and for this VM; else TicketError."""
    if not ticket or len(ticket) > MAX_TICKET_CHARS:
        raise TicketError("no console ticket, or one longer than any this API issues")
    body, sep, mac = ticket.partition(".")
    try:
        payload, given = _unb64(body), _unb64(mac)
    except (binascii.Error, ValueError):
        raise TicketError("malformed console ticket") from None
    if not sep or not hmac.compare_digest(given, _mac(key, payload)):
        raise TicketError("console ticket not signed by this cluster's console key")
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise TicketError("malformed console ticket") from None
    fields = ("ns", "n", "u", "nonce")
    if not isinstance(data, dict) or data.get("v") != 1 or not all(isinstance(data.get(f), str) for f in fields):
        raise TicketError("malformed console ticket")
    exp = data.get("exp")
    now = time.time() if now is None else now
    if not isinstance(exp, int | float) or exp <= now:
        raise TicketError("console ticket expired: ask for a new one")
    if exp > now + MAX_LIFETIME + 5:
        raise TicketError("console ticket claims a lifetime longer than any this API issues")
    if (data["ns"], data["n"]) != (namespace, name):
        raise TicketError(f"console ticket is for VM {data['ns']}/{data['n']}, not {namespace}/{name}")
    return Claims(data["ns"], data["n"], data["u"], float(exp), data["nonce"])


class NonceLedger:
    """Nonces of tickets already used, kept until they expire: a ticket opens one session."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def use(self, claims: Claims, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._lock:
            for nonce, exp in list(self._seen.items()):
                if exp <= now:
                    del self._seen[nonce]
            if claims.nonce in self._seen:
                raise TicketError("console ticket already used: ask for a new one")
            self._seen[claims.nonce] = claims.expires
