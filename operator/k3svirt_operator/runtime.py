"""Process-wide state of the operator: settings, the libvirt connection, wake-ups for VM loops."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from k3svirt_common import names
from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.client.rest import ApiException

from .accel import Acceleration
from .config import Settings
from .libvirt_conn import LibvirtConnection

log = logging.getLogger(__name__)


def kube_api_client() -> client.ApiClient:
    try:
        kube_config.load_incluster_config()
    except kube_config.ConfigException:
        kube_config.load_kube_config()
    return client.ApiClient()


@dataclass
class Runtime:
    settings: Settings
    libvirt: LibvirtConnection
    accel: Acceleration
    api: client.ApiClient
    loop: asyncio.AbstractEventLoop
    wakers: dict[tuple[str, str], asyncio.Event] = field(default_factory=dict)
    # What each VM's loop last saw of spec generation/annotation, to wake only on real changes.
    seen: dict[tuple[str, str], tuple[Any, Any]] = field(default_factory=dict)
    # The status this operator last wrote, per VM uid: the watch may lag behind our own writes.
    written: dict[str, dict[str, Any]] = field(default_factory=dict)

    def waker(self, key: tuple[str, str]) -> asyncio.Event:
        return self.wakers.setdefault(key, asyncio.Event())

    def poke(self, key: tuple[str, str]) -> None:
        ev = self.wakers.get(key)
        if ev is not None:
            ev.set()

    def poke_threadsafe(self, key: tuple[str, str]) -> None:
        self.loop.call_soon_threadsafe(self.poke, key)

    def poke_all_threadsafe(self) -> None:
        for key in list(self.wakers):
            self.poke_threadsafe(key)

    # ------------------------------------------------------------------ Kubernetes access
    def get_object(self, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        api = client.CustomObjectsApi(self.api)
        try:
            if namespace is None:
                return api.get_cluster_custom_object(names.GROUP, names.VERSION, plural, name)
            return api.get_namespaced_custom_object(names.GROUP, names.VERSION, namespace, plural, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list_objects(self, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        api = client.CustomObjectsApi(self.api)
        if namespace is None:
            return api.list_cluster_custom_object(names.GROUP, names.VERSION, plural)["items"]
        return api.list_namespaced_custom_object(names.GROUP, names.VERSION, namespace, plural)["items"]

    def ensure_cluster_object(self, plural: str, kind: str, name: str) -> None:
        """Creates an empty cluster-scoped object of ours if it does not exist yet."""
        api = client.CustomObjectsApi(self.api)
        body = {"apiVersion": names.API_VERSION, "kind": kind, "metadata": {"name": name}}
        try:
            api.create_cluster_custom_object(names.GROUP, names.VERSION, plural, body)
        except ApiException as exc:
            if exc.status != 409:
                raise

    def patch_status(self, plural: str, namespace: str | None, name: str, status: Mapping[str, Any]) -> None:
        api = client.CustomObjectsApi(self.api)
        body = {"status": dict(status)}
        try:
            if namespace is None:
                api.patch_cluster_custom_object_status(names.GROUP, names.VERSION, plural, name, body)
            else:
                api.patch_namespaced_custom_object_status(names.GROUP, names.VERSION, namespace, plural, name, body)
        except ApiException as exc:
            if exc.status != 404:  # deleted meanwhile: nothing to report on
                raise
