"""cloudinit.py: rendering (pure) and the NoCloud seed ISO read back with isoinfo."""

from __future__ import annotations

import email
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from k3svirt_common.schema import validate_spec
from k3svirt_operator.cloudinit import (
    CloudInitError,
    build_seed,
    render_seed_files,
    render_user_data,
    seed_digest,
)

KEY1 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA1 alice@example"
KEY2 = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ2 bob@example"

needs_iso = pytest.mark.skipif(
    shutil.which("isoinfo") is None or shutil.which("genisoimage") is None, reason="genisoimage not installed"
)


def iso_file(iso: Path, name: str, mode: str | None = "-R") -> str:
    argv = ["isoinfo", *([mode] if mode else []), "-i", str(iso), "-x", name]
    out = subprocess.run(argv, capture_output=True, check=True)
    return out.stdout.decode()


# ------------------------------------------------------------------------------------------- user-data
def test_absent_user_data() -> None:
    assert render_user_data(None, []) == "#cloud-config\n"
    text = render_user_data(None, [KEY1])
    assert text.startswith("#cloud-config\n")
    assert yaml.safe_load(text) == {"ssh_authorized_keys": [KEY1]}


def test_cloud_config_kept_verbatim_with_keys_appended() -> None:
    ud = "#cloud-config\n# my comment\npackages: [vim]\nruncmd:\n  - echo hi\n"
    assert render_user_data(ud, []) == ud
    text = render_user_data(ud, [KEY1])
    assert text.startswith(ud)  # comments and layout preserved
    assert yaml.safe_load(text) == {"packages": ["vim"], "runcmd": ["echo hi"], "ssh_authorized_keys": [KEY1]}


def test_cloud_config_merges_existing_keys() -> None:
    ud = f"#cloud-config\nssh_authorized_keys:\n  - {KEY2}\n  - {KEY1}\nhostname: h\n"
    doc = yaml.safe_load(render_user_data(ud, [KEY1, KEY1 + " ", "ssh-ed25519 AAAANEW new@x"]))
    assert doc["ssh_authorized_keys"] == [KEY2, KEY1, "ssh-ed25519 AAAANEW new@x"]
    assert doc["hostname"] == "h"


def test_flow_style_cloud_config_falls_back_to_reserialise() -> None:
    text = render_user_data("#cloud-config\n{packages: [vim]}", [KEY1])
    assert text.startswith("#cloud-config\n")
    assert yaml.safe_load(text) == {"packages": ["vim"], "ssh_authorized_keys": [KEY1]}


def test_script_wrapped_in_multipart() -> None:
    script = "#!/bin/sh\necho hello > /tmp/x\n"
    assert render_user_data(script, []) == script
    text = render_user_data(script, [KEY1])
    msg = email.message_from_string(text)
    assert msg.is_multipart()
    parts = [(p.get_content_type(), p.get_payload()) for p in msg.get_payload()]
    assert parts[0][0] == "text/cloud-config"
    assert yaml.safe_load(parts[0][1]) == {"ssh_authorized_keys": [KEY1]}
    assert parts[1] == ("text/x-shellscript", script)
    assert render_user_data(script, [KEY1]) == text  # deterministic boundary


def test_invalid_cloud_config_yaml_names_field_and_line() -> None:
    ud = "#cloud-config\npackages:\n  - vim\n bad: [\n"
    with pytest.raises(CloudInitError) as e:
        render_user_data(ud, [])
    msg = str(e.value)
    assert msg.startswith("spec.cloudInit.userData: invalid YAML at line 4")


@pytest.mark.parametrize(
    ("ud", "keys", "message"),
    [
        ("#cloud-config\n- a\n- b\n", [], "spec.cloudInit.userData: #cloud-config must be a YAML mapping"),
        ("#cloud-config\nssh_authorized_keys: one\n", [KEY1], "ssh_authorized_keys must be a list"),
        ("packages: [vim]\n", [], "spec.cloudInit.userData: must start with '#cloud-config'"),
        ("## template: jinja\n#cloud-config\n", [KEY1], "spec.cloudInit.sshAuthorizedKeys: cannot be merged"),
        ("Content-Type: multipart/mixed\n", [KEY1], "spec.cloudInit.sshAuthorizedKeys: cannot be merged"),
    ],
)
def test_user_data_errors(ud: str, keys: list[str], message: str) -> None:
    with pytest.raises(CloudInitError, match=message.replace("[", r"\[").replace("(", r"\(")):
        render_user_data(ud, keys)


def test_unmergeable_without_keys_passes_through() -> None:
    ud = "## template: jinja\n#cloud-config\nhostname: {{ v1.local_hostname }}\n"
    assert render_user_data(ud, []) == ud


# ------------------------------------------------------------------------------------------- files
def test_render_seed_files() -> None:
    files = render_seed_files("ns", "vm1", "uid-123", {"sshAuthorizedKeys": [KEY1]})
    assert set(files) == {"user-data", "meta-data"}
    assert yaml.safe_load(files["meta-data"]) == {"instance-id": "uid-123", "local-hostname": "vm1"}
    files = render_seed_files(
        "ns",
        "vm1",
        "uid-123",
        {"metaData": "local-hostname: custom\nfoo: bar\n", "networkData": "version: 2\nethernets: {}\n"},
    )
    assert yaml.safe_load(files["meta-data"]) == {
        "instance-id": "uid-123",
        "local-hostname": "custom",
        "foo": "bar",
    }
    assert files["network-config"] == b"version: 2\nethernets: {}\n"
    assert files["user-data"] == b"#cloud-config\n"


@pytest.mark.parametrize(
    ("ci", "message"),
    [
        ({"networkData": "version: 3\n"}, "spec.cloudInit.networkData: 'version' must be 1 or 2"),
        ({"networkData": "version: [\n"}, "spec.cloudInit.networkData: invalid YAML at line"),
        ({"networkData": "- a\n"}, "spec.cloudInit.networkData: must be a YAML mapping"),
        ({"metaData": "a: [\n"}, "spec.cloudInit.metaData: invalid YAML at line"),
        ({"metaData": "- x\n"}, "spec.cloudInit.metaData: must be a YAML mapping"),
    ],
)
def test_seed_validation(ci: dict, message: str) -> None:
    with pytest.raises(CloudInitError, match=message):
        render_seed_files("ns", "vm", "uid", ci)


@pytest.mark.parametrize(
    ("ci", "field"),
    [
        ({"sshAuthorizedKeys": ["ssh-rsa A\nssh-rsa B"]}, "spec.cloudInit.sshAuthorizedKeys[0]"),
        ({"sshAuthorizedKeys": [KEY1, ""]}, "spec.cloudInit.sshAuthorizedKeys[1]"),
        ({"sshAuthorizedKeys": KEY1}, "spec.cloudInit.sshAuthorizedKeys"),
        ({"userData": ["#cloud-config"]}, "spec.cloudInit.userData"),
    ],
)
def test_key_and_type_checks_are_the_crds(ci: dict, field: str) -> None:
    """The CRD refuses these (API server, gateway, and the operator's merged-spec check), so the seed
    builder does not check them again."""
    errors = validate_spec("VirtualMachine", {"memory": {"size": "64Mi"}, "cloudInit": ci})
    assert field in {e.path for e in errors}, errors


def test_network_config_v1_wrapped_in_network_key() -> None:
    files = render_seed_files("ns", "vm", "uid", {"networkData": "network:\n  version: 1\n  config: []\n"})
    assert "network-config" in files


def digest(namespace: str, name: str, uid: str, ci: dict) -> str:
    return seed_digest(render_seed_files(namespace, name, uid, ci))


def test_digest_changes_with_input() -> None:
    ci = {"userData": "#cloud-config\nhostname: a\n"}
    d1 = digest("ns", "vm", "uid", ci)
    assert d1 == digest("ns", "vm", "uid", dict(ci))
    assert d1 != digest("ns", "vm", "uid2", ci)
    assert d1 != digest("ns", "vm", "uid", {"userData": "#cloud-config\nhostname: b\n"})


# ------------------------------------------------------------------------------------------- ISO
@needs_iso
def test_seed_iso_contents(tmp_path: Path) -> None:
    ci = {
        "userData": "#cloud-config\npackages: [vim]\n",
        "sshAuthorizedKeys": [KEY1, KEY2],
        "networkData": "version: 2\nethernets:\n  eth0: {dhcp4: true}\n",
    }
    iso = build_seed("ns", "vm1", "0b8f-uid", ci, tmp_path / "vm" / "seed.iso")
    assert iso == tmp_path / "vm" / "seed.iso"
    desc = subprocess.run(["isoinfo", "-d", "-i", str(iso)], capture_output=True, text=True, check=True).stdout
    assert "Volume id: cidata" in desc and "Rock Ridge" in desc and "Joliet" in desc
    for mode in ("-R", "-J"):
        ud = yaml.safe_load(iso_file(iso, "/user-data", mode))
        assert ud == {"packages": ["vim"], "ssh_authorized_keys": [KEY1, KEY2]}
        assert yaml.safe_load(iso_file(iso, "/meta-data", mode)) == {
            "instance-id": "0b8f-uid",
            "local-hostname": "vm1",
        }
        assert iso_file(iso, "/network-config", mode) == ci["networkData"]
    assert iso_file(iso, "/USER_DAT.;1", None).startswith("#cloud-config")  # plain ISO9660 name
    assert (tmp_path / "vm" / "seed.iso.sha256").read_text().strip() == digest("ns", "vm1", "0b8f-uid", ci)


@needs_iso
def test_seed_iso_without_network_config(tmp_path: Path) -> None:
    iso = build_seed("ns", "vm1", "uid", None, tmp_path / "seed.iso")
    listing = subprocess.run(["isoinfo", "-R", "-l", "-i", str(iso)], capture_output=True, text=True).stdout
    assert "user-data" in listing and "meta-data" in listing and "network-config" not in listing
    assert iso_file(iso, "/user-data") == "#cloud-config\n"


@needs_iso
def test_seed_iso_is_byte_deterministic_and_skips_rebuild(tmp_path: Path) -> None:
    ci = {"userData": "#!/bin/sh\necho hi\n", "sshAuthorizedKeys": [KEY1]}
    a = build_seed("ns", "vm1", "uid", ci, tmp_path / "a" / "seed.iso")
    time.sleep(1.1)  # genisoimage stamps the clock into the image; we normalise it
    b = build_seed("ns", "vm1", "uid", ci, tmp_path / "b" / "seed.iso")
    assert a.read_bytes() == b.read_bytes()
    ino, mtime = a.stat().st_ino, a.stat().st_mtime_ns
    build_seed("ns", "vm1", "uid", ci, a)
    assert (a.stat().st_ino, a.stat().st_mtime_ns) == (ino, mtime)  # unchanged input: not rebuilt
    build_seed("ns", "vm1", "uid", {**ci, "sshAuthorizedKeys": [KEY2]}, a)
    assert a.stat().st_ino != ino
    assert KEY2 in iso_file(a, "/user-data") and KEY1 not in iso_file(a, "/user-data")
    assert not list(a.parent.glob(".*"))  # no temp files left behind


@needs_iso
def test_invalid_spec_builds_nothing(tmp_path: Path) -> None:
    with pytest.raises(CloudInitError, match="spec.cloudInit.userData"):
        build_seed("ns", "vm", "uid", {"userData": "#cloud-config\na: [\n"}, tmp_path / "seed.iso")
    assert not (tmp_path / "seed.iso").exists()
