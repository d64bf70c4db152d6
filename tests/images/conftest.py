"""Fixtures for the image tests: the locally built OCI archives and a private containerd to run them.

The containerd here is our own (Debian's containerd, config/root/state/socket in a temporary dir,
CRI plugin off): the tests import the archives, run containers with `ctr run`, and the fixture
removes every container and image and stops the daemon afterwards. Containers get a network
namespace of their own (or one the test creates), never the host's network.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.polling import poll

REPO = Path(__file__).resolve().parents[2]
IMAGES_SH = REPO / "tests/harness/images.sh"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A cold build of every image takes ~5-7 minutes on 2 busy cores (then it is cached): give the
    test that happens to trigger it more than the suite's default 600 s."""
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.timeout(3600))


def run_images_sh(*args: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["bash", str(IMAGES_SH), *args], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"images.sh {' '.join(args)} failed:\n{proc.stderr[-3000:]}", pytrace=False)
    return proc


def parse_refs(stdout: str) -> dict[str, Path]:
    """`images.sh build|list` lines "<reference> <archive> [bytes]" -> {reference: archive}."""
    return {line.split()[0]: Path(line.split()[1]) for line in stdout.splitlines() if line.strip()}


@pytest.fixture(scope="session")
def built_images() -> dict[str, Path]:
    """Every image built (cold: about 10 minutes on 2 cores; cached: seconds), by reference."""
    return parse_refs(run_images_sh("build").stdout)


def ref(images: dict[str, Path], name: str) -> str:
    """The full reference of the image called NAME (localhost/k3svirt/NAME:<tag>)."""
    (found,) = [r for r in images if r.rsplit(":", 1)[0] == f"localhost/k3svirt/{name}"]
    return found


@dataclass
class Containerd:
    socket: Path
    logs: Path

    def ctr(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["ctr", "--address", str(self.socket), "-n", "k8s.io", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def run(self, image: str, *argv: str, opts: tuple[str, ...] = (), timeout: float = 120) -> str:
        """Runs a container to completion in a fresh network namespace; returns its stdout."""
        name = f"k3svirt-img-{time.monotonic_ns()}"
        return self.ctr("run", "--rm", *opts, image, name, *argv, timeout=timeout).stdout

    def start(self, image: str, name: str, *argv: str, opts: tuple[str, ...] = ()) -> Path:
        """Starts a detached container; returns the file its stdout/stderr go to."""
        log = self.logs / f"{name}.log"
        self.ctr("run", "-d", "--log-uri", f"file://{log}", *opts, image, name, *argv)
        return log

    def task_pid(self, name: str) -> int:
        for line in self.ctr("tasks", "ls").stdout.splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == name:
                return int(fields[1])
        raise AssertionError(f"container {name} has no task")

    def task_status(self, name: str) -> str:
        for line in self.ctr("tasks", "ls").stdout.splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == name:
                return fields[2]
        return "MISSING"

    def stop(self, name: str, sig: str = "SIGTERM", timeout: float = 10) -> int:
        """Sends SIG, waits for the task to stop, deletes it; returns its exit code (128+n: killed by n)."""
        self.ctr("tasks", "kill", "-s", sig, name)
        deadline = time.monotonic() + timeout
        while self.task_status(name) != "STOPPED":
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} did not stop within {timeout} s of {sig}")
            time.sleep(0.1)
        # `ctr tasks rm` exits with the task's exit code.
        return self.ctr("tasks", "rm", name, check=False).returncode

    def remove(self, name: str) -> None:
        self.ctr("tasks", "kill", "-s", "SIGKILL", name, check=False)
        poll(lambda: self.task_status(name) in ("STOPPED", "MISSING"), 20)
        self.ctr("tasks", "rm", "-f", name, check=False)
        self.ctr("containers", "rm", name, check=False)


def _config(root: Path) -> str:
    return f"""version = 2
root = "{root}/root"
state = "{root}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{root}/containerd.sock"
[ttrpc]
  address = "{root}/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"
"""


@pytest.fixture(scope="session")
def containerd(built_images: dict[str, Path]) -> Iterator[Containerd]:
    """A private containerd with every image imported by `images.sh import`; all removed afterwards."""
    for tool in ("containerd", "ctr", "runc"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: run bash tests/harness/deps.sh", pytrace=False)
    # Short path: containerd's sockets must fit in sun_path (108 bytes).
    root = Path(subprocess.check_output(["mktemp", "-d", "/tmp/k3svirt-ctrd.XXXXXX"], text=True).strip())
    (root / "logs").mkdir()
    (root / "config.toml").write_text(_config(root))
    daemon_log = (root / "containerd.log").open("w")
    daemon = subprocess.Popen(
        ["containerd", "--config", str(root / "config.toml")], stdout=daemon_log, stderr=subprocess.STDOUT
    )
    cd = Containerd(root / "containerd.sock", root / "logs")
    try:
        deadline = time.monotonic() + 30
        while cd.ctr("version", check=False).returncode != 0:
            if daemon.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"containerd did not start: see {root}/containerd.log", pytrace=False)
            time.sleep(0.2)
        run_images_sh("import", str(cd.socket), timeout=600)
        yield cd
    finally:
        for line in cd.ctr("containers", "ls", "-q", check=False).stdout.split():
            cd.remove(line)
        for image in cd.ctr("images", "ls", "-q", check=False).stdout.split():
            cd.ctr("images", "rm", "--sync", image, check=False)
        daemon.terminate()
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        daemon_log.close()
        # Never delete through a mount that is still there (a leftover rootfs would be emptied).
        if not any(f" {root}/" in line for line in Path("/proc/self/mounts").read_text().splitlines()):
            shutil.rmtree(root, ignore_errors=True)
