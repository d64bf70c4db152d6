"""Fixtures for the Helm chart tests: a real `helm` (built from its Go module by helm.sh) and renders.

The helm binary is built once per machine (cached under ~/.cache/k3svirt/helm-<version>/); a machine
where it cannot be built fails these tests with helm.sh's reason: CI always has the Go toolchain.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "k3svirt"
HELM_SH = Path(__file__).resolve().parent / "helm.sh"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Building helm from source takes ~6 minutes on 2 cores the first time (then it is cached): give the
    test that happens to trigger it more than the suite's default 600 s."""
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.timeout(1800))


@pytest.fixture(scope="session")
def helm() -> str:
    proc = subprocess.run(["bash", str(HELM_SH)], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0 or not proc.stdout.strip():
        pytest.fail(f"no helm binary (tests/chart/helm.sh):\n{proc.stderr[-3000:]}", pytrace=False)
    return proc.stdout.strip().splitlines()[-1]


def run(
    cmd: list[str], *, input: str | None = None, check: bool = True, timeout: float = 300, **kw: Any
) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}", pytrace=False
        )
    return proc


@pytest.fixture(scope="session")
def render(helm: str) -> Callable[..., list[dict[str, Any]]]:
    """render(*helm_args, namespace=..., include_crds=False) -> the rendered objects."""

    def _render(
        *args: str, namespace: str = "k3svirt-system", release: str = "k3svirt", include_crds: bool = False
    ) -> list[dict[str, Any]]:
        cmd = [helm, "template", release, str(CHART), "--namespace", namespace, *args]
        if include_crds:
            cmd.append("--include-crds")
        return [d for d in yaml.safe_load_all(run(cmd).stdout) if d]

    return _render


@pytest.fixture(scope="session")
def rendered(render: Callable[..., list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return render()


def find(objs: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    hits = [o for o in objs if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)]
    assert len(hits) == 1, f"expected one {kind} *{name_suffix}, got {[o['metadata']['name'] for o in hits]}"
    return hits[0]
