"""HTTPS: the production gateway serves TLS from K3SVIRT_GATEWAY_TLS_CERT / K3SVIRT_GATEWAY_TLS_KEY."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.gateway_proc import gateway


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "tls.crt", d / "tls.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=k3svirt-gateway"]
        + ["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_gateway_serves_https(gw_kubeconfig, keys, self_signed, tmp_path):
    cert, key = self_signed
    env = {
        "KUBECONFIG": gw_kubeconfig,
        "K3SVIRT_API_KEYS_FILE": keys["file"],
        "K3SVIRT_GATEWAY_TLS_CERT": str(cert),
        "K3SVIRT_GATEWAY_TLS_KEY": str(key),
    }
    with gateway(env, tmp_path / "gw.log", scheme="https", verify=str(cert)) as (url, _proc):
        assert url.startswith("https://")
        r = requests.get(url + "/api/v1/namespaces", headers={"X-API-Key": keys["admin"]}, verify=str(cert), timeout=10)
        assert r.status_code == 200 and "default" in [n["name"] for n in r.json()["items"]]
        # The certificate served is the one configured.
        host, port = url.removeprefix("https://").split(":")
        served = ssl.get_server_certificate((host, int(port)))
        assert ssl.PEM_cert_to_DER_cert(served) == ssl.PEM_cert_to_DER_cert(cert.read_text())
        # Without trusting it, a client refuses; plain HTTP on the TLS port gets no API answer.
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(url + "/healthz", timeout=5)
        try:
            plain = requests.get(url.replace("https://", "http://") + "/api/v1/namespaces", timeout=5)
            assert plain.status_code != 200
        except requests.ConnectionError:
            pass


@pytest.mark.parametrize("which", ["cert-only", "key-only", "bad-pair"])
def test_tls_misconfiguration_refuses_to_start(self_signed, tmp_path, which):
    """Never a silent fall-back to plain HTTP."""
    cert, key = self_signed
    env = {**os.environ}
    env.pop("K3SVIRT_GATEWAY_TLS_CERT", None)
    env.pop("K3SVIRT_GATEWAY_TLS_KEY", None)
    if which != "key-only":
        env["K3SVIRT_GATEWAY_TLS_CERT"] = str(cert)
    if which != "cert-only":
        env["K3SVIRT_GATEWAY_TLS_KEY"] = str(key) if which == "key-only" else str(cert)  # bad: a cert as key
    proc = subprocess.run(
        [sys.executable, "-m", "k3svirt_gateway.wsgi", "--bind", "127.0.0.1:0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "K3SVIRT_GATEWAY_TLS" in proc.stderr or "do not load" in proc.stderr, proc.stderr
