"""Entry point: `k3svirt-operator` runs the node operator standalone (no peering between nodes)."""

from __future__ import annotations

import logging
import os

import kopf

from . import handlers  # noqa: F401  (registers the handlers)


def main() -> None:
    level = os.environ.get("K3SVIRT_LOG_LEVEL", "INFO").upper()
    kopf.configure(verbose=False, log_format=kopf.LogFormat.JSON)
    logging.getLogger().setLevel(level)
    logging.getLogger("kopf").setLevel(max(logging.WARNING, logging.getLevelName(level)))
    kopf.run(standalone=True, clusterwide=True, liveness_endpoint=os.environ.get("K3SVIRT_LIVENESS"))


if __name__ == "__main__":
    main()
