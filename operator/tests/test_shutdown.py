"""Blocking work stops when the operator stops: child processes are killed, downloads abort, and
their partial files are removed (so SIGTERM ends the operator within seconds, whatever it does)."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from k3svirt_operator import image_cache, shutdown
from k3svirt_operator.image_fetch import FetchPolicy

from tests.slow_http import slow_server

LOOPBACK_OK = FetchPolicy(allow_loopback=True)  # the slow servers run on 127.0.0.1


@pytest.fixture(autouse=True)
def fresh_stop_signal(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
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


@pytest.fixture
def trickle_url() -> Iterator[str]:
    with slow_server() as (base, _):
        yield base + "/disk.img"


def test_a_running_download_is_aborted_and_its_partial_file_removed(tmp_path: Path, trickle_url: str):
    stop_after(1.0)
    t0 = time.monotonic()
    with pytest.raises(shutdown.Stopped):
        image_cache.ensure_image(trickle_url, root=tmp_path, policy=LOOPBACK_OK)
    assert time.monotonic() - t0 < 4
    assert list((tmp_path / "images").glob("*.part")) == [] and list((tmp_path / "images").glob("*.img")) == []


def test_a_download_blocked_in_recv_is_woken_by_the_stop(tmp_path: Path):
    with slow_server(declared=1 << 20, seconds=40, stall=True) as (base, _):
        stop_after(1.0)
        t0 = time.monotonic()
        with pytest.raises(shutdown.Stopped):
            image_cache.ensure_image(base + "/x.img", root=tmp_path, policy=LOOPBACK_OK)
        assert time.monotonic() - t0 < 4, "the stop did not wake the blocked read"
        assert list((tmp_path / "images").glob("*.part")) == []
