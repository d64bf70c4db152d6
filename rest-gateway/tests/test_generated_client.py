"""The API as an integrator sees it: a client generated from rest-gateway/openapi.json by a third-party
generator (openapi-python-client, PyPI) with zero warnings, driving the production gateway (gunicorn)
against the test bed, with a real operator and libvirt behind it: a VM from an imported template
through Ready -> stats -> stop -> start -> delete, template export, a Deployment and a Service.
The commands are the ones docs/rest-api.md shows."""

from __future__ import annotations

import importlib
import io
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import APP_IMAGE, TEMPLATE_YAML, wait_for

from tests.e2e.conftest import operator  # noqa: F401 - the real operator process (kopf + libvirt)

GATEWAY = Path(__file__).resolve().parents[1]
DOCUMENT = GATEWAY / "openapi.json"
CONFIG = GATEWAY / "openapi-python-client.yaml"
PACKAGE = "k3svirt_gateway_client"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """`openapi-python-client generate` on the committed document; asserts it warned about nothing."""
    out_dir = tmp_path_factory.mktemp("client")
    bindir = Path(sys.executable).parent
    proc = subprocess.run(
        [
            str(bindir / "openapi-python-client"),
            "generate",
            "--path",
            str(DOCUMENT),
            "--config",
            str(CONFIG),
            "--meta",
            "none",
            "--output-path",
            str(out_dir / PACKAGE),
            "--fail-on-warning",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PATH": f"{bindir}:{os.environ.get('PATH', '')}"},  # its ruff post-hook
        cwd=out_dir,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    warnings = re.findall(r"(?im)^.*(warning|error|skipping|unsupported|cannot).*$", output)
    assert warnings == [], output
    sys.path.insert(0, str(out_dir))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(out_dir))


@pytest.fixture(scope="module")
def api(generated, live_gateway: str, keys: dict[str, str]) -> Iterator[Any]:
    with generated.AuthenticatedClient(
        base_url=live_gateway, token=keys["admin"], raise_on_unexpected_status=True
    ) as c:
        yield c


@pytest.fixture()
def ns(api) -> Iterator[str]:
    from k3svirt_gateway_client.api.namespaces import create_namespace, delete_namespace
    from k3svirt_gateway_client.models import Namespace, NamespaceCreate

    name = f"gc-{uuid.uuid4().hex[:8]}"
    assert isinstance(create_namespace.sync(client=api, body=NamespaceCreate(name=name)), Namespace)
    yield name
    delete_namespace.sync_detailed(name, client=api)


def tiny_template(name: str, guest) -> str:
    """helpers' template, its VM the test bed's tiny guest (direct kernel boot, a blank scratch disk)."""
    return TEMPLATE_YAML.format(name=name) + (
        f"        boot: {{kernel: {{path: {guest.kernel}, initrdPath: {guest.initrd}, cmdline: console=ttyS0}}}}\n"
        "        disks: [{name: scratch, size: 64Mi, source: {blank: {}}}]\n"
        "        networks: [{name: default, nat: {network: default}}]\n"
    )


def test_generator_sees_every_operation(generated) -> None:
    """Nothing skipped: a module per operation of the document, YAML ones included."""
    import json

    doc = json.loads(DOCUMENT.read_text())
    ops = {op["operationId"] for item in doc["paths"].values() for op in item.values()}
    found = set()
    for tag_dir in (Path(generated.__file__).parent / "api").iterdir():
        if tag_dir.is_dir():
            found |= {p.stem for p in tag_dir.glob("*.py") if p.stem != "__init__"}
    assert ops == found, ops ^ found


def test_vm_from_template_lifecycle_and_template_export(api, ns, operator, tiny_guest) -> None:  # noqa: F811
    from k3svirt_gateway_client.api.templates import export_template, get_template, import_template
    from k3svirt_gateway_client.api.vms import create_vm, delete_vm, get_vm, list_vms, start_vm, stop_vm, vm_stats
    from k3svirt_gateway_client.models import (
        VirtualMachine,
        VMCreateFromTemplate,
        VMCreateFromTemplateOverrides,
        VMTemplate,
        VMTemplateReference,
    )
    from k3svirt_gateway_client.types import File

    # template import (YAML, as a file) and export (YAML back, importable again)
    manifest = tiny_template("tiny", tiny_guest)
    created = import_template.sync(client=api, namespace=ns, body=File(payload=io.BytesIO(manifest.encode())))
    assert isinstance(created, VMTemplate) and created.versions == ["1.0.0"]
    exported = export_template.sync("tiny", client=api, namespace=ns)
    doc = yaml.safe_load(exported.payload.read())
    assert doc["metadata"] == {"name": "tiny"} and doc["spec"]["versions"][0]["vm"]["memory"] == {"size": "128Mi"}
    again = import_template.sync_detailed(
        client=api, namespace=ns, body=File(payload=io.BytesIO(yaml.safe_dump(doc).encode()))
    )
    assert again.status_code == 200 and again.parsed.versions == ["1.0.0"]
    assert isinstance(get_template.sync("tiny", client=api, namespace=ns), VMTemplate)

    # VM from the template -> Ready
    overrides = VMCreateFromTemplateOverrides.from_dict({"nodeName": operator.env["K3SVIRT_NODE_NAME"]})
    body = VMCreateFromTemplate(name="guest", template=VMTemplateReference(name="tiny"), overrides=overrides)
    vm = create_vm.sync(client=api, namespace=ns, body=body)
    assert isinstance(vm, VirtualMachine) and vm.metadata.name == "guest"

    def summary() -> Any:
        (item,) = [i for i in list_vms.sync(client=api, namespace=ns).items if i.name == "guest"]
        return item

    def in_state(state: str, ready: bool) -> Any:
        s = summary()
        return s if (s.printable_status == state and s.ready == ready) else None

    running = wait_for("the VM Ready", lambda: in_state("Running", True), timeout=180)
    assert (
        running.template == "tiny"
        and running.template_version == "1.0.0"
        and running.node == operator.env["K3SVIRT_NODE_NAME"]
    )
    detail = get_vm.sync_detailed("guest", client=api, namespace=ns)
    assert detail.headers["etag"] == f'"{detail.parsed.metadata.resource_version}"'

    # live stats through the gateway
    def stats() -> Any:  # a rate needs two samples of the operator's (1 s interval here)
        r = vm_stats.sync_detailed("guest", client=api, namespace=ns)
        figures = r.parsed.to_dict() if r.status_code == 200 else {}
        return figures if (figures.get("cpu") or {}).get("usagePercent") is not None else None

    figures = wait_for("VM stats with a CPU rate", stats, timeout=60)
    assert figures["cpu"]["usagePercent"] >= 0 and figures["memory"]

    # stop -> Stopped, start -> Running again
    assert stop_vm.sync("guest", client=api, namespace=ns).run_strategy == "Halted"
    wait_for("the VM Stopped", lambda: in_state("Stopped", False))
    assert start_vm.sync("guest", client=api, namespace=ns).run_strategy == "Always"
    wait_for("the VM Running again", lambda: in_state("Running", True))

    # delete, with the ETag as precondition (retried: the operator writes status all the time)
    def deleted() -> bool:
        tag = get_vm.sync_detailed("guest", client=api, namespace=ns).headers["etag"]
        return delete_vm.sync_detailed("guest", client=api, namespace=ns, if_match=tag).status_code == 202

    wait_for("a delete at the current version", deleted, timeout=30, interval=0.2)
    wait_for("the VM gone", lambda: get_vm.sync_detailed("guest", client=api, namespace=ns).status_code == 404)


def _deploy(api, ns: str) -> tuple[Any, Any]:
    from k3svirt_gateway_client.api.deployments import create_deployment
    from k3svirt_gateway_client.api.services import create_service
    from k3svirt_gateway_client.models import (
        DeploymentCreate,
        DeploymentCreateEnv,
        DeploymentCreatePortsItem,
        ServiceCreate,
        ServiceCreatePortsItem,
    )

    env = DeploymentCreateEnv.from_dict({"MESSAGE": "from-a-generated-client", "PORT": "8080"})
    dep = create_deployment.sync(
        client=api,
        namespace=ns,
        body=DeploymentCreate(name="echo", image=APP_IMAGE, env=env, ports=[DeploymentCreatePortsItem(port=8080)]),
    )
    svc = create_service.sync(
        client=api,
        namespace=ns,
        body=ServiceCreate(name="echo", deployment="echo", ports=[ServiceCreatePortsItem(port=80, target_port=8080)]),
    )
    return dep, svc


def test_deployment_and_service_are_created_listed_paged_and_deleted(api, ns) -> None:
    """What needs no kubelet: the objects, their lists (paged) and their deletion."""
    from k3svirt_gateway_client.api.deployments import delete_deployment, get_deployment, list_deployments
    from k3svirt_gateway_client.api.services import delete_service, get_service, list_services
    from k3svirt_gateway_client.models import Deployment, Service

    dep, svc = _deploy(api, ns)
    assert isinstance(dep, Deployment) and dep.image == APP_IMAGE and dep.replicas == 1
    assert isinstance(svc, Service) and svc.cluster_ip and svc.ports[0].to_dict()["targetPort"] == 8080
    page = list_deployments.sync(client=api, namespace=ns, limit=1)
    assert [d.name for d in page.items] == ["echo"] and not page.continue_
    assert [s.name for s in list_services.sync(client=api, namespace=ns).items] == ["echo"]
    got = get_deployment.sync_detailed("echo", client=api, namespace=ns)
    assert got.status_code == 200 and got.headers["etag"]
    assert isinstance(get_service.sync("echo", client=api, namespace=ns), Service)
    assert delete_service.sync_detailed("echo", client=api, namespace=ns).status_code == 202
    assert delete_deployment.sync_detailed("echo", client=api, namespace=ns).status_code == 202
    wait_for(
        "the Deployment gone", lambda: get_deployment.sync_detailed("echo", client=api, namespace=ns).status_code == 404
    )


def test_deployment_and_service_run_on_the_node(api, ns, ready_node) -> None:
    """Needs the kubelet node: the Deployment's pod runs and answers through the Service."""
    import requests
    from k3svirt_gateway_client.api.deployments import get_deployment
    from k3svirt_gateway_client.api.pods import list_pods

    _dep, svc = _deploy(api, ns)
    wait_for("rollout Complete", lambda: get_deployment.sync("echo", client=api, namespace=ns).rollout == "Complete")
    (pod,) = list_pods.sync(client=api, namespace=ns, label_selector="app=echo").items
    assert pod.node == ready_node and pod.status == "Running"

    def answer() -> str | None:
        try:
            return requests.get(f"http://{svc.cluster_ip}:80/", timeout=5).text
        except requests.RequestException:
            return None

    text = wait_for("an answer through the Service", answer, timeout=60)
    assert "message=from-a-generated-client" in text


def test_the_documented_example_runs(api, live_gateway, keys, tmp_path, monkeypatch) -> None:
    """docs/rest-api.md's client example, as written, against the live gateway (namespace default)."""
    from k3svirt_gateway_client.api.templates import delete_template
    from k3svirt_gateway_client.api.vms import delete_vm, get_vm

    from tests.e2e.conftest import REPO

    text = (REPO / "docs/rest-api.md").read_text()
    (example,) = re.findall(r"## Generating a client.*?```python\n(.*?)```", text, re.S)
    assert len(example.splitlines()) <= 15
    monkeypatch.chdir(tmp_path)
    (tmp_path / "small.yaml").write_text(
        "apiVersion: k3svirt.io/v1alpha1\nkind: VMTemplate\nmetadata: {name: small}\n"
        "spec: {kind: Template, versions: [{version: 1.0.0, vm: {cpu: {cores: 1}, memory: {size: 64Mi}}}]}\n"
    )
    try:
        exec(example.replace("http://127.0.0.1:8080", live_gateway), {"KEY": keys["admin"]})  # noqa: S102
        vm = get_vm.sync("web", client=api)
        assert vm.spec.run_strategy == "Halted" and vm.spec.template.name == "small"
    finally:
        delete_vm.sync_detailed("web", client=api)
        wait_for("the example VM gone", lambda: get_vm.sync_detailed("web", client=api).status_code == 404, 60)
        delete_template.sync_detailed("small", client=api)
