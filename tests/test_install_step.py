"""Every program the code, the tests and the scripts run is installed by the project's install step.

CI runs on a machine that may hold packages installed by hand, so a green run can hide a missing
install step (a fresh machine once failed 26 tests on a missing `xmllint`). These tests name the
program, the place that runs it, and the Debian package to add.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests import install_inventory as inv


def _check(uses: list[inv.Use], extra_ok: set[str] = frozenset()) -> list[str]:
    problems = []
    for use in uses:
        if use.program in extra_ok or inv.origin(use.program) is not None:
            continue
        problems.append(
            f"{use.program} (run at {use.where}) is not installed by the install step: {inv.package_hint(use.program)}"
        )
    return sorted(set(problems))


def shell_uses() -> tuple[list[inv.Use], set[str]]:
    uses, funcs = [], set()
    for script in inv.shell_scripts():
        u, f = inv.parse_shell(script)
        uses += u
        funcs |= f
    return uses, funcs


def test_shell_scripts_run_only_installed_programs():
    uses, funcs = shell_uses()
    assert len(uses) > 50, "the shell parser found almost no commands: the inventory itself is broken"
    assert _check(uses, funcs) == []


def python_uses() -> list[inv.Use]:
    return [u for f in inv.tracked_files() if f.suffix == ".py" for u in inv.parse_python(f)]


def test_programs_that_are_scripts_are_followed():
    """A Debian program that is a shell script (virt-xml-validate) runs others (xmllint) in turn."""
    uses, funcs = shell_uses()
    seen: set[str] = set()
    nested: list[inv.Use] = []
    for use in uses + python_uses():
        if use.program in funcs or use.program in inv.prerequisites():
            continue  # our functions; the machine's own python3/go/git (pyenv shims are scripts too)
        path = shutil.which(use.program)
        if path and path not in seen and not path.startswith(str(inv.REPO)) and inv.is_shell_script(path):
            seen.add(path)
            nested += inv.parse_shell(Path(path))[0]
    assert "/usr/bin/virt-xml-validate" in seen, "virt-xml-validate should be among the followed scripts"
    assert any(u.program == "xmllint" for u in nested)
    assert _check(nested) == []


def test_python_code_runs_only_installed_programs():
    uses = python_uses()
    assert {"qemu-img", "kubectl", "virsh"} <= {u.program for u in uses}, "the AST scan misses known calls"
    assert _check(uses) == []


def test_origin_refuses_what_no_install_step_provides(tmp_path, monkeypatch):
    """The check can fail: a program found only in a directory of our own is not 'installed'."""
    fake = tmp_path / "k3svirt-not-installed"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    assert inv.origin("k3svirt-not-installed") is None
    assert inv.origin("definitely-no-such-program") is None
    assert inv.origin("sha256sum").startswith("Debian package coreutils")
    assert "install step" in inv.origin("virsh")


def test_install_step_resolves_from_nothing():
    """The install step's Debian packages resolve on this machine's package lists for a system that
    has none of them: an apt-get simulation against an empty dpkg status."""
    proc = subprocess.run(
        ["bash", str(inv.REPO / "tests/harness/fresh-check.sh")], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "would install" in proc.stdout and "distributions" in proc.stdout, proc.stdout


def test_programs_started_during_this_session():
    """Every process the test session started from Python came from the install step (recorded by the
    root conftest's audit hook; the root conftest runs this test last)."""
    assert inv.LAUNCHED, "the audit hook recorded no process at all"
    uses = [inv.Use(prog, where) for prog, where in inv.LAUNCHED.items()]
    assert _check(uses) == []
