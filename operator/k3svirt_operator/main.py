"""Entry point: `k3svirt-operator` runs the node operator standalone (no peering between nodes)."""

from __future__ import annotations

import logging
import sys

# kopf imports the `kubernetes` client whenever it is installed (for optional type checks), which
# costs ~28 MiB; the operator never uses it (k3svirt_common.kube is its client), so keep it out of this process.
sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]

import kopf  # noqa: E402

from . import handlers, shutdown  # noqa: E402,F401  (registers the handlers)


def _limit_malloc_arenas(count: int = 2) -> None:
    """glibc gives each thread its own malloc arena; a few threads then hold tens of MiB they never
    return. Two arenas are plenty for one event loop and a handful of worker threads."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-8, count)  # M_ARENA_MAX
    except OSError:
        pass  # not glibc (e.g. musl): nothing to tune


def main() -> None:
    _limit_malloc_arenas()
    level = handlers.SETTINGS.log_level
    kopf.configure(verbose=False, log_format=kopf.LogFormat.JSON)
    logging.getLogger().setLevel(level)
    logging.getLogger("kopf").setLevel(max(logging.WARNING, logging.getLevelName(level)))
    kopf.run(
        standalone=True,
        clusterwide=True,
        liveness_endpoint=handlers.SETTINGS.liveness_endpoint,
        stop_flag=shutdown.KOPF_STOP,
    )


if __name__ == "__main__":
    main()
