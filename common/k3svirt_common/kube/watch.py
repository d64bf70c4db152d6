"""Watches: one watch request (`Watch`) and list-then-watch for as long as wanted (`ListWatch`).

* Bookmarks (allowWatchBookmarks) keep the resourceVersion fresh while nothing changes, so a
  reconnect resumes where the last watch stopped instead of relisting.
* 410 Gone / Expired - an HTTP status at the start or an ERROR event later - raises ApiError(410)
  from `Watch`; `ListWatch` answers it with a relist.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .client import Client
from .errors import ApiError

SYNC = "SYNC"  # ListWatch's event for a complete (re)list: object = {"items": [...], "metadata": {...}}


@dataclass(frozen=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED, BOOKMARK (Watch) or SYNC (ListWatch)
    object: dict[str, Any]


class Watch:
    """One watch request, iterated event by event; ends when the server ends it (timeoutSeconds).
    interrupt() may be called from any thread; close() (or leaving the with block) by the iterating one."""

    def __init__(
        self,
        client: Client,
        path: str,
        *,
        resource_version: str = "",
        timeout_seconds: int = 240,
        bookmarks: bool = True,
        query: Mapping[str, Any] | None = None,
    ) -> None:
        self.resource_version = resource_version
        params = {
            **(query or {}),
            "watch": "true",
            "resourceVersion": resource_version or None,
            "allowWatchBookmarks": bookmarks or None,
            "timeoutSeconds": timeout_seconds,
        }
        # The server ends the watch after timeoutSeconds: read a little longer than that before giving up.
        self._stream = client.stream(path, query=params, timeout=timeout_seconds + 30)

    def __iter__(self) -> Iterator[WatchEvent]:
        for line in self._stream.lines():
            if not line.strip():
                continue
            try:
                ev = json.loads(line)
                kind, obj = ev["type"], ev.get("object") or {}
            except (ValueError, KeyError, TypeError) as exc:
                raise ApiError.no_answer("StreamBroken", f"undecodable watch event: {line[:200]!r}") from exc
            if kind == "ERROR":
                raise ApiError.from_status(int(obj.get("code") or 500), obj)
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            if rv:
                self.resource_version = rv
            yield WatchEvent(kind, obj)

    def interrupt(self) -> None:
        """Thread-safe: the iteration ends soon after."""
        self._stream.interrupt()

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class ListWatch:
    """List `path`, then watch it from the list's resourceVersion. `events()` yields one SYNC event
    per (re)list, then the watch events; it returns when the server ends a watch (iterate again: the
    next watch resumes from `resource_version`), relists by itself on 410, and raises ApiError for
    anything else (the caller decides how long to back off; the next `events()` resumes or, after a
    410, relists). restart() and close() may be called from any thread."""

    def __init__(
        self,
        client: Client,
        path: str,
        *,
        timeout_seconds: int = 240,
        page: int = 500,
        list_timeout: float = 60.0,
        on_connect: Callable[[], None] | None = None,
        query: Mapping[str, Any] | None = None,
    ) -> None:
        self.client = client
        self.path = path
        self.query = dict(query or {})  # e.g. fieldSelector / labelSelector, for the list and the watch
        self.timeout_seconds = timeout_seconds
        self.page = page
        self.list_timeout = list_timeout
        self.on_connect = on_connect
        self.resource_version = ""
        self.relists = 0
        self._need_list = True
        self._next_rv: str | None = None
        self._watch: Watch | None = None
        self._interrupted = False
        self.closed = False

    def restart(self, resource_version: str | None = None) -> None:
        """Drop the current watch; the next one starts from `resource_version` (if given), e.g. one
        the server no longer has: that is the 410 -> relist path."""
        self._next_rv = resource_version
        self._interrupt()

    def close(self) -> None:
        self.closed = True
        self._interrupt()

    def _interrupt(self) -> None:
        self._interrupted = True
        w = self._watch
        if w is not None:
            w.interrupt()

    def events(self) -> Iterator[WatchEvent]:
        while not self.closed:
            if self._need_list:
                items, rv = self.client.list_all(self.path, query=self.query, page=self.page,
                                                 timeout=self.list_timeout)  # fmt: skip
                self.resource_version, self._need_list = rv, False
                self.relists += 1
                yield WatchEvent(SYNC, {"items": items, "metadata": {"resourceVersion": rv}})
            self._interrupted = False
            rv, self._next_rv = self._next_rv or self.resource_version, None
            # Jitter: many watchers started together must not all reconnect together.
            timeout = self.timeout_seconds + random.randint(0, max(1, self.timeout_seconds // 4))
            try:
                with Watch(self.client, self.path, resource_version=rv, timeout_seconds=timeout, query=self.query) as w:
                    self._watch = w
                    if self.closed:
                        return
                    if self.on_connect is not None:
                        self.on_connect()
                    for ev in w:
                        self.resource_version = w.resource_version
                        yield ev
            except ApiError as exc:
                if exc.expired:
                    self._need_list = True
                    continue
                if not (self._interrupted and not exc.answered):
                    raise
            finally:
                self._watch = None
            if not self._interrupted:
                return  # the server ended the watch
