"""kubectl k3svirt, found by the real kubectl as a plugin on PATH, against a real operator and guest."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from .conftest import get_json, kubectl, tiny_vm, wait_until

BIN = Path(sys.executable).parent  # the .venv's bin: where pip put kubectl-k3svirt
# A port-22 listener that sends an SSH banner: proves `ssh` was pointed at the VM's address.
FAKE_SSHD = "while true; do echo SSH-2.0-k3svirtfake | nc -l -p 22; done\n"


def plugin(kubeconfig: str, *args: str, check: bool = True, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "KUBECONFIG": kubeconfig, "PATH": f"{BIN}:{os.environ['PATH']}"}
    proc = subprocess.run(["kubectl", "k3svirt", *args], capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl k3svirt {' '.join(args)} -> {proc.returncode}: {proc.stderr}")
    return proc


def test_help_and_completion(kubeconfig, namespace, operator, tiny_guest):
    out = plugin(kubeconfig, "--help").stdout
    listed = set(re.findall(r"^    ([a-z]+) ", out, re.MULTILINE))  # argparse's list of subcommands
    every = {"start", "stop", "restart", "stats", "console", "ssh", "snapshot", "restore", "expose", "completion"}
    assert every <= listed, f"missing from --help: {every - listed}"
    for command in ("console", "snapshot", "restore"):
        assert "usage: kubectl k3svirt" in plugin(kubeconfig, command, "--help").stdout
    assert "complete -F" in plugin(kubeconfig, "completion", "bash").stdout
    kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=json.dumps(tiny_vm("compl", tiny_guest)))
    env = {**os.environ, "KUBECONFIG": kubeconfig}
    run = [str(BIN / "kubectl_complete-k3svirt")]
    words = subprocess.run([*run, "st"], capture_output=True, text=True, env=env, check=True).stdout.split()
    assert words == ["start", "stop", "stats", ":4"]
    names = subprocess.run([*run, "-n", namespace, "stop", "co"], capture_output=True, text=True, env=env).stdout
    assert names.split() == ["compl", ":4"]


def test_stop_start_restart_stats_ssh(kubeconfig, namespace, operator, tiny_guest):
    name = "plug"
    vm = tiny_vm(name, tiny_guest)
    vm["spec"]["boot"]["kernel"]["cmdline"] += f" k3svirt.run={base64.b64encode(FAKE_SSHD.encode()).decode()}"
    kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=json.dumps(vm))
    kubectl(kubeconfig, "wait", "-n", namespace, "--for=condition=Ready", f"vm/{name}", "--timeout=120s")

    assert "stopped" in plugin(kubeconfig, "-n", namespace, "stop", name, "--wait").stdout
    got = get_json(kubeconfig, "vm", name, "-n", namespace)
    assert got["spec"]["runStrategy"] == "Halted" and got["status"]["printableStatus"] == "Stopped"
    assert "started" in plugin(kubeconfig, "-n", namespace, "start", name, "--wait").stdout
    got = get_json(kubeconfig, "vm", name, "-n", namespace)
    assert got["spec"]["runStrategy"] == "Always" and got["status"]["printableStatus"] == "Running"

    console = Path(got["status"]["consoleLog"])
    wait_until(lambda: "K3SVIRT-GUEST-READY" in console.read_text(errors="replace"), 60, "guest did not boot")
    boots = console.read_text(errors="replace").count("K3SVIRT-GUEST-READY")
    plugin(kubeconfig, "-n", namespace, "restart", name, "--wait")
    assert get_json(kubeconfig, "vm", name, "-n", namespace)["status"]["lastActionRequest"].startswith("restart/")
    wait_until(lambda: console.read_text(errors="replace").count("K3SVIRT-GUEST-READY") > boots, 60, "no reboot seen")

    # The first sample after the restart has no rates yet (usagePercent null, left out of the table).
    stats = wait_until(
        lambda: (
            (p := plugin(kubeconfig, "-n", namespace, "stats", name, "--json", check=False)).returncode == 0
            and (figures := json.loads(p.stdout))["cpu"].get("usagePercent") is not None
            and figures
        ),
        60,
        "no stats with a CPU rate",
    )
    assert stats["name"] == name and stats["cpu"]["usagePercent"] >= 0
    assert "cpu.usagePercent" in plugin(kubeconfig, "-n", namespace, "stats", name).stdout

    # ssh goes to the address in status.interfaces (the guest's fake sshd answers with its banner).
    wait_until(lambda: (get_json(kubeconfig, "vm", name, "-n", namespace)["status"].get("interfaces") or [{}])[0]
               .get("ipAddress"), 60, "no IP address in status")  # fmt: skip
    ssh_opts = ["-v", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "ConnectTimeout=10"]  # fmt: skip

    def banner() -> bool:
        proc = plugin(kubeconfig, "-n", namespace, "ssh", f"root@{name}", "--", *ssh_opts, check=False)
        return "remote software version k3svirtfake" in proc.stderr

    wait_until(banner, 60, "ssh never reached the guest's port 22")


def test_errors_are_one_line(kubeconfig, namespace, operator):
    proc = plugin(kubeconfig, "-n", namespace, "stop", "nope", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f'error: VirtualMachine "nope" not found in namespace "{namespace}"'
