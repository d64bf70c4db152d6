"""Watch-backed in-memory caches for the list routes (GET /vms, GET /templates).

One `Informer` per resource kind: a cluster-wide list, then a watch from the list's resourceVersion
in a daemon thread, started lazily by the first list request (never at app creation: building the app
stays offline). Each informer keeps, per (namespace, name), only what a list response needs: the
route's summary of the object, its labels (for labelSelector), uid and resourceVersion.

* 410 Gone / "too old resource version" (as an HTTP status or as a watch ERROR event) -> relist.
* API server unreachable -> reconnect with capped exponential backoff (jitter); on reconnect the watch
  resumes from the last resourceVersion seen (bookmarks keep it fresh), or relists after a 410.
* `synced` is set by the first complete list. While the watch is disconnected, a list is still served
  from memory for up to `LIST_CACHE_MAX_STALE` seconds, flagged with a `Warning: 110` header; after
  that (or before the first sync, or when the watch is refused with 401/403/404) the route lists
  directly, with the usual 503 when the API server is down.
* Watch mechanics (list, watch, bookmarks, 410 -> relist) are k3svirt_common.kube's ListWatch.
* Read-your-writes: `Kube` hands every successful write it makes (POST/PUT/PATCH/DELETE) to
  `Cache.observe`, which applies the returned object at once. Watch events never move an entry back
  to an older resourceVersion, and deletions leave a short-lived tombstone (by uid) so a late watch
  event or a relist snapshot taken before the delete cannot resurrect the object.

Thread-safe: one lock per informer guards the entries; readers take a sorted snapshot rebuilt only
after a change.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from k3svirt_common import labelselector
from k3svirt_common.kube import SYNC, ApiError, ListWatch, WatchEvent
from k3svirt_common.labelselector import Requirement, matches

from . import contract as c
from .k8s import Kube, group_path

log = logging.getLogger(__name__)

TOMBSTONE_TTL = 60.0
ENCODED_MAX = 64  # encoded list answers kept per informer (namespaces x selectors)
ENABLED_WORDS = ("1", "on", "true", "yes")


@dataclass(frozen=True)
class Resource:
    """A namespaced custom resource the gateway lists, and the view a list response shows of one object."""

    kind: str
    plural: str
    project: Callable[[dict[str, Any]], dict[str, Any]]
    group: str = c.GROUP
    version: str = c.VERSION

    @property
    def path(self) -> str:
        return group_path(self.group, self.version, self.plural)


class Listing:
    """One list answer from memory. `items` is built on first use only: an answer encoded already for
    the same key (Informer.encoded) needs none (building 1000 item references was most of a cached GET)."""

    __slots__ = ("_entries", "_selector", "_items", "stale_for", "key")

    def __init__(self, entries: list[_Entry], selector: list[Requirement], stale_for: float | None,
                 key: tuple[Any, ...] | None = None) -> None:  # fmt: skip
        self._entries, self._selector, self._items = entries, selector, None
        self.stale_for = stale_for  # seconds the watch has been disconnected; None when it is connected
        # (informer, generation, namespace, selector): equal keys mean the same items (Informer.encoded)
        self.key = key

    @property
    def items(self) -> list[dict[str, Any]]:
        if self._items is None:
            sel = self._selector
            self._items = [e.view for e in self._entries if not sel or matches(sel, e.labels)]
        return self._items


@dataclass(frozen=True)
class _Entry:
    uid: str
    rv: int | None
    labels: dict[str, str]
    view: dict[str, Any]


# The watch is refused for a reason retrying soon will not fix: permissions, or the CRD is missing.
REFUSED = (401, 403, 404)


def _rv(obj: dict[str, Any]) -> int | None:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion"))
    except (TypeError, ValueError):
        return None  # opaque: never used for ordering


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    md = obj.get("metadata") or {}
    return md.get("namespace", ""), md.get("name", "")


# ---------------------------------------------------------------------------------- label selectors
def parse_selector(text: str | None) -> list[Requirement]:
    """The label selector, as the cache evaluates it itself (k3svirt_common.labelselector: =, ==, !=,
    in, notin, key, !key). Anything else (gt/lt, invalid keys or values) raises ValueError and the
    route lists directly, so the API server's own parser decides (400 for a malformed selector)."""
    return labelselector.parse(text)


# Documented on the cached list routes (OpenAPI response header).
STALE_HEADER = {
    "Warning": {
        "schema": {"type": "string"},
        "description": "Present only when the list was served from the gateway's watch cache while its "
        'watch is disconnected from the API server: `110 k3svirt-gateway "Response is Stale: ..."`',
    }
}


# ------------------------------------------------------------------------------------------ informer
class Informer:
    """List+watch of one resource kind, cluster-wide, in a background thread."""

    def __init__(
        self,
        kube: Kube,
        resource: Resource,
        *,
        max_stale: float = 30.0,
        watch_timeout: int = 240,
        backoff_max: float = 10.0,
    ) -> None:
        self.kube = kube
        self.resource = resource
        self.max_stale = max_stale
        self.watch_timeout = watch_timeout
        self.backoff_max = backoff_max
        self._lock = threading.Lock()
        self._items: dict[tuple[str, str], _Entry] = {}
        self._tombstones: dict[tuple[str, str], tuple[str, float]] = {}  # key -> (uid, expiry)
        # namespace -> its entries sorted by name; rebuilt on the first list after a change
        self._snapshot: dict[str, list[_Entry]] | None = None
        # Every change bumps the generation; list answers encoded at one generation are reused until
        # the next change (a GET of 1000 VMs is then one dict lookup, not 1000 views serialized).
        self.generation = 0
        self._encoded: dict[tuple[Any, ...], bytes] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lw = ListWatch(
            kube.api, resource.path, timeout_seconds=watch_timeout, page=500, on_connect=self._connected
        )
        self.synced = False
        self.disconnected_since: float | None = None
        self.events = 0

    @property
    def resource_version(self) -> str:
        return self._lw.resource_version

    @property
    def relists(self) -> int:
        return self._lw.relists

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"informer-{self.resource.plural}", daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._lw.close()
        if self._thread is not None:
            self._thread.join(timeout)

    def wait_synced(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.synced and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.synced

    def restart_watch(self, resource_version: str | None = None) -> None:
        """Drop the current watch; the next one starts from `resource_version` (if given). With a
        resourceVersion the API server no longer has, that is the 410 -> relist path (tests, ops)."""
        self._lw.restart(resource_version)

    # ------------------------------------------------------------------- reading
    def list(self, namespace: str, selector: list[Requirement]) -> Listing | None:
        """The cached list-item views of `namespace` (sorted like the API server: by name), or None when
        the cache cannot answer (not synced, or disconnected for longer than max_stale)."""
        if not self.synced:
            return None
        since = self.disconnected_since
        stale_for = None if since is None else time.monotonic() - since
        if stale_for is not None and stale_for > self.max_stale:
            return None
        with self._lock:  # the generation and the snapshot read together: the key names these entries
            generation, snap = self.generation, self._snapshot
            if snap is None:
                snap = {}
                for (ns, _name), entry in sorted(self._items.items(), key=lambda kv: kv[0]):
                    snap.setdefault(ns, []).append(entry)
                self._snapshot = snap
        return Listing(snap.get(namespace, []), selector, stale_for, (id(self), generation, namespace, repr(selector)))

    def encoded(self, listing: Listing, encode: Callable[[list[dict[str, Any]]], bytes]) -> bytes:
        """The list answer's body for `listing`, encoded once per generation (and per namespace and
        selector); a change in between makes the next call encode again."""
        key = listing.key
        body = self._encoded.get(key) if key is not None else None
        if body is None:
            body = encode(listing.items)
            if key is not None and key[1] == self.generation:
                if len(self._encoded) >= ENCODED_MAX:
                    self._encoded.clear()
                self._encoded[key] = body
        return body

    def __len__(self) -> int:
        return len(self._items)

    # ------------------------------------------------------------------- writing
    def _entry(self, obj: dict[str, Any]) -> _Entry:
        md = obj.get("metadata") or {}
        return _Entry(
            uid=md.get("uid", ""),
            rv=_rv(obj),
            labels=dict(md.get("labels") or {}),
            view=self.resource.project(obj),
        )

    def _changed(self) -> None:
        self._snapshot = None
        self.generation += 1
        self._encoded = {}

    def upsert(self, obj: dict[str, Any]) -> None:
        """Apply an object seen in a watch event or returned by a write; never moves an entry back to an
        older resourceVersion and never resurrects a uid deleted through the gateway."""
        key = _key(obj)
        uid = (obj.get("metadata") or {}).get("uid", "")
        entry = self._entry(obj)
        with self._lock:
            tomb = self._tombstones.get(key)
            if tomb is not None:
                if tomb[0] == uid and tomb[1] > time.monotonic():
                    return
                del self._tombstones[key]
            old = self._items.get(key)
            if old is not None and old.rv is not None and entry.rv is not None and old.rv > entry.rv:
                return
            self._items[key] = entry
            self._changed()

    def remove(self, obj: dict[str, Any], *, tombstone: bool = False) -> None:
        key = _key(obj)
        md = obj.get("metadata") or {}
        uid = md.get("uid", "")
        with self._lock:
            old = self._items.get(key)
            if old is not None and (not uid or not old.uid or old.uid == uid):
                del self._items[key]
                self._changed()
            if tombstone:
                self._tombstones[key] = (uid, time.monotonic() + TOMBSTONE_TTL)
            elif self._tombstones.get(key, ("",))[0] == uid:
                del self._tombstones[key]

    def observe_delete(self, obj: dict[str, Any], key: tuple[str, str]) -> None:
        """The gateway deleted `key`; `obj` is what the API server answered (the object, or a Status)."""
        if obj.get("kind") == self.resource.kind:
            md = obj.get("metadata") or {}
            if md.get("deletionTimestamp") and md.get("finalizers"):
                self.upsert(obj)  # still there until its finalizers are removed
                return
        else:
            obj = {"metadata": {"namespace": key[0], "name": key[1]}}
        self.remove(obj, tombstone=True)

    def _replace(self, objs: list[dict[str, Any]], list_rv: int | None) -> None:
        now = time.monotonic()
        with self._lock:
            self._tombstones = {k: t for k, t in self._tombstones.items() if t[1] > now}
            new: dict[tuple[str, str], _Entry] = {}
            for obj in objs:
                key = _key(obj)
                tomb = self._tombstones.get(key)
                if tomb is not None and tomb[0] in ("", (obj.get("metadata") or {}).get("uid")):
                    continue  # deleted through the gateway after this snapshot was taken
                new[key] = self._entry(obj)
            if list_rv is not None:
                for key, old in self._items.items():  # written through the gateway after the snapshot
                    if old.rv is not None and old.rv > list_rv:
                        new[key] = old
            self._items = new
            self._changed()

    # ---------------------------------------------------------------- background
    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                started = time.monotonic()
                for ev in self._lw.events():  # relists by itself after a 410
                    self._event(ev)
                # A watch that ends at once without an error (a proxy closing it?) must not spin.
                failures = 0 if time.monotonic() - started > 1.0 else failures + 1
            except ApiError as exc:
                if self._stop.is_set():
                    break
                if exc.status in REFUSED:
                    # Permission or CRD missing: not an outage; stop answering from memory, retry slowly.
                    self.synced = False
                    failures = max(failures + 1, 5)
                    log.warning(
                        "watch refused; list routes read the API server directly",
                        extra={"resource": self.resource.plural, "error": str(exc)},
                    )
                else:  # API server down, reset connection, 5xx...
                    if self.disconnected_since is None:
                        self.disconnected_since = time.monotonic()
                        log.warning(
                            "watch lost the API server; reconnecting",
                            extra={"resource": self.resource.plural, "error": str(exc)},
                        )
                    failures += 1
            except Exception:  # noqa: BLE001 - a bug in event handling must not end the informer
                log.exception("informer failed; restarting it", extra={"resource": self.resource.plural})
                failures += 1
            if failures and not self._stop.is_set():
                delay = min(self.backoff_max, 0.2 * 2 ** (failures - 1)) * random.uniform(0.5, 1.0)
                self._stop.wait(delay)

    def _connected(self) -> None:
        if self.disconnected_since is not None:
            log.info("watch reconnected", extra={"resource": self.resource.plural})
            self.disconnected_since = None

    def _event(self, ev: WatchEvent) -> None:
        if ev.type == SYNC:
            items = ev.object["items"]
            try:
                list_rv: int | None = int(ev.object["metadata"]["resourceVersion"])
            except (KeyError, TypeError, ValueError):
                list_rv = None
            self._replace(items, list_rv)
            self._connected()
            self.synced = True
            log.info(
                "listed",
                extra={"resource": self.resource.plural, "count": len(items), "resourceVersion": self.resource_version},
            )
            return
        self.events += 1
        if ev.type in ("ADDED", "MODIFIED"):
            self.upsert(ev.object)
        elif ev.type == "DELETED":
            self.remove(ev.object)


# ----------------------------------------------------------------------------------------- the cache
class Cache:
    """The informers of one gateway process (created on first use, each with its own thread)."""

    def __init__(self, kube: Kube, settings: dict[str, Any]) -> None:
        self.kube = kube
        self.enabled = str(settings.get("LIST_CACHE", "on")).strip().lower() in ENABLED_WORDS
        self.max_stale = float(settings.get("LIST_CACHE_MAX_STALE", 30.0))
        self._informers: dict[tuple[str, str, str], Informer] = {}
        self._lock = threading.Lock()
        kube.on_write = self.observe

    def informer(self, resource: Resource) -> Informer:
        ident = (resource.group, resource.version, resource.plural)
        inf = self._informers.get(ident)
        if inf is None:
            with self._lock:
                inf = self._informers.get(ident)
                if inf is None:
                    inf = Informer(self.kube, resource, max_stale=self.max_stale)
                    self._informers[ident] = inf
        return inf

    def list(self, resource: Resource, namespace: str, selector: str | None) -> Listing | None:
        """The list from memory, or None: the caller lists directly."""
        if not self.enabled:
            return None
        inf = self.informer(resource)
        inf.start()
        try:
            reqs = parse_selector(selector)
        except ValueError:
            return None
        return inf.list(namespace, reqs)

    def encoded(self, resource: Resource, listing: Listing, encode: Callable[[list[dict[str, Any]]], bytes]) -> bytes:
        return self.informer(resource).encoded(listing, encode)

    def observe(self, method: str, path: str, result: Any) -> None:
        """Read-your-writes: called by Kube after each successful write it made."""
        parts = path.split("?", 1)[0].split("/")
        # ['', 'apis', group, version, 'namespaces', ns, plural, name?, sub?]
        if len(parts) < 7 or parts[1] != "apis" or parts[4] != "namespaces" or not isinstance(result, dict):
            return
        inf = self._informers.get((parts[2], parts[3], parts[6]))
        if inf is None:
            return
        name = parts[7] if len(parts) > 7 else None
        sub = parts[8] if len(parts) > 8 else None
        if method == "DELETE":
            if name and not sub:
                inf.observe_delete(result, (parts[5], name))
            return
        if sub not in (None, "status") or result.get("kind") != inf.resource.kind:
            return
        inf.upsert(result)

    def stop(self) -> None:
        for inf in list(self._informers.values()):
            inf.stop()

    def stale_warning(self, listing: Listing) -> dict[str, str]:
        if listing.stale_for is None:
            return {}
        return {
            "Warning": f'110 k3svirt-gateway "Response is Stale: API server unreachable for '
            f'{listing.stale_for:.0f}s; served from the gateway cache"'
        }
