"""Flask application factory."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask

from . import audit, auth, config
from .cache import Cache
from .errors import register_error_handlers
from .k8s import Kube

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"


def create_app(overrides: dict[str, Any] | None = None) -> Flask:
    """Build the gateway. Settings: environment (see config.py) overlaid with `overrides`.

    Building the app never contacts the API server (so /openapi.json can be produced offline);
    the Kubernetes client is created on first use.
    """
    settings = config.from_env()
    settings.update(overrides or {})

    app = Flask(__name__)
    app.config.update(settings)
    app.config["MAX_CONTENT_LENGTH"] = int(settings["MAX_CONTENT_LENGTH"])
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json.compact = True  # type: ignore[attr-defined]

    kube = Kube(settings)
    app.extensions["k3svirt.kube"] = kube
    # List cache: informers are created and started by the first list request, not here.
    app.extensions["k3svirt.cache"] = Cache(kube, settings)
    store = auth.KeyStore(settings, kube)
    app.extensions["k3svirt.keys"] = store
    if not store.configured:
        log.warning(
            "no API keys configured (K3SVIRT_API_KEYS_FILE / K3SVIRT_API_KEYS_SECRET): "
            "every authenticated route answers 401"
        )

    register_error_handlers(app)
    app.before_request(auth.check_request)
    audit.install(app)

    from .routes import meta, monitoring, namespaces, pci, pods, templates, vms, workloads

    app.register_blueprint(meta.bp)
    for mod in (vms, templates, pci, workloads, pods, monitoring, namespaces):
        for bp in mod.blueprints():
            app.register_blueprint(bp, url_prefix=API_PREFIX)
    return app
