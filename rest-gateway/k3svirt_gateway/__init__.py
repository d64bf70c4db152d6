"""k3svirt REST gateway: a thin Flask API over k3svirt's custom resources and K3s workloads."""

from .app import create_app

__all__ = ["create_app"]
