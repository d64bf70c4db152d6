"""Benchmarks only: loads and uses a Kubernetes client library at interpreter start, to measure what it
would cost the operator or the gateway to be built on it (see bench/README.md, "Kubernetes client").

On PYTHONPATH with K3SVIRT_BENCH_CLIENT=kubernetes|lightkube (and K3SVIRT_BENCH_CLIENT_PATH, an extra
site dir for a library the project does not install). The library is imported, a client is built from
$KUBECONFIG and makes the calls the product makes (a Node read, a cluster-wide custom-object list, a
namespaced list); the client is kept alive for the life of the process.
"""

from __future__ import annotations

import os
import sys

_CHOICE = os.environ.get("K3SVIRT_BENCH_CLIENT", "")
_KEEP: list[object] = []


def _kubernetes() -> None:
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=os.environ["KUBECONFIG"])
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    core.list_namespace(limit=1)
    custom.list_cluster_custom_object("k3svirt.io", "v1alpha1", "virtualmachines", limit=1)
    custom.list_namespaced_custom_object("k3svirt.io", "v1alpha1", "default", "vmtemplates", limit=1)
    _KEEP.extend([api, core, custom])


def _lightkube() -> None:
    from lightkube import Client, KubeConfig
    from lightkube.generic_resource import create_global_resource, create_namespaced_resource
    from lightkube.resources.core_v1 import Namespace

    api = Client(KubeConfig.from_file(os.environ["KUBECONFIG"]))
    vm = create_global_resource("k3svirt.io", "v1alpha1", "VirtualMachine", "virtualmachines")
    vmt = create_namespaced_resource("k3svirt.io", "v1alpha1", "VMTemplate", "vmtemplates")
    list(api.list(Namespace, chunk_size=1))
    list(api.list(vm, chunk_size=1))
    list(api.list(vmt, namespace="default", chunk_size=1))
    _KEEP.extend([api, vm, vmt])


if _CHOICE:
    extra = os.environ.get("K3SVIRT_BENCH_CLIENT_PATH")
    if extra:
        sys.path.append(extra)  # after the venv: only what the venv lacks comes from there
    {"kubernetes": _kubernetes, "lightkube": _lightkube}[_CHOICE]()
