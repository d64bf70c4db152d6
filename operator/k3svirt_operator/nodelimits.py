"""Kernel limits a node needs for many VMs, raised once at operator start.

fs.aio-max-nr: every disk QEMU opens with io=native (the default for cache none) sets up a Linux AIO
context; the kernel's default of 65536 events is used up by about 60 such disks, after which every
further start fails with "failed to create linux AIO context: Resource temporarily unavailable"
(seen at 64 VMs in tests/robustness/test_load.py). The operator raises it, never lowers it;
K3SVIRT_AIO_MAX_NR=0 leaves it alone.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

AIO_MAX_NR = Path("/proc/sys/fs/aio-max-nr")


def raise_aio_max_nr(wanted: int, path: Path = AIO_MAX_NR) -> int | None:
    """Raise the limit to `wanted` if it is lower; the limit in force afterwards (None: unknown)."""
    try:
        current = int(path.read_text())
    except (OSError, ValueError):
        return None
    if wanted <= current:
        return current
    try:
        path.write_text(str(wanted))
    except OSError as exc:
        log.warning("cannot raise fs.aio-max-nr", extra={"current": current, "wanted": wanted, "error": str(exc)})
        return current
    log.info("raised fs.aio-max-nr", extra={"from": current, "to": wanted})
    return wanted
