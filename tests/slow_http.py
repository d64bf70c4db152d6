"""HTTP servers on loopback for download tests: ``serving`` runs any handler class; ``slow_server``
serves a body that trickles in for ever (bounded), or headers and then silence, stopping by itself
after ``seconds``."""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
from collections.abc import Iterator


def _handler(declared: int, seconds: float, stall: bool, started: threading.Event) -> type:
    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Length", str(declared))
            self.end_headers()
            self.wfile.flush()
            started.set()
            deadline = time.monotonic() + seconds
            try:
                while time.monotonic() < deadline:
                    if not stall:
                        self.wfile.write(b"\0" * 65536)
                    time.sleep(0.2)
            except OSError:
                pass

        def log_message(self, *_: object) -> None:
            pass

    return Slow


@contextlib.contextmanager
def serving(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """The base URL (http://127.0.0.1:PORT) of ``handler`` served on its own thread until the block ends."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


@contextlib.contextmanager
def slow_server(
    declared: int = 1 << 30, seconds: float = 60, stall: bool = False
) -> Iterator[tuple[str, threading.Event]]:
    """(base URL, event set once a download began). Trickles 64 KiB every 0.2 s, or with ``stall``
    sends the headers and then nothing (the reader blocks in recv())."""
    started = threading.Event()
    with serving(_handler(declared, seconds, stall, started)) as url:
        yield url, started
