"""Stops are clean and wait: every process is gone when `stop` returns, no pid file of a live process
is dropped, and a start straight after a stop works. Run on private instances (own state directory and
ports) so the shared test bed keeps running."""

from __future__ import annotations

import os
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HARNESS = REPO / "tests/harness"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sh(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", *args], env=env, capture_output=True, text=True, timeout=timeout)


def pids_in(run_dir: Path) -> dict[str, int]:
    return {p.stem: int(p.read_text()) for p in run_dir.glob("*.pid")}


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def private_state(tmp_path: Path, testbed: dict[str, str]) -> dict[str, str]:
    state = tmp_path / "state"
    state.mkdir()
    # Share the build cache (the binaries), not the running state.
    cache = os.environ.get("K3SVIRT_CACHE") or str(Path.home() / ".cache/k3svirt")
    return {**os.environ, "K3SVIRT_STATE": str(state), "K3SVIRT_CACHE": cache}


def test_control_plane_stop_waits_and_restarts_at_once(private_state):
    env = {**private_state, "K3SVIRT_API_PORT": str(free_port())}
    cp = Path(env["K3SVIRT_STATE"]) / "controlplane"
    try:
        first = sh(env, str(HARNESS / "controlplane.sh"), "start")
        assert first.returncode == 0, first.stderr[-2000:]
        started = pids_in(cp)
        assert {"kine", "kube-apiserver", "kube-controller-manager"} <= set(started)
        stop = sh(env, str(HARNESS / "controlplane.sh"), "stop")
        assert stop.returncode == 0, stop.stderr[-2000:]
        assert [name for name, pid in started.items() if alive(pid)] == [], "stop returned before its processes exited"
        assert pids_in(cp) == {}
        again = sh(env, str(HARNESS / "controlplane.sh"), "start")  # straight after the stop
        assert again.returncode == 0, again.stderr[-2000:]
        assert sh(env, str(HARNESS / "controlplane.sh"), "status").stdout.startswith("api: ready")
    finally:
        sh(env, str(HARNESS / "controlplane.sh"), "stop")


def test_stack_stop_waits_for_operator_and_gateway(private_state, testbed):
    env = {
        **private_state,
        **testbed,
        "K3SVIRT_NODE_NAME": f"stack-{os.getpid()}",
        "K3SVIRT_GATEWAY_PORT": str(free_port()),
        "K3SVIRT_METRICS_PORT": str(free_port()),
    }
    run = Path(env["K3SVIRT_STATE"]) / "run"
    try:
        up = sh(env, str(HARNESS / "stack.sh"), "start")
        assert up.returncode == 0, up.stderr[-2000:]
        assert sh(env, str(HARNESS / "stack.sh"), "status").stdout.strip() == "running"
        started = pids_in(run)
        assert set(started) == {"operator", "gateway"}
        down = sh(env, str(HARNESS / "stack.sh"), "stop", timeout=60)
        assert down.returncode == 0, down.stderr[-2000:]
        assert "SIGKILL" not in down.stderr, f"a process ignored SIGTERM: {down.stderr}"
        assert [n for n, pid in started.items() if alive(pid)] == []
        assert sh(env, str(HARNESS / "stack.sh"), "status").stdout.strip() == "stopped"
        # the settings were remembered: a bare start brings back the same stack
        bare = {k: v for k, v in env.items() if k not in ("K3SVIRT_GATEWAY_PORT", "K3SVIRT_METRICS_PORT")}
        again = sh(bare, str(HARNESS / "stack.sh"), "start")
        assert again.returncode == 0, again.stderr[-2000:]
        port = env["K3SVIRT_GATEWAY_PORT"]
        assert f"K3SVIRT_GATEWAY_PORT={port}" in (run / "stack.env").read_text()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            assert r.status == 200
    finally:
        sh(env, str(HARNESS / "stack.sh"), "stop", timeout=60)
