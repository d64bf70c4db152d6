"""Benchmarks only (bench/bench_opmem.py --tracemalloc): with PYTHONTRACEMALLOC set, a SIGUSR2 writes the
process's top allocation sites (by file and line, and by file) to /tmp/tracemalloc-<pid>-<n>.txt, and the
snapshot itself to /tmp/tracemalloc-<pid>-<n>.snap (tracemalloc.Snapshot.load + compare_to: what grew)."""

from __future__ import annotations

import os
import signal
import tracemalloc

_COUNT = [0]


def _dump(_sig: int, _frame: object) -> None:
    snap = tracemalloc.take_snapshot().filter_traces((tracemalloc.Filter(False, tracemalloc.__file__),))
    _COUNT[0] += 1
    base = f"/tmp/tracemalloc-{os.getpid()}-{_COUNT[0]}"
    snap.dump(base + ".snap")
    total = sum(s.size for s in snap.statistics("filename"))
    with open(base + ".txt", "w", encoding="utf-8") as out:
        out.write(f"traced total {total / 2**20:.1f} MiB\n\nby file:\n")
        for stat in snap.statistics("filename")[:40]:
            out.write(f"{stat.size / 1024:10.0f} KiB {stat.count:8d} {stat.traceback[0].filename}\n")
        out.write("\nby line:\n")
        for stat in snap.statistics("lineno")[:60]:
            frame = stat.traceback[0]
            out.write(f"{stat.size / 1024:10.0f} KiB {stat.count:8d} {frame.filename}:{frame.lineno}\n")


if os.environ.get("PYTHONTRACEMALLOC"):
    signal.signal(signal.SIGUSR2, _dump)
