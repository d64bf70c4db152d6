"""The one polling helper of the test suites (e2e, node, gateway, common): ask ``check`` until it
answers something truthy or ``timeout`` seconds pass. Timed waits only, never timed assertions about
speed (those belong in bench/)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll(check: Callable[[], T], timeout: float, interval: float = 0.2) -> T:
    """``check``'s first truthy answer, or its last (falsy) one once ``timeout`` has passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def wait_until(check: Callable[[], T], timeout: float, message: str, interval: float = 0.2) -> T:
    """``check``'s first truthy answer; AssertionError(``message``, with the last answer) on timeout."""
    value = poll(check, timeout, interval)
    if not value:
        raise AssertionError(f"{message} (timed out after {timeout:g} s; last: {value!r})")
    return value
