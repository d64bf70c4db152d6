"""Which allocator the operator's Python objects live in (main.py runs this first)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping


def allocator_env(environ: Mapping[str, str]) -> dict[str, str] | None:
    """The environment to run the operator again with glibc's malloc for Python objects, or None when
    PYTHONMALLOC is already chosen (by us on the first start, or by whoever starts the operator).

    Why: pymalloc keeps a 1 MiB arena as long as one object in it lives, so the few objects that
    outlive a 100-VM burst (kopf's bodies, our state) pin tens of MiB of arenas that malloc_trim
    cannot reach (bench/README.md, "Session 8"). With glibc's malloc the periodic trim
    (handlers._trim_heap) hands the freed pages back."""
    if "PYTHONMALLOC" in environ:
        return None
    return {**environ, "PYTHONMALLOC": "malloc"}


def reexec_with_malloc() -> None:
    """PYTHONMALLOC is read only when the interpreter starts: re-run this same command line once
    with it set (same pid; nothing has started yet). The image sets it, so it starts only once."""
    env = allocator_env(os.environ)
    if env is None or not sys.orig_argv:
        return
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
