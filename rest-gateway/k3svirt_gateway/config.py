"""Gateway configuration: every K3SVIRT_* variable the gateway uses, read from the environment once per
process (`settings()`), overridable by create_app(overrides). No other module of the gateway reads the
environment (the Kubernetes client layer reads KUBECONFIG/KUBERNETES_SERVICE_* as every client does)."""

from __future__ import annotations

import functools
import os
from typing import Any

DEFAULTS: dict[str, Any] = {
    # Where API keys live: a file with lines "<name>:<role>:sha256:<hex>" and/or a Secret "namespace/name".
    "API_KEYS_FILE": None,
    "API_KEYS_SECRET": None,
    # Kubernetes access: KUBECONFIG path, else in-cluster service account, else ~/.kube/config.
    "KUBECONFIG": None,
    "KUBE_CONTEXT": None,
    "DEFAULT_NAMESPACE": "default",
    # Timeouts (seconds) for calls to the API server and to a VM's monitoring endpoint.
    "KUBE_TIMEOUT": 10.0,
    "KUBE_CONNECT_TIMEOUT": 3.0,
    "STATS_TIMEOUT": 2.0,
    # Request bodies above this are refused with 413.
    "MAX_CONTENT_LENGTH": 1024 * 1024,
    # Seconds an API-key Secret is cached before it is read again.
    "API_KEYS_SECRET_TTL": 30.0,
    # Seconds beyond the TTL the last good copy is still used while the Secret cannot be read; then 503.
    "API_KEYS_SECRET_MAX_STALE": 30.0,
    # Watch-backed cache for GET /vms and GET /templates ("off" lists directly every time), and how
    # long (seconds) it may keep answering, with a Warning header, after its watch lost the API server.
    "LIST_CACHE": "on",
    # HTTPS: PEM paths of the certificate (chain) and its private key; both or neither (plain HTTP).
    "TLS_CERT": None,
    "TLS_KEY": None,
    # One structured log line per write (k3svirt_gateway.audit): "on" or "off".
    "AUDIT_LOG": "on",
    # Extra namespaces (comma-separated) the gateway never deletes, besides the system ones.
    "PROTECTED_NAMESPACES": "",
    "LIST_CACHE_MAX_STALE": 30.0,
    # Signs list `continue` tokens (so a forged one never reaches the API server). Unset: a random key
    # per process; set the same value on every replica/worker that one client may page through.
    "CONTINUE_KEY": None,
    # Serial consoles (routes/console.py): the ticket key shared with the operators (a file: the mounted
    # Secret k3svirt-console-key; unset: the console route answers 503), and how many sessions one
    # gateway process holds at once (each takes a thread of the worker: keep it below K3SVIRT_THREADS).
    "CONSOLE_KEY_FILE": None,
    "CONSOLE_MAX_SESSIONS": 2,
    # The process (`k3svirt-gateway`, wsgi.py): log level, and gunicorn's bind address, worker processes,
    # threads per worker, worker timeout (seconds) and its access log (any non-empty value: on).
    "LOG_LEVEL": "INFO",
    "BIND": "0.0.0.0:8080",
    "WORKERS": 1,
    "THREADS": 4,
    "TIMEOUT": 60,
    "ACCESS_LOG": None,
}

ENV_MAP = {
    "API_KEYS_FILE": "K3SVIRT_API_KEYS_FILE",
    "API_KEYS_SECRET": "K3SVIRT_API_KEYS_SECRET",
    "KUBECONFIG": "KUBECONFIG",
    "KUBE_CONTEXT": "K3SVIRT_KUBE_CONTEXT",
    "DEFAULT_NAMESPACE": "K3SVIRT_DEFAULT_NAMESPACE",
    "KUBE_TIMEOUT": "K3SVIRT_KUBE_TIMEOUT",
    "KUBE_CONNECT_TIMEOUT": "K3SVIRT_KUBE_CONNECT_TIMEOUT",
    "STATS_TIMEOUT": "K3SVIRT_STATS_TIMEOUT",
    "MAX_CONTENT_LENGTH": "K3SVIRT_MAX_BODY_BYTES",
    "API_KEYS_SECRET_TTL": "K3SVIRT_API_KEYS_SECRET_TTL",
    "API_KEYS_SECRET_MAX_STALE": "K3SVIRT_API_KEYS_SECRET_MAX_STALE",
    "LIST_CACHE": "K3SVIRT_LIST_CACHE",
    "PROTECTED_NAMESPACES": "K3SVIRT_PROTECTED_NAMESPACES",
    "AUDIT_LOG": "K3SVIRT_AUDIT_LOG",
    "TLS_CERT": "K3SVIRT_GATEWAY_TLS_CERT",
    "TLS_KEY": "K3SVIRT_GATEWAY_TLS_KEY",
    "LIST_CACHE_MAX_STALE": "K3SVIRT_LIST_CACHE_MAX_STALE",
    "CONTINUE_KEY": "K3SVIRT_CONTINUE_KEY",
    "CONSOLE_KEY_FILE": "K3SVIRT_CONSOLE_KEY_FILE",
    "CONSOLE_MAX_SESSIONS": "K3SVIRT_CONSOLE_MAX_SESSIONS",
    "LOG_LEVEL": "K3SVIRT_LOG_LEVEL",
    "BIND": "K3SVIRT_BIND",
    "WORKERS": "K3SVIRT_WORKERS",
    "THREADS": "K3SVIRT_THREADS",
    "TIMEOUT": "K3SVIRT_TIMEOUT",
    "ACCESS_LOG": "K3SVIRT_ACCESS_LOG",
}


def from_env(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Return the gateway settings: DEFAULTS overlaid with the K3SVIRT_* environment variables."""
    env = os.environ if environ is None else environ
    cfg = dict(DEFAULTS)
    for key, var in ENV_MAP.items():
        raw = env.get(var)
        if raw is None or raw == "":
            continue
        default = DEFAULTS[key]
        if isinstance(default, float):
            cfg[key] = float(raw)
        elif isinstance(default, int):
            cfg[key] = int(raw)
        else:
            cfg[key] = raw
    return cfg


@functools.cache
def _read_once() -> tuple[tuple[str, Any], ...]:
    return tuple(from_env().items())


def settings() -> dict[str, Any]:
    """The process's settings: the environment is read on the first call only (a fresh copy each call)."""
    return dict(_read_once())
