"""Where the API server is and who we are to it: a kubeconfig file or the pod's service account.

Supported credentials: client certificate + key (files or inline data), bearer token (inline or a
token file, re-read when it changes: service-account tokens rotate), basic auth. exec and
auth-provider plugins are refused with a clear error (nothing here runs programs).
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import ApiError

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_KUBECONFIG = "~/.kube/config"


class ConfigError(ApiError):
    """No usable configuration: there is nobody to ask (status 0, reason NotConfigured)."""

    def __init__(self, message: str) -> None:
        super().__init__(0, "NotConfigured", message)


@dataclass(frozen=True)
class KubeConfig:
    server: str
    ca_file: str | None = None
    ca_data: bytes | None = None  # PEM
    cert_file: str | None = None
    cert_data: bytes | None = None  # PEM
    key_file: str | None = None
    key_data: bytes | None = None  # PEM
    token: str | None = None
    token_file: str | None = None
    username: str | None = None
    password: str | None = None
    insecure: bool = False
    namespace: str = "default"

    def __repr__(self) -> str:  # never print secrets
        return f"KubeConfig(server={self.server!r}, namespace={self.namespace!r})"


def _pem(value: Any, what: str) -> bytes | None:
    if not value:
        return None
    try:
        return base64.b64decode(value, validate=True)
    except ValueError as exc:
        raise ConfigError(f"{what} is not base64") from exc


def _file(value: Any, base: Path) -> str | None:
    if not value:
        return None
    path = Path(os.path.expanduser(str(value)))
    return str(path if path.is_absolute() else base / path)


def _named(items: Any, name: str, what: str) -> dict[str, Any]:
    for item in items or []:
        if isinstance(item, dict) and item.get("name") == name:
            return item.get(what) or {}
    raise ConfigError(f"kubeconfig has no {what} named {name!r}")


def from_kubeconfig(path: str, context: str | None = None) -> KubeConfig:
    file = Path(os.path.expanduser(path))
    try:
        doc = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read kubeconfig {file}: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"kubeconfig {file} is not a mapping")
    ctx_name = context or doc.get("current-context")
    if not ctx_name:
        raise ConfigError(f"kubeconfig {file} sets no current-context")
    ctx = _named(doc.get("contexts"), ctx_name, "context")
    cluster = _named(doc.get("clusters"), ctx.get("cluster", ""), "cluster")
    user = _named(doc.get("users"), ctx.get("user", ""), "user") if ctx.get("user") else {}
    for unsupported in ("exec", "auth-provider"):
        if unsupported in user:
            raise ConfigError(f"kubeconfig {file}: {unsupported} credentials are not supported")
    if cluster.get("tls-server-name"):
        raise ConfigError(f"kubeconfig {file}: tls-server-name is not supported")
    if not cluster.get("server"):
        raise ConfigError(f"kubeconfig {file}: cluster of context {ctx_name!r} has no server")
    base = file.parent
    return KubeConfig(
        server=str(cluster["server"]).rstrip("/"),
        ca_file=_file(cluster.get("certificate-authority"), base),
        ca_data=_pem(cluster.get("certificate-authority-data"), "certificate-authority-data"),
        cert_file=_file(user.get("client-certificate"), base),
        cert_data=_pem(user.get("client-certificate-data"), "client-certificate-data"),
        key_file=_file(user.get("client-key"), base),
        key_data=_pem(user.get("client-key-data"), "client-key-data"),
        token=user.get("token") or None,
        token_file=_file(user.get("tokenFile"), base),
        username=user.get("username") or None,
        password=user.get("password") or None,
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        namespace=ctx.get("namespace") or "default",
    )


def in_cluster(root: Path = SERVICE_ACCOUNT) -> KubeConfig:
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host or not (root / "token").is_file():
        raise ConfigError("not in a pod: KUBERNETES_SERVICE_HOST or the service-account token is missing")
    if ":" in host:
        host = f"[{host}]"
    ns_file = root / "namespace"
    return KubeConfig(
        server=f"https://{host}:{port}",
        ca_file=str(root / "ca.crt"),
        token_file=str(root / "token"),
        namespace=ns_file.read_text().strip() if ns_file.is_file() else "default",
    )


def load_config(kubeconfig: str | None = None, context: str | None = None) -> KubeConfig:
    """The first of: the kubeconfig file given, $KUBECONFIG (its first path), the pod's service
    account, ~/.kube/config."""
    path = (kubeconfig or os.environ.get("KUBECONFIG") or "").split(os.pathsep)[0]
    if path:
        return from_kubeconfig(path, context)
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return in_cluster()
    if Path(os.path.expanduser(DEFAULT_KUBECONFIG)).is_file():
        return from_kubeconfig(DEFAULT_KUBECONFIG, context)
    raise ConfigError("no kubeconfig (KUBECONFIG, ~/.kube/config) and not in a pod")
