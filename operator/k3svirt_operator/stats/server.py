"""Tiny stdlib HTTP server: /metrics (Prometheus text), /stats/<namespace>/<name> (JSON), /healthz.

    server = MetricsServer(collector, port=9470, host=node_ip)   # Settings.metrics_port / metrics_addr
    server.start()                             # serves from a daemon thread
    server.stats_url("default", "vm1", host=node_ip)   # what goes into status.monitoring.endpoint
    server.stop()

Handlers only read the collector's immutable snapshot: a request never calls libvirt.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from .collector import StatsCollector
from .metrics import make_registry

log = logging.getLogger(__name__)

DEFAULT_PORT = 9470


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("http " + format, *args)

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, code: int, obj: Any) -> None:
        self._send(code, json.dumps(obj, separators=(",", ":")).encode(), "application/json")

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        srv = self.server
        path = urlsplit(self.path).path.rstrip("/") or "/"
        try:
            if path == "/metrics":
                self._send(200, generate_latest(srv.registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                c = srv.collector
                ok = c.healthy()
                age = c.last_success_age()
                self._json(
                    200 if ok else 503,
                    {
                        "status": "ok" if ok else "unhealthy",
                        "node": c.node_name,
                        "intervalSeconds": c.interval,
                        "statsDegraded": c.pace.degraded,
                        "lastSampleAgeSeconds": None if age is None else round(age, 3),
                        "rounds": c.rounds_total,
                        "errors": c.errors_total,
                        "lastError": c.last_error,
                    },
                )
            elif path == "/stats":
                c = srv.collector
                snap = c.snapshot()
                self._json(
                    200, {"node": c.node_name, "items": [s.to_dict(c.node_name) for _, s in sorted(snap.vms.items())]}
                )
            elif path.startswith("/stats/"):
                parts = [unquote(p) for p in path[len("/stats/") :].split("/")]
                if len(parts) != 2 or not all(parts):
                    self._json(404, {"error": "NotFound", "message": "use /stats/<namespace>/<name>"})
                    return
                ns, name = parts
                stats = srv.collector.get(ns, name)
                if stats is None:
                    self._json(
                        404,
                        {
                            "error": "NotFound",
                            "message": f"no current stats for VM {ns}/{name} on node "
                            f"{srv.collector.node_name} (unknown, not running or not sampled yet)",
                            "namespace": ns,
                            "name": name,
                            "node": srv.collector.node_name,
                        },
                    )
                else:
                    self._json(200, stats.to_dict(srv.collector.node_name))
            else:
                self._json(404, {"error": "NotFound", "message": "endpoints: /metrics /stats/<ns>/<name> /healthz"})
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception:
            log.exception("stats http handler failed", extra={"path": path})
            self._json(500, {"error": "InternalError"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], collector: StatsCollector, extra: Sequence[Collector]) -> None:
        self.collector = collector
        self.registry = make_registry(collector, extra)
        super().__init__(addr, _Handler)


class MetricsServer:
    """HTTP endpoint over a StatsCollector. ``port=0`` picks a free port (tests); see ``.port``.
    ``host``: the address to listen on (the operator passes its node address; default: all).
    ``extra``: more Prometheus collectors served on /metrics (the operator's start queue)."""

    def __init__(self, collector: StatsCollector, *, port: int | None = None, host: str | None = None,
                 extra: Sequence[Collector] = ()) -> None:  # fmt: skip
        self.collector = collector
        self.extra = tuple(extra)
        self.host = host if host is not None else ""
        self._requested_port = DEFAULT_PORT if port is None else port
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._httpd is None:
            return self._requested_port
        return self._httpd.server_address[1]

    def start(self) -> None:
        if self._httpd is not None:
            return
        self._httpd = _Server((self.host, self._requested_port), self.collector, self.extra)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="k3svirt-metrics", daemon=True)
        self._thread.start()
        log.info("metrics server listening", extra={"host": self.host, "port": self.port})

    def register(self, collector: Any) -> None:
        """Adds a prometheus_client collector to /metrics (e.g. the usage counters); after start()."""
        assert self._httpd is not None, "start() the server first"
        self._httpd.registry.register(collector)

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread:
            self._thread.join(5)
        self._httpd = None
        self._thread = None

    def base_url(self, host: str) -> str:
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # IPv6 literal
        return f"http://{host}:{self.port}"

    def stats_url(self, namespace: str, name: str, *, host: str) -> str:
        """URL of the per-VM JSON (for status.monitoring.endpoint); ``host``: node/pod IP."""
        return f"{self.base_url(host)}/stats/{quote(namespace, safe='')}/{quote(name, safe='')}"
