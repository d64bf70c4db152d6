"""API-key authentication and role checks.

Keys are stored only as hashes. Key-file / Secret format, one key per line (`#` comments allowed):

    <name>:<role>:sha256:<hex digest of the key>
    <name>:sha256:<hex>            (no role: `read`)

Roles: `read` (GET only) and `admin` (everything). Keys are 256-bit random tokens, so a single
SHA-256 is enough (no password stretching needed); comparison uses hmac.compare_digest against
every stored entry (no early exit).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app, g, request

from .errors import Problem

log = logging.getLogger(__name__)

ROLES = ("read", "admin")
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SECRET_DATA_KEY = "keys"


@dataclass(frozen=True)
class KeyEntry:
    name: str
    role: str
    digest: str  # hex sha256


def hash_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def format_entry(name: str, role: str, key: str) -> str:
    return f"{name}:{role}:{hash_key(key)}"


def parse_keys(text: str, source: str = "") -> list[KeyEntry]:
    entries = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) == 3:
            name, algo, digest = parts
            role = "read"
        elif len(parts) == 4:
            name, role, algo, digest = parts
        else:
            log.warning("ignoring malformed key line", extra={"source": source, "line": lineno})
            continue
        if algo != "sha256" or len(digest) != 64 or role not in ROLES:
            log.warning("ignoring unsupported key line", extra={"source": source, "line": lineno})
            continue
        entries.append(KeyEntry(name, role, digest.lower()))
    return entries


class KeyStore:
    """Keys from a file (re-read when it changes) and/or a Secret (re-read after a TTL)."""

    def __init__(self, settings: dict[str, Any], kube: Any) -> None:
        self.file = settings.get("API_KEYS_FILE")
        self.secret = settings.get("API_KEYS_SECRET")
        self.ttl = float(settings.get("API_KEYS_SECRET_TTL", 30.0))
        self.kube = kube
        self._lock = threading.Lock()
        self._file_state: tuple[float, int] | None = None
        self._file_entries: list[KeyEntry] = []
        self._secret_at = 0.0
        self._secret_entries: list[KeyEntry] = []
        self.static: list[KeyEntry] = list(settings.get("API_KEYS", []) or [])

    @property
    def configured(self) -> bool:
        return bool(self.file or self.secret or self.static)

    def _from_file(self) -> list[KeyEntry]:
        try:
            st = os.stat(self.file)
        except OSError:
            return []
        state = (st.st_mtime, st.st_size)
        if state != self._file_state:
            with open(self.file, encoding="utf-8") as fh:
                self._file_entries = parse_keys(fh.read(), self.file)
            self._file_state = state
        return self._file_entries

    def _from_secret(self) -> list[KeyEntry]:
        now = time.monotonic()
        if now - self._secret_at < self.ttl:
            return self._secret_entries
        from .k8s import core_path

        ns, _, name = self.secret.partition("/")
        try:
            obj = self.kube.get(core_path("secrets", ns, name))
            raw = (obj.get("data") or {}).get(SECRET_DATA_KEY, "")
            self._secret_entries = parse_keys(base64.b64decode(raw).decode("utf-8"), self.secret)
        except Problem as exc:
            if exc.status != 404:
                if self._secret_entries:  # keep the last good copy while the API server is away
                    log.warning("API-key Secret unreadable; using cached keys", extra={"error": exc.detail})
                    return self._secret_entries
                raise
            self._secret_entries = []
        self._secret_at = now
        return self._secret_entries

    def entries(self) -> list[KeyEntry]:
        with self._lock:
            out = list(self.static)
            if self.file:
                out += self._from_file()
            if self.secret:
                out += self._from_secret()
            return out

    def lookup(self, key: str) -> KeyEntry | None:
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
        found = None
        for entry in self.entries():
            if hmac.compare_digest(entry.digest, digest) and found is None:
                found = entry
        return found


def presented_key() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if scheme.lower() == "basic" and value.strip():
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        _user, sep, password = decoded.partition(":")
        return password if sep and password else None
    key = request.headers.get("X-API-Key", "").strip()
    return key or None


CHALLENGE = 'Bearer realm="k3svirt", Basic realm="k3svirt"'


def _unauthorized(detail: str) -> Problem:
    return Problem(401, detail, headers={"WWW-Authenticate": CHALLENGE})


def check_request() -> None:
    """before_request hook: enforce key + role on every route not marked public."""
    app: Flask = current_app
    if request.endpoint is None:  # routing failed: 404/405 follow
        return
    view = app.view_functions.get(request.endpoint)
    if view is None or getattr(view, "k3s_public", False):
        return
    store: KeyStore = app.extensions["k3svirt.keys"]
    key = presented_key()
    if key is None:
        raise _unauthorized("an API key is required (Authorization: Bearer <key> or X-API-Key: <key>)")
    entry = store.lookup(key)
    if entry is None:
        raise _unauthorized("invalid API key")
    needed = getattr(view, "k3s_roles", {}).get(request.method)
    if needed is None:
        needed = "read" if request.method in READ_METHODS else "admin"
    if needed == "admin" and entry.role != "admin":
        raise Problem(403, f"key '{entry.name}' has role '{entry.role}'; this operation needs 'admin'")
    g.api_key_name = entry.name
