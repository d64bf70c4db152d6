"""Start the production gateway (`k3svirt-gateway`, gunicorn) as a process, with its log in a file."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def gateway(
    env: dict[str, str],
    log: Path,
    *,
    scheme: str = "http",
    verify: str | bool = True,
    args: tuple[str, ...] = (),
    start_timeout: float = 60.0,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Yield (base URL, process) once /healthz answers; the process is stopped afterwards. `env` is laid
    over this process's environment (an empty value unsets a gateway setting)."""
    port = free_port()
    full_env = {**os.environ, "K3SVIRT_LOG_LEVEL": "WARNING", **env}
    exe = Path(sys.executable).with_name("k3svirt-gateway")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "k3svirt_gateway.wsgi"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [*cmd, "--bind", f"127.0.0.1:{port}", *args], env=full_env, stdout=fh, stderr=subprocess.STDOUT
        )
    url = f"{scheme}://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            try:
                if requests.get(url + "/healthz", timeout=1, verify=verify).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gateway did not start:\n{log.read_text()}")
            time.sleep(0.2)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
