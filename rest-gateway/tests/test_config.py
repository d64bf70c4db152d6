"""The gateway's settings: one table of variables, read from the environment once per process."""

from __future__ import annotations

import subprocess
import sys

import pytest
from k3svirt_gateway import config


def test_every_setting_has_its_variable():
    assert set(config.ENV_MAP) == set(config.DEFAULTS)


def test_values_are_typed_like_their_defaults():
    env = {"K3SVIRT_WORKERS": "3", "K3SVIRT_TIMEOUT": "90", "K3SVIRT_KUBE_TIMEOUT": "2.5", "K3SVIRT_BIND": "[::]:9"}
    cfg = config.from_env(env)
    assert (cfg["WORKERS"], cfg["TIMEOUT"], cfg["KUBE_TIMEOUT"], cfg["BIND"]) == (3, 90, 2.5, "[::]:9")
    assert cfg["THREADS"] == 4 and cfg["ACCESS_LOG"] is None and cfg["LOG_LEVEL"] == "INFO"
    with pytest.raises(ValueError):
        config.from_env({"K3SVIRT_THREADS": "many"})


def test_the_environment_is_read_once(monkeypatch):
    config._read_once.cache_clear()
    monkeypatch.setenv("K3SVIRT_THREADS", "7")
    first = config.settings()
    monkeypatch.setenv("K3SVIRT_THREADS", "8")
    assert first["THREADS"] == config.settings()["THREADS"] == 7
    first["THREADS"] = 1  # a caller's copy: the process's settings stay
    assert config.settings()["THREADS"] == 7
    config._read_once.cache_clear()


def test_the_entry_point_takes_its_gunicorn_defaults_from_the_settings(tmp_path):
    """wsgi (the k3svirt-gateway entry point and its app) takes K3SVIRT_* from config.settings(), nowhere else."""
    env = {"K3SVIRT_BIND": "127.0.0.1:18081", "K3SVIRT_WORKERS": "2", "KUBECONFIG": str(tmp_path / "none"), "PATH": ""}
    code = (
        "import sys; from k3svirt_gateway import wsgi; "
        "p = wsgi.SETTINGS; print(p['BIND'], p['WORKERS'], wsgi.app.config['WORKERS'])"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["127.0.0.1:18081", "2", "2"]
