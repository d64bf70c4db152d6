"""What the operator's kopf modules share (handlers.py, tuning_handlers.py), so neither imports the other:
the settings (read once, at import), this node's labels, and the Runtime once start-up has built it."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from k3svirt_common import names

from .config import Settings
from .runtime import Runtime

SETTINGS = Settings.from_env()
# This node's labels for spec.nodeSelector: K3SVIRT_NODE_LABELS plus the Node object's, refreshed in place.
NODE_LABELS: dict[str, str] = dict(SETTINGS.node_labels)
LABELS_READ = threading.Event()  # set once the Node's labels were read (NodeTuning waits for it)
RT: Runtime | None = None  # set by handlers.startup


def rt() -> Runtime:
    assert RT is not None, "operator not started"
    return RT


def get_template(namespace: str, name: str) -> Mapping[str, Any] | None:
    return rt().get_object(names.VMTEMPLATE_PLURAL, namespace, name)
