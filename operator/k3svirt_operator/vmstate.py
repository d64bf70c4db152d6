"""What the operator remembers of one VirtualMachine between reconcile passes.

One `VMState` per VM object, kept in kopf's per-object memo: it lives exactly as long as the object
(a VM deleted and created again under the same name gets a new one), so nothing is cleaned by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

MEMO_KEY = "vm"


@dataclass
class StartFailure:
    generation: int
    count: int
    not_before: float  # time.monotonic() before which no new start is tried
    message: str


@dataclass
class Stopping:
    since: float  # time.monotonic() of the ACPI shutdown request
    then_start: bool  # a restart: start again once it is off
    grace_seconds: float  # destroy when still running this long after the request


@dataclass
class VMState:
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # Spec generation and action annotation of the last event seen: only a change wakes the loop.
    seen: tuple[Any, Any] | None = None
    # The status this operator last wrote: the watch may lag behind our own writes.
    written: dict[str, Any] | None = None
    last_summary: float = float("-inf")  # time.monotonic() of the last status.monitoring refresh
    stopping: Stopping | None = None
    start_failure: StartFailure | None = None
    address_polls: int = 0  # quick re-checks made while waiting for a DHCP lease
    reserve_failures: int = 0  # reservations the API server refused in a row (back-off)
    pending_start: bool = False  # a restart's start waits for its (re-sized) reservation

    def view(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """A plain copy of the VM for one pass, with our last write laid over a status the watch
        has not brought back yet."""
        snapshot = copy.deepcopy(dict(body))
        if self.written is not None:
            snapshot["status"] = {**(snapshot.get("status") or {}), **self.written}
        return snapshot

    def changed(self, marker: tuple[Any, Any]) -> bool:
        """Records the marker of an event; True when it differs from the last one."""
        if self.seen == marker:
            return False
        self.seen = marker
        return True

    async def sleep(self, timeout: float) -> None:
        """Until an event wakes the loop or `timeout` seconds pass."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), timeout)

    def summary_due(self, every: float, shown: bool, have_figures: bool) -> bool:
        """Fresh figures are looked at every `every` seconds, and at once when they appear (whether they
        are written is stats.worth_writing's call)."""
        now = time.monotonic()
        if now - self.last_summary >= every or (have_figures and not shown):
            self.last_summary = now
            return True
        return False


def of(memo: Any) -> VMState:
    """The VM's state in kopf's per-object memo (created on first use)."""
    state = memo.get(MEMO_KEY)
    if state is None:
        state = memo[MEMO_KEY] = VMState()
    return state


class Loops:
    """The VM loops running on this node, by (namespace, name): libvirt events and reconnects wake
    them. A loop registers itself for as long as it runs."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._states: dict[tuple[str, str], VMState] = {}

    @contextlib.contextmanager
    def running(self, key: tuple[str, str], state: VMState) -> Iterator[None]:
        self._states[key] = state
        try:
            yield
        finally:
            if self._states.get(key) is state:
                del self._states[key]

    def __contains__(self, key: object) -> bool:
        """A loop runs for this VM: this node's operator owns it."""
        return key in self._states

    def poke_threadsafe(self, key: tuple[str, str]) -> None:
        self._loop.call_soon_threadsafe(self._poke, key)

    def poke_all_threadsafe(self) -> None:
        for key in list(self._states):
            self.poke_threadsafe(key)

    def _poke(self, key: tuple[str, str]) -> None:
        state = self._states.get(key)
        if state is not None:
            state.wake.set()
