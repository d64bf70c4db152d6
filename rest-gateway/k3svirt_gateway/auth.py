"""API-key authentication and role checks.

Keys are stored only as hashes. Key-file / Secret format, one key per line (`#` comments allowed):

    <name>:<role>:<namespaces>:sha256:<hex digest of the key>
    <name>:<role>:sha256:<hex>     (no namespaces: every namespace, "*")
    <name>:sha256:<hex>            (no role: `read`, every namespace)

Roles, each including the one before: `read` (GET only), `operate` (also start/stop/reboot VMs and
scale Deployments), `admin` (every write). `<namespaces>` is `*` (all) or a comma-separated list of
namespace names: the key may only touch those namespaces (403 for any other, whether it exists or
not), and cluster-wide routes (nodes, PCI devices, the namespace list, creating or deleting
namespaces) need a key for `*`. Lines written before scopes existed keep their meaning (all
namespaces). Keys are 256-bit random tokens, so a single SHA-256 is enough (no password stretching
needed); comparison uses hmac.compare_digest against every stored entry (no early exit).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app, g, request

from .errors import Problem
from .schemas import NAME_PATTERN

log = logging.getLogger(__name__)

ROLES = ("read", "operate", "admin")  # each includes the ones before it
RANK = {role: i for i, role in enumerate(ROLES)}
ALL_NAMESPACES = "*"
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SECRET_DATA_KEY = "keys"


_NS_RE = re.compile(NAME_PATTERN)


@dataclass(frozen=True)
class KeyEntry:
    name: str
    role: str
    digest: str  # hex sha256
    namespaces: frozenset[str] | None = None  # None: every namespace

    def allows(self, namespace: str) -> bool:
        return self.namespaces is None or namespace in self.namespaces

    def scope_text(self) -> str:
        return ALL_NAMESPACES if self.namespaces is None else ",".join(sorted(self.namespaces))


def hash_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_scope(text: str) -> frozenset[str] | None:
    """`*` -> None (all); `a,b` -> {a, b}. ValueError for anything that is not namespace names."""
    text = text.strip()
    if text == ALL_NAMESPACES:
        return None
    names = [n.strip() for n in text.split(",")]
    bad = [n for n in names if not n or len(n) > 63 or not _NS_RE.match(n)]
    if bad:
        raise ValueError(f"not namespace names: {', '.join(repr(b) for b in bad)} (use * for all namespaces)")
    return frozenset(names)


def format_entry(name: str, role: str, key: str, namespaces: str = ALL_NAMESPACES) -> str:
    """An all-namespaces key is written in the older 4-field form (a gateway from before scopes reads
    it the same); a scoped one in the 5-field form, which such a gateway ignores (never widens)."""
    scope = parse_scope(namespaces)
    if scope is None:
        return f"{name}:{role}:{hash_key(key)}"
    return f"{name}:{role}:{','.join(sorted(scope))}:{hash_key(key)}"


def parse_keys(text: str, source: str = "") -> list[KeyEntry]:
    entries = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        scope_text = ALL_NAMESPACES
        if len(parts) == 3:
            name, algo, digest = parts
            role = "read"
        elif len(parts) == 4:
            name, role, algo, digest = parts
        elif len(parts) == 5:
            name, role, scope_text, algo, digest = parts
        else:
            log.warning("ignoring malformed key line %s:%d", source, lineno)
            continue
        try:
            scope = parse_scope(scope_text)
        except ValueError:  # never read an unreadable scope as "all namespaces"
            log.warning("ignoring key line %s:%d: bad namespace list", source, lineno)
            continue
        if algo != "sha256" or len(digest) != 64 or role not in ROLES:
            log.warning("ignoring unsupported key line %s:%d", source, lineno)
            continue
        entries.append(KeyEntry(name, role, digest.lower(), scope))
    return entries


class KeyStore:
    """Keys from a file (re-read when it changes) and/or a Secret (re-read after a TTL).

    The Secret's copy is fresh for `ttl` seconds after it was read. When a re-read fails (API server
    away, RBAC, a malformed Secret) the last good copy is still used for at most `max_stale` seconds
    more, re-read at most every RETRY_SECONDS; after that every key not found in the file (or the
    static list) is answered 503 + Retry-After, never 500 and never a key the Secret may have revoked
    longer ago than ttl + max_stale. A missing Secret (404) is an empty one: every key in it revoked.
    """

    RETRY_SECONDS = 2.0

    def __init__(self, settings: dict[str, Any], kube: Any) -> None:
        self.file = settings.get("API_KEYS_FILE")
        self.secret = settings.get("API_KEYS_SECRET")
        self.ttl = float(settings.get("API_KEYS_SECRET_TTL", 30.0))
        self.max_stale = float(settings.get("API_KEYS_SECRET_MAX_STALE", 30.0))
        self.kube = kube
        self._lock = threading.Lock()
        self._file_state: tuple[float, int] | None = None
        self._file_entries: list[KeyEntry] = []
        self._secret_at: float | None = None  # monotonic time of the last good read
        self._secret_retry_at = 0.0
        self._secret_error = ""
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
            try:
                with open(self.file, encoding="utf-8") as fh:
                    self._file_entries = parse_keys(fh.read(), self.file)
            except (OSError, UnicodeDecodeError) as exc:  # unreadable: no key from it (not a 500), retried
                log.warning("API-key file %s unreadable: %s", self.file, exc)
                return []
            self._file_state = state
        return self._file_entries

    def _read_secret(self) -> list[KeyEntry]:
        from .k8s import core_path

        ns, _, name = self.secret.partition("/")
        obj = self.kube.get_or_none(core_path("secrets", ns, name))
        if obj is None:
            return []
        raw = (obj.get("data") or {}).get(SECRET_DATA_KEY, "")
        try:
            text = base64.b64decode(raw, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, TypeError) as exc:
            raise Problem(503, f"data.{SECRET_DATA_KEY} of Secret {self.secret} is not base64 UTF-8 text") from exc
        return parse_keys(text, self.secret)

    def _from_secret(self) -> list[KeyEntry]:
        """The Secret's entries; Problem 503 (with Retry-After) when no usable copy is left."""
        now = time.monotonic()
        age = None if self._secret_at is None else now - self._secret_at
        if age is not None and age < self.ttl:
            return self._secret_entries
        if now >= self._secret_retry_at:
            try:
                self._secret_entries = self._read_secret()
                self._secret_at, self._secret_error = now, ""
                return self._secret_entries
            except Problem as exc:
                self._secret_retry_at = now + self.RETRY_SECONDS
                if exc.detail != self._secret_error:
                    log.warning("API-key Secret %s unreadable: %s", self.secret, exc.detail)
                self._secret_error = exc.detail
        if age is not None and age < self.ttl + self.max_stale:
            return self._secret_entries  # the last good copy, within its documented bound
        since = "never read" if age is None else f"last read {age:.0f} s ago"
        raise Problem(
            503,
            f"API keys unavailable: Secret {self.secret} cannot be read ({since}; copies are used at most "
            f"{self.ttl + self.max_stale:.0f} s): {self._secret_error}",
            headers={"Retry-After": str(int(self.RETRY_SECONDS) + 1)},
        )

    def lookup(self, key: str) -> KeyEntry | None:
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
        with self._lock:
            local = list(self.static) + (self._from_file() if self.file else [])
            secret_problem = None
            remote: list[KeyEntry] = []
            if self.secret:
                try:
                    remote = self._from_secret()
                except Problem as exc:
                    secret_problem = exc
        found = None
        for entry in local + remote:
            if hmac.compare_digest(entry.digest, digest) and found is None:
                found = entry
        if found is None and secret_problem is not None:
            raise secret_problem  # the key may be in the Secret we cannot read: not a 401
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


def target_namespace(view: Any, method: str) -> str | None:
    """The namespace a request acts in, or None for a cluster-wide route. A route is namespaced when
    it takes the `namespace` query parameter (default: the gateway's default namespace) or names a
    path argument holding the namespace (op(namespace_param=...))."""
    ops = getattr(view, "k3s_ops", {}) or {}
    meta = ops.get(method) or (ops.get("GET") if method == "HEAD" else None) or {}  # HEAD is GET's
    param = meta.get("namespace_param")
    if param:
        return str((request.view_args or {}).get(param, ""))
    if "namespace" in (meta.get("query") or ()):
        return request.args.get("namespace") or current_app.config["DEFAULT_NAMESPACE"]
    return None


def needed_role(view: Any, method: str) -> str:
    needed = getattr(view, "k3s_roles", {}).get(method)
    return needed or ("read" if method in READ_METHODS else "admin")


def _forbidden(detail: str, reason: str) -> Problem:
    return Problem(403, detail, reason=reason)


def require_namespace(ns: str) -> None:
    """Refuse (403) a namespace outside the calling key's scope. Called by api.namespace() too, so a
    route that reads its namespace another way than the before_request hook saw is still held."""
    entry: KeyEntry | None = g.get("api_key")
    if entry is not None and not entry.allows(ns):
        raise _forbidden(
            f"key {entry.name!r} is limited to namespaces {entry.scope_text()}; "
            f"namespace {ns[:63]!r} is outside its scope",
            "NamespaceOutOfScope",
        )


def check_request() -> None:
    """before_request hook: enforce key, role and namespace scope on every route not marked public."""
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
    g.api_key_name = entry.name
    g.api_key = entry
    needed = needed_role(view, request.method)
    if RANK[entry.role] < RANK[needed]:
        raise _forbidden(f"key {entry.name!r} has role {entry.role!r}; this operation needs {needed!r}", "RoleTooLow")
    ns = target_namespace(view, request.method)
    if ns is None:
        if entry.namespaces is not None and not getattr(view, "k3s_any_scope", False):
            raise _forbidden(
                f"key {entry.name!r} is limited to namespaces {entry.scope_text()}; {request.method} "
                f"{request.path} is cluster-wide and needs a key for all namespaces (*)",
                "ClusterWideRoute",
            )
        return
    require_namespace(ns)
