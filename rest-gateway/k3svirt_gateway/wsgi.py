"""Production entry points.

    gunicorn 'k3svirt_gateway.wsgi:app'        (any gunicorn options)
    k3svirt-gateway [--bind 0.0.0.0:8080] [--workers 1] [--threads 4]

Defaults suit a small box: one worker process (~46 MiB RSS with 200 VMs cached, see
bench/bench_gateway.py), four threads (the work is I/O to the API server). Environment: K3SVIRT_BIND, K3SVIRT_WORKERS,
K3SVIRT_THREADS, K3SVIRT_TIMEOUT, K3SVIRT_ACCESS_LOG, K3SVIRT_LOG_LEVEL, read with every other gateway setting in
k3svirt_gateway.config (once). HTTPS: set
K3SVIRT_GATEWAY_TLS_CERT and K3SVIRT_GATEWAY_TLS_KEY to PEM files (certificate chain, private key);
with plain gunicorn pass --certfile/--keyfile instead, and `-c python:k3svirt_gateway.gunicorn_hooks`
(a 413 answer closes its connection and says so).
"""

from __future__ import annotations

import argparse
import logging
import ssl
import sys
from typing import Any

from . import config
from .app import create_app
from .gunicorn_hooks import make_pre_request

SETTINGS = config.settings()
logging.basicConfig(level=SETTINGS["LOG_LEVEL"], format="%(asctime)s %(levelname)s %(name)s %(message)s")

app = create_app()


def tls_files(settings: dict[str, Any]) -> tuple[str, str] | None:
    """(certfile, keyfile) when HTTPS is configured, None for plain HTTP. ValueError when only one is
    set or the pair does not load: the gateway must not fall back to HTTP silently."""
    cert, key = settings.get("TLS_CERT"), settings.get("TLS_KEY")
    if not cert and not key:
        return None
    if not cert or not key:
        raise ValueError("set both K3SVIRT_GATEWAY_TLS_CERT and K3SVIRT_GATEWAY_TLS_KEY (PEM paths), or neither")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"TLS certificate {cert} / key {key} do not load: {exc}") from exc
    return cert, key


def main(argv: list[str] | None = None) -> int:
    from gunicorn.app.base import BaseApplication

    p = argparse.ArgumentParser(prog="k3svirt-gateway", description="Run the k3svirt REST gateway under gunicorn")
    p.add_argument("--bind", default=SETTINGS["BIND"])
    p.add_argument("--workers", type=int, default=SETTINGS["WORKERS"])
    p.add_argument("--threads", type=int, default=SETTINGS["THREADS"])
    p.add_argument("--timeout", type=int, default=SETTINGS["TIMEOUT"])
    p.add_argument("--access-log", action="store_true", default=bool(SETTINGS["ACCESS_LOG"]))
    args = p.parse_args(argv)
    try:
        tls = tls_files(SETTINGS)
    except ValueError as exc:
        p.error(str(exc))

    options: dict[str, Any] = {
        "bind": args.bind,
        "workers": args.workers,
        "threads": args.threads,
        "worker_class": "gthread",
        "timeout": args.timeout,
        "graceful_timeout": 10,
        "keepalive": 5,
        # gunicorn's maximum (default 4094): a 1024-character labelSelector of non-ASCII text, percent-
        # encoded, is longer than the default and was answered with an undocumented 414.
        "limit_request_line": 8190,
        "max_requests": 0,
        "accesslog": "-" if args.access_log else None,
        "errorlog": "-",
        "loglevel": "info",
        "proc_name": "k3svirt-gateway",
        # a body the app will not read closes its connection, and the 413 says so (gunicorn_hooks.py)
        "pre_request": make_pre_request(int(app.config["MAX_CONTENT_LENGTH"])),
    }
    if tls is not None:
        options["certfile"], options["keyfile"] = tls

    class Gateway(BaseApplication):
        def load_config(self) -> None:
            for k, v in options.items():
                if v is not None:
                    self.cfg.set(k, v)

        def load(self) -> Any:
            return app

    Gateway().run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
