"""helm lint and helm template: the chart renders, with the defaults and with every option switched."""

from __future__ import annotations

import base64
import subprocess

import pytest
import yaml

from .conftest import CHART, REPO, find, run

VARIANTS = {
    "defaults": [],
    "file-keys+existing-secret+namespace": [
        "--set",
        "gateway.apiKeys.mode=file",
        "--set",
        "gateway.apiKeys.existingSecret=my-keys",
        "--set",
        "namespace.create=true",
    ],
    "nodeport+templates-elsewhere": [
        "--set",
        "gateway.service.type=NodePort",
        "--set",
        "gateway.service.nodePort=30080",
        "--set",
        "vmTemplates.namespaces={default,vms}",
        "--set",
        "vmTemplates.keep=true",
    ],
    "operator-only": ["--set", "gateway.enabled=false", "--set", "vmTemplates.enabled=false"],
    "tls": ["--set", "gateway.tls.secretName=gw-tls", "--set", "gateway.service.type=NodePort"],
}

HASHED = "admin:admin:sha256:" + "ab" * 32


def test_helm_lint(helm: str) -> None:
    out = run([helm, "lint", "--strict", str(CHART)]).stdout
    assert "0 chart(s) failed" in out


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_helm_lint_variants(helm: str, variant: str) -> None:
    run([helm, "lint", "--strict", str(CHART), *VARIANTS[variant]])


def test_chart_refuses_kubernetes_without_selectable_fields(helm: str) -> None:
    """The CRDs' selectableFields (the operator's node-scoped VM watch) need Kubernetes 1.31: helm says
    so before installing instead of an operator that watches nothing on an older cluster."""
    old = run([helm, "template", "x", str(CHART), "--kube-version", "1.30.4"], check=False)
    assert old.returncode != 0 and "kubeVersion" in old.stderr, old.stderr
    run([helm, "template", "x", str(CHART), "--kube-version", "1.31.0"])
    crds = yaml.safe_load_all((REPO / "crds" / "virtualmachines.yaml").read_text())
    (crd,) = [c for c in crds if c]
    assert any(v.get("selectableFields") for v in crd["spec"]["versions"])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_template_renders(render, variant: str) -> None:
    objs = render(*VARIANTS[variant])
    kinds = {o["kind"] for o in objs}
    assert "ClusterRole" in kinds
    for o in objs:
        assert o["metadata"].get("name"), o
        if o["kind"] not in {"ClusterRole", "ClusterRoleBinding", "Namespace"}:
            assert o["metadata"].get("namespace"), f"{o['kind']}/{o['metadata']['name']} has no namespace"


def test_default_objects(rendered) -> None:
    kinds = sorted({o["kind"] for o in rendered})
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "DaemonSet",
        "Deployment",
        "Role",
        "RoleBinding",
        "Secret",
        "Service",
        "ServiceAccount",
        "VMTemplate",
    ]


def test_operator_daemonset(rendered) -> None:
    ds = find(rendered, "DaemonSet", "-operator")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] and pod["hostPID"]
    (c,) = pod["containers"]
    assert c["securityContext"]["privileged"] is True
    env = {e["name"]: e for e in c["env"]}
    assert env["K3SVIRT_NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["K3SVIRT_NODE_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    for name in ("LIBVIRT_DEFAULT_URI", "K3SVIRT_STORAGE_ROOT", "K3SVIRT_METRICS_PORT", "K3SVIRT_PCI_DENYLIST"):
        assert name in env
    assert env["K3SVIRT_METRICS_PORT"]["value"] == "9470"
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["ports"][0]["containerPort"] == 9470
    mounts = {m["mountPath"]: m.get("readOnly", False) for m in c["volumeMounts"]}
    assert mounts == {
        "/var/run/libvirt": False,
        "/var/lib/k3svirt": False,
        "/sys": False,
        "/dev": False,
        "/boot": True,
        "/lib/modules": True,
        "/var/lib/kubelet": True,  # the CPU manager checkpoint (the shared CPU pool)
        "/etc/k3svirt/console": True,
        "/var/lib/k3svirt-volumes": False,
        "/var/lib/k3svirt-images": True,
    }
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["K3SVIRT_VOLUME_DIRS"] == "/var/lib/k3svirt-volumes"
    assert env["K3SVIRT_IMAGE_DIRS"] == "/var/lib/k3svirt-images"
    assert env["K3SVIRT_IMAGE_MAX_BYTES"] == "68719476736"
    assert env["K3SVIRT_KERNEL_DIRS"] == "/var/lib/k3svirt/guest:/var/lib/k3svirt/kernels"  # never /boot
    assert env["K3SVIRT_KUBELET_ROOT_DIR"] == "/var/lib/kubelet"
    assert c["resources"]["requests"]["memory"] == "100Mi"
    assert pod["nodeSelector"] and pod["tolerations"]


def _images(objs) -> tuple[str, str]:
    (op,) = find(objs, "DaemonSet", "-operator")["spec"]["template"]["spec"]["containers"]
    (gw,) = find(objs, "Deployment", "-gateway")["spec"]["template"]["spec"]["containers"]
    return op["image"], gw["image"]


def test_default_images_are_the_ones_images_sh_builds(rendered, render) -> None:
    app = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    built = subprocess.run(
        ["bash", str(REPO / "tests/harness/images.sh"), "refs"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert _images(rendered) == (f"localhost/k3svirt/operator:{app}", f"localhost/k3svirt/gateway:{app}")
    assert set(_images(rendered)) <= set(built)
    moved = render("--set", "image.repository=registry.example/k3svirt/", "--set", "image.tag=1.2.3")
    assert _images(moved) == ("registry.example/k3svirt/operator:1.2.3", "registry.example/k3svirt/gateway:1.2.3")


def test_gateway_deployment(rendered) -> None:
    dep = find(rendered, "Deployment", "-gateway")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["k3svirt-gateway"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e.get("value") for e in c["env"]}
    secret = find(rendered, "Secret", "-api-keys")
    assert env["K3SVIRT_API_KEYS_SECRET"] == f"k3svirt-system/{secret['metadata']['name']}"
    svc = find(rendered, "Service", "-gateway")
    assert svc["spec"]["ports"][0]["targetPort"] == "http"


def test_hashed_keys_land_in_secret(render) -> None:
    objs = render("--set", f"gateway.apiKeys.hashed={{{HASHED}}}")
    keys = find(objs, "Secret", "-api-keys")["stringData"]["keys"]
    assert HASHED in keys.splitlines()
    # The gateway's own parser accepts what the chart wrote.
    from k3svirt_gateway.auth import parse_keys

    assert [(e.name, e.role) for e in parse_keys(keys)] == [("admin", "admin")]


def test_file_mode_mounts_the_secret(render) -> None:
    objs = render("--set", "gateway.apiKeys.mode=file")
    dep = find(objs, "Deployment", "-gateway")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["K3SVIRT_API_KEYS_FILE"] == "/etc/k3svirt/api-keys/keys"
    assert "K3SVIRT_API_KEYS_SECRET" not in env
    assert not [o for o in objs if o["kind"] in ("Role", "RoleBinding")], "file mode needs no Secret access"


def test_console_key_is_one_secret_both_sides_mount(render) -> None:
    """docs/console.md: the gateway signs console tickets with the key the operators check them with."""
    objs = render()
    (secret,) = [o for o in objs if o["kind"] == "Secret" and o["metadata"]["name"] == "k3svirt-console-key"]
    assert len(base64.b64decode(secret["data"]["key"])) >= 32
    for kind, suffix in (("DaemonSet", "-operator"), ("Deployment", "-gateway")):
        pod = find(objs, kind, suffix)["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["K3SVIRT_CONSOLE_KEY_FILE"] == "/etc/k3svirt/console/key", kind
        vol = next(v for v in pod["volumes"] if v["name"] == "console-key")
        assert vol["secret"]["secretName"] == "k3svirt-console-key", kind
        assert any(m["name"] == "console-key" and m["readOnly"] for m in c["volumeMounts"]), kind
    ds = find(objs, "DaemonSet", "-operator")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "console", "containerPort": 9471, "hostPort": 9471, "protocol": "TCP"} in ds["ports"]
    off = render("--set", "console.enabled=false")
    assert not [o for o in off if o["metadata"]["name"] == "k3svirt-console-key"]
    gw = find(off, "Deployment", "-gateway")["spec"]["template"]["spec"]["containers"][0]
    assert "K3SVIRT_CONSOLE_KEY_FILE" not in {e["name"] for e in gw["env"]}
    own = render("--set", "console.existingSecret=my-console-key")
    assert not [o for o in own if o["metadata"]["name"] == "k3svirt-console-key"]
    pod = find(own, "DaemonSet", "-operator")["spec"]["template"]["spec"]
    assert next(v for v in pod["volumes"] if v["name"] == "console-key")["secret"]["secretName"] == "my-console-key"


@pytest.mark.parametrize(
    "bad",
    ["admin:sha256:short", "plain-key-not-hashed", "a:root:sha256:" + "0" * 64, "a:read:Bad_NS:sha256:" + "0" * 64],
)
def test_malformed_hashed_key_fails_render(helm: str, bad: str) -> None:
    proc = run([helm, "template", "x", str(CHART), "--set", f"gateway.apiKeys.hashed={{{bad}}}"], check=False)
    assert proc.returncode != 0 and "gateway.apiKeys.hashed" in proc.stderr


def test_tls_secret_makes_the_gateway_serve_https(render) -> None:
    objs = render("--set", "gateway.tls.secretName=gw-tls")
    dep = find(objs, "Deployment", "-gateway")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["K3SVIRT_GATEWAY_TLS_CERT"] == "/etc/k3svirt/tls/tls.crt"
    assert env["K3SVIRT_GATEWAY_TLS_KEY"] == "/etc/k3svirt/tls/tls.key"
    assert {"name": "tls", "mountPath": "/etc/k3svirt/tls", "readOnly": True} in c["volumeMounts"]
    (vol,) = [v for v in pod["volumes"] if v["name"] == "tls"]
    assert vol["secret"]["secretName"] == "gw-tls"
    assert c["readinessProbe"]["httpGet"]["scheme"] == "HTTPS" and c["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
    plain = find(render(), "Deployment", "-gateway")["spec"]["template"]["spec"]["containers"][0]
    assert "K3SVIRT_GATEWAY_TLS_CERT" not in {e["name"] for e in plain["env"]}


def test_scoped_hashed_keys_render(render, tmp_path) -> None:
    entry = "tenant:operate:team-a,team-b:sha256:" + "cd" * 32
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"gateway": {"apiKeys": {"hashed": [HASHED, entry]}}}))
    keys = find(render("-f", str(values)), "Secret", "-api-keys")["stringData"]["keys"]
    from k3svirt_gateway.auth import parse_keys

    got = [(e.name, e.role, e.scope_text()) for e in parse_keys(keys)]
    assert got == [("admin", "admin", "*"), ("tenant", "operate", "team-a,team-b")]


def test_the_kubelet_checkpoint_mount_can_be_left_out(render) -> None:
    """operator.kubeletRootDir "": no kubelet directory in the pod, and the operator reads no checkpoint."""
    pod = find(render("--set", "operator.kubeletRootDir="), "DaemonSet", "-operator")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert "kubelet" not in {v["name"] for v in pod["volumes"]}
    assert "/var/lib/kubelet" not in {m["mountPath"] for m in c["volumeMounts"]}
    assert {e["name"]: e.get("value") for e in c["env"]}["K3SVIRT_KUBELET_ROOT_DIR"] == ""


def test_volume_grants_reach_the_operator_and_are_mounted(render) -> None:
    """A granted device (NS=PATH) is in K3SVIRT_VOLUME_DIRS and mounted at its own path, as it is."""
    objs = render("--set", "operator.volumeGrants={tenant-a=/dev/disk/by-id/ata-X}")
    ds = find(objs, "DaemonSet", "-operator")
    pod = ds["spec"]["template"]["spec"]
    c = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["K3SVIRT_VOLUME_DIRS"] == "/var/lib/k3svirt-volumes:tenant-a=/dev/disk/by-id/ata-X"
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["volume-grant-0"] == "/dev/disk/by-id/ata-X"
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["volume-grant-0"]["hostPath"] == {"path": "/dev/disk/by-id/ata-X"}
