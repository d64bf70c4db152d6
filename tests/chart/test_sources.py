"""The chart's CRDs and VM templates are the repository's crds/ and vm-templates/, byte for byte.

The chart holds them as symlinks (charts/k3svirt/crds -> ../../crds, vm-templates -> ../../vm-templates)
that helm resolves when it loads or packages the chart. These tests check what helm actually ships:
the packaged .tgz, and what `helm template` renders from it.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import yaml

from .conftest import CHART, REPO, run


def _packaged(helm: str, tmp_path: Path) -> dict[str, bytes]:
    run([helm, "package", str(CHART), "--destination", str(tmp_path)])
    (tgz,) = tmp_path.glob("k3svirt-*.tgz")
    with tarfile.open(tgz) as tar:
        return {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_chart_links_to_the_sources() -> None:
    for sub in ("crds", "vm-templates"):
        link = CHART / sub
        assert link.is_symlink(), f"{link} must be a symlink to {REPO / sub} (single source of truth)"
        assert link.resolve() == (REPO / sub).resolve()


def test_package_holds_the_sources_byte_for_byte(helm: str, tmp_path: Path) -> None:
    files = _packaged(helm, tmp_path)
    for sub in ("crds", "vm-templates"):
        want = {f"{sub}/{p.name}": p.read_bytes() for p in sorted((REPO / sub).glob("*.yaml"))}
        assert want, f"no {sub}/*.yaml in the repository"
        got = {k: v for k, v in files.items() if k.startswith(f"{sub}/") and k.endswith(".yaml")}
        assert got == want, f"chart {sub}/ differs from the repository's {sub}/"
    assert "vm-templates/README.md" not in files


def test_installed_crds_are_the_sources(render) -> None:
    crds = [o for o in render(include_crds=True) if o["kind"] == "CustomResourceDefinition"]
    want = [yaml.safe_load(p.read_text()) for p in sorted((REPO / "crds").glob("*.yaml"))]
    key = lambda o: o["metadata"]["name"]  # noqa: E731
    assert sorted(crds, key=key) == sorted(want, key=key)


def test_rendered_templates_are_the_sources(rendered) -> None:
    got = {o["metadata"]["name"]: o for o in rendered if o["kind"] == "VMTemplate"}
    want = {}
    for p in sorted((REPO / "vm-templates").glob("*.yaml")):
        o = yaml.safe_load(p.read_text())
        want[o["metadata"]["name"]] = o
    assert sorted(got) == sorted(want)
    for name, obj in got.items():
        meta = dict(obj["metadata"])
        assert meta.pop("namespace") == "k3svirt-system"
        labels = dict(meta.pop("labels"))
        for k in [k for k in labels if k.startswith(("app.kubernetes.io/", "helm.sh/"))]:
            labels.pop(k)
        if labels:
            meta["labels"] = labels
        # vmTemplates.keep (the default): helm leaves them to the VMs that outlive an uninstall.
        annotations = dict(meta.pop("annotations", {}))
        assert annotations.pop("helm.sh/resource-policy") == "keep"
        if annotations:
            meta["annotations"] = annotations
        assert {**obj, "metadata": meta} == want[name], f"VMTemplate {name} differs from vm-templates/"


def test_templates_go_to_every_listed_namespace(render) -> None:
    objs = render("--set", "vmTemplates.namespaces={default,vms}")
    n = len(list((REPO / "vm-templates").glob("*.yaml")))
    tmpl = [o for o in objs if o["kind"] == "VMTemplate"]
    assert sorted({o["metadata"]["namespace"] for o in tmpl}) == ["default", "vms"]
    assert len(tmpl) == 2 * n
