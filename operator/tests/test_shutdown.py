"""Blocking work stops when the operator stops: child processes are killed, downloads abort, and
their partial files are removed (so SIGTERM ends the operator within seconds, whatever it does)."""

from __future__ import annotations

import http.server
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from k3svirt_operator import image_cache, shutdown


@pytest.fixture(autouse=True)
def fresh_stop_signal(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("K3SVIRT_IMAGE_ALLOW_LOOPBACK", "true")  # the slow servers run on 127.0.0.1
    shutdown.STOP.clear()
    shutdown.KOPF_STOP.clear()
    yield
    shutdown.STOP.clear()
    shutdown.KOPF_STOP.clear()


def stop_after(seconds: float) -> threading.Timer:
    t = threading.Timer(seconds, shutdown.request_stop)
    t.start()
    return t


def test_run_returns_like_subprocess_run():
    proc = shutdown.run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=10)
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "out\n", "err\n")


def test_run_times_out_and_kills_the_child():
    t0 = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        shutdown.run(["sleep", "30"], timeout=0.5)
    assert time.monotonic() - t0 < 5


def test_run_is_cancelled_by_a_stop_and_kills_the_child(tmp_path: Path):
    pidfile = tmp_path / "pid"
    stop_after(0.5)
    t0 = time.monotonic()
    with pytest.raises(shutdown.Stopped):
        shutdown.run(["sh", "-c", f"echo $$ > {pidfile}; exec sleep 30"], timeout=60)
    assert time.monotonic() - t0 < 3
    pid = int(pidfile.read_text())
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()


def test_nothing_new_starts_once_stopping():
    shutdown.request_stop()
    with pytest.raises(shutdown.Stopped):
        shutdown.run(["true"], timeout=5)


class TrickleHandler(http.server.BaseHTTPRequestHandler):
    """Announces 1 GiB and sends 64 KiB every 0.2 s: a download that would take hours."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(1 << 30))
        self.end_headers()
        deadline = time.monotonic() + 60  # bounded: the server stops by itself
        try:
            while time.monotonic() < deadline:
                self.wfile.write(b"\0" * 65536)
                time.sleep(0.2)
        except OSError:
            pass

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def trickle_url() -> Iterator[str]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), TrickleHandler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/disk.img"
    srv.shutdown()
    srv.server_close()


class StallHandler(TrickleHandler):
    """Sends the headers, then nothing: the reader blocks in recv()."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(1 << 20))
        self.end_headers()
        self.wfile.flush()
        time.sleep(40)


def test_a_running_download_is_aborted_and_its_partial_file_removed(tmp_path: Path, trickle_url: str):
    stop_after(1.0)
    t0 = time.monotonic()
    with pytest.raises(shutdown.Stopped):
        image_cache.ensure_image(trickle_url, root=tmp_path)
    assert time.monotonic() - t0 < 4
    assert list((tmp_path / "images").glob("*.part")) == [] and list((tmp_path / "images").glob("*.img")) == []


def test_a_download_blocked_in_recv_is_woken_by_the_stop(tmp_path: Path):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StallHandler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        stop_after(1.0)
        t0 = time.monotonic()
        with pytest.raises(shutdown.Stopped):
            image_cache.ensure_image(f"http://127.0.0.1:{srv.server_address[1]}/x.img", root=tmp_path)
        assert time.monotonic() - t0 < 4, "the stop did not wake the blocked read"
        assert list((tmp_path / "images").glob("*.part")) == []
    finally:
        srv.shutdown()
        srv.server_close()
