"""Every rendered manifest is validated by the real API server (kube-apiserver of the test bed).

CRDs are applied for real first (they are the repository's own, identical to what the harness installs),
then everything else goes through `kubectl apply --dry-run=server` into a fresh namespace: schema
validation of built-in kinds and of the VMTemplates against the CRDs, admission (PodSecurity), RBAC
escalation checks on the ClusterRoles.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import yaml

from .conftest import CHART, REPO, run

PSA_WARNING = "would violate PodSecurity"


def kubectl(kubeconfig: str, *args: str, input: str | None = None, check: bool = True):
    return run(["kubectl", "--kubeconfig", kubeconfig, *args], input=input, check=check)


def dump(objs) -> str:
    return yaml.safe_dump_all(objs, sort_keys=False)


@pytest.fixture(scope="module")
def crds_installed(kubeconfig: str, render) -> None:
    crds = [o for o in render(include_crds=True) if o["kind"] == "CustomResourceDefinition"]
    assert len(crds) == len(list((REPO / "crds").glob("*.yaml"))) == 6
    kubectl(
        kubeconfig,
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=k3svirt-chart-test",
        "-f",
        "-",
        input=dump(crds),
    )
    kubectl(
        kubeconfig,
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        *[f"crd/{o['metadata']['name']}" for o in crds],
    )


def fresh_namespace(kubeconfig: str, profile: str) -> Iterator[str]:
    ns = f"t-chart-{uuid.uuid4().hex[:8]}"
    obj = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": ns,
            "labels": {f"pod-security.kubernetes.io/{mode}": profile for mode in ("enforce", "warn", "audit")},
        },
    }
    kubectl(kubeconfig, "create", "-f", "-", input=yaml.safe_dump(obj))
    try:
        yield ns
    finally:
        kubectl(kubeconfig, "delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture
def privileged_ns(kubeconfig: str) -> Iterator[str]:
    yield from fresh_namespace(kubeconfig, "privileged")


@pytest.fixture
def restricted_ns(kubeconfig: str) -> Iterator[str]:
    yield from fresh_namespace(kubeconfig, "restricted")


def dry_run(kubeconfig: str, objs) -> str:
    objs = [o for o in objs if o["kind"] != "CustomResourceDefinition"]
    proc = kubectl(kubeconfig, "apply", "--dry-run=server", "-f", "-", input=dump(objs))
    applied = [ln for ln in proc.stdout.splitlines() if "(server dry run)" in ln]
    assert len(applied) == len(objs), proc.stdout
    return proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--set", "gateway.apiKeys.mode=file", "--set", "gateway.apiKeys.hashed={admin:admin:sha256:" + "0" * 64 + "}"],
        ["--set", "namespace.create=true", "--set", "gateway.service.type=NodePort"],
    ],
    ids=["defaults", "file-keys", "namespace+nodeport"],
)
def test_server_accepts_every_manifest(
    kubeconfig: str, crds_installed: None, render, privileged_ns: str, args: list[str]
) -> None:
    objs = render(*args, namespace=privileged_ns, release=privileged_ns)
    assert {"DaemonSet", "Deployment", "VMTemplate", "ClusterRole"} <= {o["kind"] for o in objs}
    warnings = dry_run(kubeconfig, objs)
    assert PSA_WARNING not in warnings, warnings


def test_gateway_meets_restricted_profile(kubeconfig: str, crds_installed: None, render, restricted_ns: str) -> None:
    objs = render("--set", "operator.enabled=false", namespace=restricted_ns, release=restricted_ns)
    warnings = dry_run(kubeconfig, objs)
    assert PSA_WARNING not in warnings, warnings


def test_operator_is_flagged_in_restricted_namespace(
    kubeconfig: str, crds_installed: None, render, restricted_ns: str
) -> None:
    """The check above is live: the privileged operator does draw PodSecurity warnings there."""
    objs = render(
        "--set",
        "gateway.enabled=false",
        "--set",
        "vmTemplates.enabled=false",
        namespace=restricted_ns,
        release=restricted_ns,
    )
    warnings = dry_run(kubeconfig, objs)
    assert PSA_WARNING in warnings and "privileged" in warnings


def test_helm_install_dry_run_and_notes(helm: str, kubeconfig: str, crds_installed: None, privileged_ns: str) -> None:
    """helm's own install path against the real API server (nothing is created), and the NOTES it prints."""
    proc = run(
        [helm, "install", "k3svirt", str(CHART), "--kubeconfig", kubeconfig, "-n", privileged_ns, "--dry-run=server"]
    )
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "port-forward svc/k3svirt-gateway 8080:80" in notes
    assert "python -m k3svirt_gateway.keys add admin --role admin --file" in notes
    assert f"kubectl label ns {privileged_ns} pod-security.kubernetes.io/enforce=privileged" in notes
