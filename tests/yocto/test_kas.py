"""kas files: valid against kas's own JSON schema, pinned, and consistent with the layer."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from .conftest import LAYER, REPO

KAS_DIR = LAYER / "kas"
KAS_FILES = sorted(KAS_DIR.glob("*.yml")) + sorted((KAS_DIR / "include").glob("*.yml"))
SHA_RE = re.compile(r"^[0-9a-f]{40}$")


@pytest.fixture(scope="module")
def kas_schema() -> dict:
    try:
        import kas
    except ImportError:
        pytest.fail("the kas PyPI package is not installed in the venv (requirements-dev.txt pins it)", pytrace=False)
    schema_file = Path(kas.__file__).parent / "schema-kas.json"
    assert schema_file.is_file(), f"kas {kas.__version__} ships no schema at {schema_file}"
    return json.loads(schema_file.read_text())


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def merged(path: Path) -> dict:
    """Depth-first include merge, as kas does (later wins, dicts merged)."""

    def merge(a: dict, b: dict) -> dict:
        out = dict(a)
        for k, v in b.items():
            out[k] = merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else v
        return out

    data = load(path)
    result: dict = {}
    for inc in data.get("header", {}).get("includes", []):
        assert isinstance(inc, str), "only same-repo includes are used"
        result = merge(result, merged(REPO / inc))
    return merge(result, data)


def test_kas_files_present() -> None:
    names = {p.name for p in KAS_FILES}
    assert {"k3svirt-common.yml", "k3svirt-qemux86-64.yml", "k3svirt-n305.yml"} <= names, names


@pytest.mark.parametrize("path", KAS_FILES, ids=lambda p: p.name)
def test_valid_against_kas_schema(path: Path, kas_schema: dict) -> None:
    validator = jsonschema.validators.validator_for(kas_schema)(kas_schema)
    errors = sorted(validator.iter_errors(load(path)), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


@pytest.mark.parametrize("path", KAS_FILES, ids=lambda p: p.name)
def test_includes_resolve(path: Path) -> None:
    for inc in load(path).get("header", {}).get("includes", []):
        assert (REPO / inc).is_file(), f"{path.name} includes missing {inc} (paths are relative to the repo root)"


@pytest.mark.parametrize("name", ["k3svirt-qemux86-64.yml", "k3svirt-n305.yml"])
def test_machine_configs_are_complete_and_pinned(name: str) -> None:
    cfg = merged(KAS_DIR / name)
    assert cfg["distro"] == "k3svirt"
    assert (LAYER / "conf" / "distro" / "k3svirt.conf").is_file()
    assert cfg["target"] == "k3svirt-image"
    assert (LAYER / "recipes-core" / "images" / "k3svirt-image.bb").is_file()
    machine = cfg["machine"]
    if machine != "qemux86-64":  # qemux86-64 comes from OpenEmbedded-Core
        assert (LAYER / "conf" / "machine" / f"{machine}.conf").is_file(), machine

    repos = cfg["repos"]
    # Poky is not used: bitbake, oe-core and the layers are separate repos.
    assert "poky" not in repos
    for required in ("bitbake", "openembedded-core", "meta-openembedded", "meta-virtualization"):
        assert required in repos, f"{required} missing from {name}"
    for rid, repo in repos.items():
        if repo.get("url") is None:
            continue  # this repository
        assert SHA_RE.match(repo.get("commit", "")), f"{rid}: not pinned to a full commit"
        assert repo.get("branch"), f"{rid}: no branch (kas verifies the commit is on it)"
        if rid != "bitbake":
            assert repo["branch"] == "wrynose", f"{rid}: expected the wrynose branch"
    assert repos["bitbake"]["branch"] == "2.18", "wrynose needs bitbake 2.18 (BB_MIN_VERSION)"

    mo = repos["meta-openembedded"]["layers"]
    assert {"meta-oe", "meta-python", "meta-networking", "meta-filesystems"} <= set(mo)
    assert "meta-k3svirt" in repos["k3svirt"]["layers"]
    assert (REPO / "meta-k3svirt" / "conf" / "layer.conf").is_file()

    env = cfg.get("env", {})
    for var in ("DL_DIR", "SSTATE_DIR"):
        assert var in env, f"{var} must be forwarded from the environment (kas env:) for shared caches"


def test_layer_conf_matches_kas_layers() -> None:
    text = (LAYER / "conf" / "layer.conf").read_text()
    assert re.search(r'^LAYERSERIES_COMPAT_k3svirt = "wrynose"$', text, re.M)
    deps = re.search(r'LAYERDEPENDS_k3svirt = "(.*?)"', text, re.S).group(1).replace("\\", " ").split()
    assert deps == [
        "core",
        "openembedded-layer",
        "meta-python",
        "networking-layer",
        "filesystems-layer",
        "virtualization-layer",
    ]
