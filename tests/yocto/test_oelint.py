"""oelint-adv over every recipe, bbappend and bbclass of meta-k3svirt.

Errors and warnings fail the test. Suppressions live in
meta-k3svirt/.oelint.cfg (global, each with its reason) or as
`# nooelint: <rule>` comments right above the line, with the reason in the
comment above it. Info-level findings are printed, not failed.
"""

from __future__ import annotations

import collections
import os
import subprocess

from .conftest import LAYER, REPO, require_tool

CONFIG = LAYER / ".oelint.cfg"


def lint_targets() -> list[str]:
    files = [p for ext in ("*.bb", "*.bbappend", "*.bbclass") for p in LAYER.rglob(ext)]
    return sorted(str(p.relative_to(REPO)) for p in files)


def test_oelint_clean() -> None:
    oelint = require_tool("oelint-adv", "oelint-adv (PyPI, requirements-dev.txt)")
    targets = lint_targets()
    assert len(targets) >= 10, targets
    env = dict(os.environ, OELINT_CONFIG=str(CONFIG))
    # Caches off: results must reflect the files as they are now.
    res = subprocess.run(
        [oelint, "--quiet", "--relpaths", "--jobs", "2", *targets],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    findings = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    by_sev: dict[str, list[str]] = collections.defaultdict(list)
    for ln in findings:
        parts = ln.split(":", 4)
        sev = parts[2] if len(parts) > 3 else "unparsed"
        by_sev[sev].append(ln)
    infos = collections.Counter(ln.split(":", 4)[3] for ln in by_sev.get("info", []))
    print(f"oelint-adv: {len(targets)} files, info findings by rule: {dict(infos)}")
    bad = by_sev.get("error", []) + by_sev.get("warning", []) + by_sev.get("unparsed", [])
    assert not bad, "oelint-adv errors/warnings:\n" + "\n".join(bad)
