"""Flask application factory."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, current_app, request

from . import audit, auth, config, conventions
from .cache import Cache
from .errors import Problem, register_error_handlers
from .k8s import Kube

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"


def create_app(overrides: dict[str, Any] | None = None) -> Flask:
    """Build the gateway. Settings: environment (see config.py) overlaid with `overrides`.

    Building the app never contacts the API server (so /openapi.json can be produced offline);
    the Kubernetes client is created on first use.
    """
    settings = config.settings()
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

    app.extensions["k3svirt.continue_key"] = conventions.continue_key(settings.get("CONTINUE_KEY"))
    register_error_handlers(app)
    app.before_request(auth.check_request)
    app.before_request(_writes_take_if_match)
    app.after_request(conventions.add_etag)
    audit.install(app)

    from .routes import console, meta, monitoring, namespaces, pci, pods, snapshots, templates, usage, vms, workloads

    app.register_blueprint(meta.bp)
    for mod in (vms, console, snapshots, templates, pci, workloads, pods, monitoring, namespaces, usage):
        for bp in mod.blueprints():
            app.register_blueprint(bp, url_prefix=API_PREFIX)
    return app


def _writes_take_if_match() -> None:
    """before_request: the conditional routes honour If-Match (400 when malformed); the others refuse
    it (a precondition is never silently ignored)."""
    if request.endpoint is None or request.method in ("GET", "HEAD", "OPTIONS"):
        return
    ops = getattr(current_app.view_functions.get(request.endpoint), "k3s_ops", {})
    if (ops.get(request.method) or {}).get("conditional"):
        conventions.parse_if_match()
    elif "If-Match" in request.headers:
        raise Problem(
            400,
            f"If-Match is not supported on {request.method} {request.path}",
            errors=[{"field": "If-Match", "message": "not supported on this route"}],
        )
